"""Command line: subcommands, and the one error policy every benchmark follows.

Bad input is a `ValueError`: rank 0 prints one line (`moebench: error: ...`) and every rank
exits with status 2. Before any communicator exists that is a plain exit on every rank (all ranks
validate the same arguments); once ranks communicate, the job is aborted so no rank hangs. Any
other exception on any rank prints one line naming the rank and aborts the whole job (status 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

SUBCOMMANDS = {
    "collectives": "moebench.bench.collectives_bench",
    "cluster": "moebench.bench.cluster",
    "calibrate": "moebench.bench.calibrate_bench",
    "project": "moebench.bench.project_bench",
    "kernels": "moebench.bench.kernels_bench",
    "moe": "moebench.bench.moe_bench",
    "report": "moebench.bench.report_cli",
}

_active_comm = None


def launch_rank() -> int:
    """This process's rank as the launcher (mpiexec, torchrun) set it; 0 when run alone."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def launch_size() -> int:
    """The world size the launcher set; 1 when run alone."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "WORLD_SIZE"):
        if var in os.environ:
            return int(os.environ[var])
    return 1


def add_launch_arguments(p) -> None:
    """--backend, --ranks-per-node, --tp: the flags of every multi-rank benchmark."""
    p.add_argument("--backend", default="mpi", help="mpi (mpi4py) or torch (torch.distributed)")
    p.add_argument("--ranks-per-node", type=int, default=None, help="G: emulate G ranks per node")
    p.add_argument("--tp", type=int, default=1, help="L: TP group size (tokens duplicated in TP groups)")


def check_launch_arguments(args) -> None:
    """ValueError unless the backend is known and G and L divide the launcher's world size."""
    P = launch_size()
    if args.backend not in ("mpi", "torch"):
        raise ValueError(f"unknown backend {args.backend!r}; choose from mpi, torch")
    if args.ranks_per_node is not None and (args.ranks_per_node < 1 or P % args.ranks_per_node):
        raise ValueError(f"--ranks-per-node {args.ranks_per_node} must divide the number of ranks P={P}")
    if args.tp < 1 or P % args.tp:
        raise ValueError(f"--tp {args.tp} must divide the number of ranks P={P}")


def open_comm(backend: str, ranks_per_node: int | None, tp: int):
    """init_comm, remembered so a failure anywhere can abort the whole job."""
    global _active_comm
    from moebench.collectives import init_comm

    _active_comm = init_comm(backend, ranks_per_node=ranks_per_node, tp=tp)
    return _active_comm


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(f"{self.prog}: {message}")


def size_arg(text: str) -> int:
    """'64K', '4M', '1G', '1024' -> bytes (powers of 1024, as nccl-tests)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B")
    try:
        value = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1024, 64K, 4M)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"size must be >= 0: {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """'1,16,128' -> [1, 16, 128]."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None


def str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moebench", description="moebench: MoE communication and kernel benchmarks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
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
    """python -m moebench ...: parse, run the subcommand, apply the error policy."""

    def body() -> int:
        args = build_parser().parse_args(argv)
        return importlib.import_module(SUBCOMMANDS[args.command]).run(args)

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
