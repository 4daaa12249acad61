# T = tokens per rank, E = experts, H = hidden, k = active, P = ranks, L = TP degree
"""MoE layer benchmark: every algorithm x kernel x batch, phase by phase, each checked against a reference.

Run under `mpiexec -n P python -m moebench moe ...` or `torchrun --nproc_per_node P -m moebench moe --backend torch`.
Per configuration: median time per phase (gate, permute, dispatch, experts, combine, unpermute; each
the slowest rank's), total median and p99, tokens/s, load imbalance (max/mean rows per rank and per
expert), padding waste, dropped %, peak memory, and the relative error against a single-process
float64 reference of the whole layer. Reference rows: `naive` (the per-expert loop with the backend's
native all-to-all) and `dense-equivalent` (a dense SwiGLU FFN with one token's active parameters).
"""

from __future__ import annotations

import itertools
import resource
import sys
from dataclasses import dataclass

import numpy as np
import torch
from moebench.bench import moe, report, timing
from moebench.bench.cli import add_launch_arguments, check_launch_arguments, int_list, launch_size, open_comm, str_list
from moebench.bench.workloads import get_preset, make_tokens, parse_skew
from moebench.kernels import EXPERT_KERNELS
from rich.progress import Progress

ALGOS = ("flat", "hierarchical", "native", "coordinated")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
REFERENCE_ROWS = ("naive", "dense-equivalent")


def add_arguments(p) -> None:
    p.add_argument("--model", default="mixtral-8x7b-tiny", help="a preset from DESIGN.md §4 or its -tiny variant")
    p.add_argument("--batch", type=int_list, default=[1, 8, 128, 1024, 4096], help="tokens per rank (list)")
    p.add_argument("--algos", type=str_list, default=list(ALGOS), help="comma list of " + ",".join(ALGOS))
    p.add_argument("--kernels", type=str_list, default=list(EXPERT_KERNELS), help="comma list of expert kernels")
    p.add_argument("--impl", default="torch", help="torch or triton")
    p.add_argument(
        "--skew", type=str_list, default=["gate"], help="gate (the real router), uniform, zipf:S, hot:F, shift"
    )
    p.add_argument("--capacity-factor", type=str_list, default=["none"], help="list; none = no drops")
    add_launch_arguments(p)
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--coordinated-inner", default="flat", help="exchange under coordinated")
    p.add_argument("-n", "--iters", type=int, default=10)
    p.add_argument("-w", "--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write {meta, rows} here")
    p.add_argument("--save", action="store_true", help="store JSON/CSV/Markdown under results/<machine>/")
    p.add_argument("--tag", default="", help="label in saved file names, e.g. p2")


@dataclass(frozen=True)
class Config:
    preset: object
    batches: list[int]
    algos: list[str]
    kernels: list[str]
    skews: list[str]
    capacity_factors: list[float | None]
    dtype: torch.dtype


def _capacity_factor(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"--capacity-factor must be > 0 or none, got {text!r}")
    return value


def validate(args) -> Config:
    """Every check that needs no communication, identical on every rank: ValueError on bad input."""
    P = launch_size()
    preset = get_preset(args.model)
    if preset.E % P:
        raise ValueError(f"{preset.name} has E={preset.E} experts, not divisible by P={P} ranks")
    if not args.batch or min(args.batch) < 1:
        raise ValueError(f"--batch sizes must be >= 1 token per rank, got {args.batch}")
    check_launch_arguments(args)
    for name, given, valid in (("algorithm", args.algos, ALGOS), ("kernel", args.kernels, EXPERT_KERNELS)):
        unknown = [g for g in given if g not in valid]
        if unknown or not given:
            raise ValueError(f"unknown {name} {', '.join(unknown) or '(none)'}; choose from {', '.join(valid)}")
    if args.coordinated_inner not in ALGOS[:3]:
        raise ValueError(f"--coordinated-inner must be one of {', '.join(ALGOS[:3])}")
    if args.impl not in ("torch", "triton"):
        raise ValueError(f"unknown impl {args.impl!r}; choose from torch, triton")
    if args.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {args.dtype!r}; choose from {', '.join(DTYPES)}")
    if args.iters < 1 or args.warmup < 0:
        raise ValueError(f"need -n >= 1 and -w >= 0 (got -n {args.iters} -w {args.warmup})")
    for skew in args.skew:
        if skew != "gate":
            parse_skew(skew)
    return Config(
        preset,
        args.batch,
        args.algos,
        args.kernels,
        args.skew,
        [_capacity_factor(c) for c in args.capacity_factor],
        DTYPES[args.dtype],
    )


