"""Every flag more than one subcommand takes, spelled once: `moebench <cmd> --help` shows the same spelling
in every subcommand that has it.

    -n/--iters  -w/--warmup  -d/--dtype  --seed  --json  --save  --tag      (every benchmark)
    --backend  --ranks-per-node  --tp                                        (multi-rank benchmarks)
    -b/--minbytes  -e/--maxbytes  -f/--stepfactor  --hidden  -c/--check     (all-to-all sweeps)
    --model  --batch  --skew  --capacity-factor  --kernels  --impl  --algos  (the MoE layer and its kernels)

Values are checked here too (one-line ValueErrors), so each subcommand validates the same way.
"""

from __future__ import annotations

import argparse
import math
import os

import torch

from moebench.bench.layer.skews import Skew, grammar, parse_skew

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BACKEND_NAMES = ("mpi", "torch")


# ---------------------------------------------------------------------------------------------- launcher


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


# ---------------------------------------------------------------------------------------------- value types


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


def str_list(text: str) -> list[str]:
    """'a,b' -> ['a', 'b']."""
    return [v.strip() for v in text.split(",") if v.strip()]


def int_list(text: str) -> list[int]:
    """'1,16,128' -> [1, 16, 128]."""
    try:
        return [int(v) for v in str_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None


def size_list(text: str) -> list[int]:
    """'4K,1M' -> [4096, 1048576]."""
    return [size_arg(v) for v in str_list(text)]


def dtype_arg(text: str) -> str:
    """float32 | bfloat16 | float16 (fp32, bf16, fp16 accepted) | auto -> the canonical name."""
    name = DTYPE_ALIASES.get(text, text)
    if name not in (*DTYPES, "auto"):
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; choose from float32, bfloat16, float16 (or auto)")
    return name


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype of a canonical name; auto = bfloat16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def skew_list(text: str, allow_gate: bool = False) -> list[Skew]:
    """Comma list of skews (the one grammar of layer.workloads; `gate` where a subcommand has a router)."""
    try:
        return [parse_skew(s, allow_gate) for s in str_list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("bad --skew ")) from None


def skew_or_gate_list(text: str) -> list[Skew]:
    return skew_list(text, allow_gate=True)


def capacity_factor_list(text: str) -> list[float | None]:
    """'none,1.0,2.0' -> [None, 1.0, 2.0]; each > 0 and finite, or none (no drops)."""
    out = []
    for item in str_list(text):
        try:
            value = None if item.lower() == "none" else float(item)
        except ValueError:
            value = -1.0
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{item!r}: must be > 0 or none")
        out.append(value)
    return out


# ---------------------------------------------------------------------------------------------- flag groups


ROUNDS = 8  # interleaved rounds by default: timing.ties says why 8 (rows of equal speed called faster 1 in 128)


def add_iterations(p, iters: int, warmup: int, budget: float | None = 1.0) -> None:
    """Timing flags: timed iterations per row, warmup, interleaved rounds and a time budget per row."""
    p.add_argument("-n", "--iters", type=int, default=iters, help="timed iterations per row (at most; see --budget)")
    p.add_argument("-w", "--warmup", type=int, default=warmup, help="warmup iterations (not timed)")
    p.add_argument("--rounds", type=int, default=ROUNDS,
                   help="spread each row's iterations round-robin over these rounds")  # fmt: skip
    p.add_argument("--budget", type=float, default=budget,
                   help="seconds of timed iterations per row (fewer than -n if slow; 0: no limit)")  # fmt: skip


def check_iterations(args, min_iters: int = 1) -> None:
    if args.iters < min_iters or args.warmup < 0:
        raise ValueError(f"need -n >= {min_iters} and -w >= 0 (got -n {args.iters} -w {args.warmup})")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1 (got {args.rounds})")
    if args.budget is not None and args.budget < 0:
        raise ValueError(f"--budget must be >= 0 seconds (got {args.budget})")


def budget_seconds(args) -> float | None:
    """--budget as run_interleaved takes it: None when unlimited."""
    return args.budget or None


def add_dtype(p, default: str) -> None:
    p.add_argument(
        "-d", "--dtype", type=dtype_arg, default=default, help="float32, bfloat16 or float16 (fp32/bf16/fp16); auto"
    )


def add_seed(p) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of every random input")


def add_output(p) -> None:
    p.add_argument("--json", default=None, metavar="PATH", help="write {meta, rows} here")
    p.add_argument("--save", action="store_true", help="store JSON/CSV/Markdown under results/<machine>/")
    p.add_argument("--tag", default="", help="label in saved file names, e.g. p2")


def add_launch(p) -> None:
    """--backend, --ranks-per-node, --tp: the flags of every multi-rank benchmark."""
    p.add_argument("--backend", default="mpi", help="mpi (mpi4py) or torch (torch.distributed)")
    p.add_argument("--ranks-per-node", type=int, default=None, help="G: emulate G ranks per node")
    p.add_argument("--tp", type=int, default=1, help="L: TP group size (tokens duplicated in TP groups)")


def check_launch(args) -> None:
    """ValueError unless the backend is known and G and L divide the launcher's world size."""
    P = launch_size()
    if args.backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {args.backend!r}; choose from {', '.join(BACKEND_NAMES)}")
    if args.ranks_per_node is not None and (args.ranks_per_node < 1 or P % args.ranks_per_node):
        raise ValueError(f"--ranks-per-node {args.ranks_per_node} must divide the number of ranks P={P}")
    if args.tp < 1 or P % args.tp:
        raise ValueError(f"--tp {args.tp} must divide the number of ranks P={P}")


def add_sizes(p, lo: str, hi: str, factor: float) -> None:
    p.add_argument("-b", "--minbytes", type=size_arg, default=size_arg(lo), help="smallest S (bytes per rank)")
    p.add_argument("-e", "--maxbytes", type=size_arg, default=size_arg(hi), help="largest S")
    p.add_argument("-f", "--stepfactor", type=float, default=factor, help="size multiplication factor")


def check_sizes(args, smallest: int = 1) -> None:
    if args.minbytes < smallest or args.maxbytes < args.minbytes:
        raise ValueError(f"need {smallest} <= -b <= -e (got -b {args.minbytes} -e {args.maxbytes})")
    if args.stepfactor <= 1:
        raise ValueError(f"-f must be > 1 (got {args.stepfactor})")


def add_hidden(p) -> None:
    p.add_argument("--hidden", type=int, default=1024, help="elements per row (a token), at most")


def add_check(p) -> None:
    p.add_argument("-c", "--check", type=int, choices=(0, 1), default=1, help="check results (1) or not (0)")


def add_model(p) -> None:
    p.add_argument("--model", default="mixtral-8x7b-tiny", help="a preset from DESIGN.md §4 or its -tiny variant")


def add_batch(p, default: str, alias: str | None = None) -> None:
    flags = ("--batch", alias) if alias else ("--batch",)
    p.add_argument(*flags, dest="batch", type=int_list, default=int_list(default), help="tokens per rank (list)")


def add_batch_spread(p) -> None:
    p.add_argument("--batch-spread", type=float, default=0.0,
                   help="each rank's batch drawn uniformly in T * (1 +- spread) (0: every rank T)")  # fmt: skip


def check_batch_spread(args) -> None:
    if not 0 <= args.batch_spread < 1:
        raise ValueError(f"--batch-spread must be in [0, 1), got {args.batch_spread}")


def check_batch(args) -> None:
    if not args.batch or min(args.batch) < 1:
        raise ValueError(f"--batch sizes must be >= 1 token per rank, got {args.batch}")


def add_skew(p, default: str, gate: bool) -> None:
    """--skew: a list in the one grammar; `gate` (the real router) only where the subcommand has one."""
    kind = skew_or_gate_list if gate else skew_list
    real = "gate (the real router), " if gate else ""
    p.add_argument("--skew", type=kind, default=kind(default), help=f"list: {real}{grammar()}")
    p.add_argument("--trace", action="append", default=[], metavar="FILE",
                   help="replay a routing trace (repeatable): adds trace:FILE to --skew")  # fmt: skip


def check_skews(args) -> None:
    """--skew needs a value; each --trace FILE joins the list as trace:FILE (a bad file: one line)."""
    args.skew = [*args.skew, *(parse_skew(f"trace:{file}") for file in getattr(args, "trace", []))]
    args.trace = []
    if not args.skew:
        raise ValueError("--skew needs at least one value")


def add_capacity_factor(p, default: str) -> None:
    p.add_argument(
        "--capacity-factor", type=capacity_factor_list, default=capacity_factor_list(default),
        help="list; capacity = ceil(cf * T * k / E) rows per expert; none = no drops",
    )  # fmt: skip


def add_impl(p) -> None:
    p.add_argument("--impl", default="torch", choices=("torch", "triton"), help="expert kernel implementation")


def add_names(p, flag: str, registry, default, what: str) -> None:
    """A comma list of names from a registry (--algos, --kernels, --pairs)."""
    p.add_argument(flag, type=str_list, default=list(default), help=f"comma list of {what}: {', '.join(registry)}")


def add_routers(p, default: str | None) -> None:
    """--routers: routers at inference (kernels.routers.ROUTERS, `name[:PARAM]`)."""
    from moebench.kernels.routers import grammar as router_grammar

    p.add_argument("--routers", "--router", type=str_list, default=None if default is None else str_list(default),
                   help=f"comma list: {router_grammar()}" + (f" (default {default})" if default else ""))  # fmt: skip


def add_placements(p, default) -> None:
    """--placements and --redundant: where experts live (bench.layer.placements.PLACEMENTS) and R replicas."""
    from moebench.bench.layer.placements import PLACEMENTS

    p.add_argument("--placements", "--placement", type=str_list, default=list(default),
                   help=f"comma list of expert placements: {', '.join(PLACEMENTS)}")  # fmt: skip
    p.add_argument("--redundant", type=int, default=None,
                   help="R: redundant experts of the replicating placements (eplb, hierarchical)")  # fmt: skip


def add_pairs(p) -> None:
    """--pairs: the dispatch/combine round trips of an all-to-all sweep (DISPATCH_COMBINE; none: no round trips)."""
    from moebench.collectives import DISPATCH_COMBINE

    add_names(p, "--pairs", DISPATCH_COMBINE, DISPATCH_COMBINE, "dispatch/combine pairs (none: no round trips)")


def selected_pairs(args) -> list[str]:
    from moebench.collectives import DISPATCH_COMBINE

    if args.pairs == ["none"]:
        return []
    check_names(args.pairs, DISPATCH_COMBINE, "dispatch/combine pair")
    return args.pairs


def check_names(given: list[str], valid, what: str) -> None:
    unknown = [g for g in given if g not in valid]
    if unknown or not given:
        raise ValueError(f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(valid)}")


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62
