"""Command line: subcommands, and the one error policy every benchmark follows.

Bad input is a `ValueError`: rank 0 prints one line (`moebench: error: ...`) and every rank
exits with status 2. Before any communicator exists that is a plain exit on every rank (all ranks
validate the same arguments); once ranks communicate, the job is aborted so no rank hangs. Any
other exception on any rank prints one line naming the rank and aborts the whole job (status 1).
"""

from __future__ import annotations

import argparse
import sys
import time

from moebench.bench.commands import SUBCOMMANDS, command
from moebench.bench.options import launch_rank

_active_comm = None


def open_comm(backend: str, ranks_per_node: int | None, tp: int):
    """init_comm, remembered so a failure anywhere can abort the whole job."""
    global _active_comm
    from moebench.collectives import init_comm

    _active_comm = init_comm(backend, ranks_per_node=ranks_per_node, tp=tp)
    return _active_comm


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moebench", description="moebench: MoE communication and kernel benchmarks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in SUBCOMMANDS:
        module = command(name)
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0]))
    return parser


def _fail(message: str, status: int, rank: int, print_here: bool) -> int:
    multi_rank = _active_comm is not None and _active_comm.world_size > 1
    if multi_rank and not print_here:
        # Rank 0 usually hit the same error: give it time to print and tear the job down. If this
        # rank is still alive afterwards, the error was its own: say so.
        time.sleep(2.0)
        message, print_here = f"rank {rank}: {message}", True
    if print_here:
        print(f"moebench: error: {message}", file=sys.stderr, flush=True)
    if multi_rank:
        time.sleep(0.5)  # the launcher forwards output asynchronously: let the line out before the teardown
        _active_comm.abort(status)
    return status


def main(argv: list[str] | None = None) -> int:
    """moebench ... / python -m moebench ...: parse, run the subcommand, apply the error policy."""

    def body() -> int:
        args = build_parser().parse_args(argv)
        return command(args.command).run(args)

    return guarded(body)


def guarded(body) -> int:
    """Run `body() -> status` under the error policy (see the module docstring); return the exit status."""
    rank = launch_rank()
    try:
        status = body()
    except ValueError as exc:
        return _fail(str(exc), 2, rank, print_here=rank == 0)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, rank, print_here=rank == 0)
    except Exception as exc:  # a rank failed mid-run: say which, then end every rank
        return _fail(f"rank {rank}: {type(exc).__name__}: {exc}", 1, rank, print_here=True)
    if _active_comm is not None:
        _active_comm.close()
    return status