# ---------------------------------------------------------------------------------------------- one config


@dataclass(frozen=True)
class Workload:
    """This rank's tokens for one (skew, capacity factor, batch) and the reference output."""

    skew: str
    capacity_factor: float | None
    T: int
    x_TH: torch.Tensor
    forced: list  # one forced routing per iteration (shift moves between batches), or [None]
    y_ref_TH: torch.Tensor


def make_workload(comm, cfg: Config, args, skew, cf, T, iterations: int) -> Workload:
    """Tokens shared inside each TP group (as after a TP attention block), seeded by TP group."""
    group_seed = args.seed * 1000 + comm.rank // comm.tp.size
    x_TH = make_tokens(T, cfg.preset.H, cfg.dtype, "cpu", seed=group_seed)
    batches = range(iterations) if skew.startswith("shift") else [0]
    forced = [moe.forced_routing(skew, T, cfg.preset, group_seed, b) for b in batches]
    y_ref_TH = moe.reference_forward(x_TH, cfg.preset, cf, args.seed, forced[0])
    return Workload(skew, cf, T, x_TH.to(comm.device), forced, y_ref_TH)


def rel_error(y_TH: torch.Tensor, ref_TH: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in float64 (0 when both are zero)."""
    diff = torch.linalg.vector_norm(y_TH.double().cpu() - ref_TH)
    norm = torch.linalg.vector_norm(ref_TH)
    return float(diff / norm) if norm > 0 else float(diff)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_fields(samples: np.ndarray) -> dict:
    fields = {f"{ph}_us": float(np.median(samples[:, i])) for i, ph in enumerate(moe.PHASES)}
    fields.update({f"{ph}_p99_us": float(np.percentile(samples[:, i], 99)) for i, ph in enumerate(moe.PHASES)})
    total = timing.stats(samples[:, -1])
    fields.update(total_us=total["time_us"], p99_us=total["p99_us"], p20_us=total["p20_us"], p80_us=total["p80_us"])
    return fields


def measure_layer(comm, cfg: Config, args, work: Workload, weights, algo: str, kernel: str) -> dict:
    """Check once against the reference, then time the layer phase by phase."""
    layer = moe.LayerConfig(cfg.preset, algo, kernel, args.impl, work.capacity_factor, args.coordinated_inner)
    info = moe.ForwardInfo()
    y_TH = moe.forward(comm, work.x_TH, weights, layer, lambda: None, work.forced[0], info)
    error = rel_error(y_TH, work.y_ref_TH)
    forced = itertools.cycle(work.forced)
    samples = timing.measure_phases(
        lambda mark: moe.forward(comm, work.x_TH, weights, layer, mark, next(forced)),
        num_phases=len(moe.PHASES),
        iters=args.iters,
        warmup=args.warmup,
        comm=comm,
        device=comm.device,
    )
    per_rank = comm.allgather_object(
        {
            "recv_rows": info.recv_rows,
            "expert_counts": info.routing.kept_counts_E.cpu().tolist(),
            "dropped": int(info.routing.num_dropped),
            "useful": info.stats.useful_flops,
            "executed": info.stats.executed_flops,
            "kernel_peak_mb": info.stats.peak_extra_bytes / 2**20,
            "rss_mb": peak_rss_mb(),
            "error": error,
        }
    )
    return {
        "algo": "naive" if kernel == "loop" else algo,
        "kernel": kernel,
        **phase_fields(samples),
        **load_fields(cfg, args, work, per_rank),
    }


def load_fields(cfg: Config, args, work: Workload, per_rank: list[dict]) -> dict:
    P, L = len(per_rank), args.tp
    rows = np.array([r["recv_rows"] for r in per_rank], dtype=np.float64)
    # Tokens are duplicated inside TP groups: count each group's routing once.
    experts = np.sum([r["expert_counts"] for r in per_rank[::L]], axis=0).astype(np.float64)
    useful, executed = sum(r["useful"] for r in per_rank), sum(r["executed"] for r in per_rank)
    error = max(r["error"] for r in per_rank)
    return {
        "imbalance_rank": float(rows.max() / rows.mean()) if rows.mean() else 1.0,
        "imbalance_expert": float(experts.max() / experts.mean()) if experts.mean() else 1.0,
        "padding_waste": executed / useful if useful else 1.0,
        "dropped_pct": 100.0 * sum(r["dropped"] for r in per_rank[::L]) / (P // L * work.T * cfg.preset.k),
        "kernel_peak_mb": max(r["kernel_peak_mb"] for r in per_rank),
        "peak_rss_mb": max(r["rss_mb"] for r in per_rank),
        "rel_error": error,
        "correct": error <= TOLERANCE[cfg.dtype],
    }


def measure_dense(comm, cfg: Config, args, work: Workload) -> dict:
    """dense-equivalent: the same tokens through one dense SwiGLU FFN with the active parameter count."""
    w = moe.dense_equivalent_weights(cfg.preset, cfg.dtype, comm.device, args.seed)

    def fn(mark):
        for phase in moe.PHASES:
            if phase == "experts":
                moe.dense_forward(work.x_TH, *w)
            mark()

    samples = timing.measure_phases(
        fn, num_phases=len(moe.PHASES), iters=args.iters, warmup=args.warmup, comm=comm, device=comm.device
    )
    return {
        "algo": "dense-equivalent",
        "kernel": "dense",
        **phase_fields(samples),
        "imbalance_rank": 1.0,
        "imbalance_expert": 1.0,
        "padding_waste": 1.0,
        "dropped_pct": 0.0,
        "kernel_peak_mb": 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "rel_error": None,
        "correct": None,
    }


# ---------------------------------------------------------------------------------------------- output

COLUMNS = [
    "batch",
    "algo",
    "kernel",
    "skew",
    "cf",
    *moe.PHASES,
    "total",
    "p99",
    "tok/s",
    "imb rank",
    "imb expert",
    "pad waste",
    "drop %",
    "kernel MB",
    "rss MB",
    "rel err",
    "ok",
]


def table_rows(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        ok = "" if r["correct"] is None else ("yes" if r["correct"] else "NO")
        err = "" if r["rel_error"] is None else f"{r['rel_error']:.1e}"
        out.append(
            [
                r["batch"],
                r["algo"],
                r["kernel"],
                r["skew"],
                r["capacity_factor"] or "none",
                *(r[f"{p}_us"] for p in moe.PHASES),
                r["total_us"],
                r["p99_us"],
                r["tokens_per_s"],
                r["imbalance_rank"],
                r["imbalance_expert"],
                r["padding_waste"],
                r["dropped_pct"],
                r["kernel_peak_mb"],
                r["peak_rss_mb"],
                err,
                ok,
            ]
        )
    return out


def summary(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Per (skew, cf, batch): the fastest correct configuration and its speedup over naive."""
    columns = ["batch", "skew", "cf", "best config", "total", "naive", "speedup", "dense-equiv", "dominant phase"]
    out = []
    for key, group in itertools.groupby(rows, key=lambda r: (r["skew"], r["capacity_factor"], r["batch"])):
        group = list(group)
        candidates = [r for r in group if r["algo"] not in REFERENCE_ROWS and r["correct"]]
        naive = next((r for r in group if r["algo"] == "naive"), None)
        dense = next((r for r in group if r["algo"] == "dense-equivalent"), None)
        if not candidates:
            continue
        best = min(candidates, key=lambda r: r["total_us"])
        dominant = max(moe.PHASES, key=lambda p: best[f"{p}_us"])
        share = best[f"{dominant}_us"] / sum(best[f"{p}_us"] for p in moe.PHASES)
        out.append(
            [
                key[2],
                key[0],
                key[1] or "none",
                f"{best['algo']} + {best['kernel']}",
                best["total_us"],
                naive["total_us"] if naive else "",
                f"{naive['total_us'] / best['total_us']:.2f}x" if naive else "",
                dense["total_us"] if dense else "",
                f"{dominant} ({share:.0%})",
            ]
        )
    return columns, out


CAPTION = (
    "Phases: median µs of the slowest rank per iteration; total = whole forward (median, p99). tok/s = distinct "
    "tokens (P/L x batch) / total. imb = max/mean rows received per rank, and kept assignments per expert. "
    "pad waste = executed / useful expert FLOPs. drop % of T*k assignments (capacity per rank's tokens). kernel MB "
    "= the expert kernel's peak extra memory; rss MB = process peak RSS (max over ranks). rel err = ||y - ref|| / "
    "||ref|| against a single-process float64 reference; ok: within 1e-5 (fp32) or 2e-2 (bf16/fp16). "
    "naive = per-expert loop + native all-to-all; dense-equivalent = one dense SwiGLU FFN with k*I columns."
)


def run(args) -> int:
    cfg = validate(args)
    comm = open_comm(args.backend, args.ranks_per_node, args.tp)
    meta = {**report.base_meta("moe", sys.argv), **report.comm_meta(comm), "tag": args.tag}
    meta.update(
        model=cfg.preset.name,
        H=cfg.preset.H,
        I=cfg.preset.I,
        E=cfg.preset.E,
        k=cfg.preset.k,
        dtype=args.dtype,
        impl=args.impl,
        iters=args.iters,
        warmup=args.warmup,
    )
    if comm.rank == 0:
        report.print_header(meta)
    P = comm.world_size
    weights = moe.make_weights(
        cfg.preset, cfg.dtype, comm.device, args.seed, comm.rank * (cfg.preset.E // P), cfg.preset.E // P
    )
    configs = [(a, k) for a in cfg.algos for k in cfg.kernels] + [("native", "loop")]
    cases = list(itertools.product(cfg.skews, cfg.capacity_factors, cfg.batches))
    rows = []
    with Progress(disable=comm.rank != 0, transient=True, console=report.console) as progress:
        task = progress.add_task("moe", total=len(cases) * (len(configs) + 1))
        for skew, cf, T in cases:
            work = make_workload(comm, cfg, args, skew, cf, T, args.iters + args.warmup)
            for algo, kernel in configs:
                progress.update(task, description=f"batch {T} {algo}+{kernel}")
                rows.append(
                    {
                        "batch": T,
                        "skew": skew,
                        "capacity_factor": cf,
                        **measure_layer(comm, cfg, args, work, weights, algo, kernel),
                    }
                )
                progress.advance(task)
            rows.append({"batch": T, "skew": skew, "capacity_factor": cf, **measure_dense(comm, cfg, args, work)})
            progress.advance(task)
    for r in rows:
        r["tokens_per_s"] = P // args.tp * r["batch"] / (r["total_us"] * 1e-6)
    if comm.rank == 0:
        write_outputs(meta, rows, args)
    return 0 if all(r["correct"] is not False for r in rows) else 1


def write_outputs(meta: dict, rows: list[dict], args) -> None:
    title = (
        f"MoE layer {meta['model']} (H={meta['H']} I={meta['I']} E={meta['E']} k={meta['k']}), {meta['dtype']}, "
        f"impl {meta['impl']}, P={meta['P']} G={meta['G']} L={meta['L']}"
    )
    caption = report.CONVENTIONS + ". " + CAPTION
    report.print_table(title, COLUMNS, table_rows(rows), caption)
    sum_cols, sum_rows = summary(rows)
    report.print_table("Best configuration per batch (fastest correct; speedup over naive)", sum_cols, sum_rows)
    if args.json:
        report.write_json(args.json, meta, rows)
    if args.save:
        md = (
            f"# {title}\n\n{report.header_markdown(meta)}\n## Best configuration per batch\n\n"
            + report.rows_to_markdown(sum_cols, sum_rows)
            + "\n## All configurations\n\n"
            + report.rows_to_markdown(COLUMNS, table_rows(rows), caption)
        )
        for path in report.save_run(meta, rows, md):
            report.console.print(f"wrote {path}")
