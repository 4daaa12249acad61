# T = tokens per rank, E = experts, H = hidden, k = experts per token, P = ranks, L = TP degree
"""MoE layer benchmark: every dispatch/combine configuration x kernel x batch, phase by phase, each checked.

Run under `mpiexec -n P moebench moe ...` or `torchrun --nproc_per_node P $(which moebench) moe --backend torch`.
Per configuration: median time per phase (gate, permute, dispatch, experts, combine, unpermute; each
the slowest rank's), total median and p99, tokens/s, load imbalance (max/mean rows per rank and per
expert), padding waste, dropped %, peak memory, and the relative error against a single-process
float64 reference of the whole layer. --algos entries come from the registries: an exchange name
(the plain pair over it) or `pair:exchange`; --kernels from EXPERT_KERNELS. Reference rows: each
baseline of BASELINES (the per-expert `loop`) over the backend's native all-to-all, and
`dense-equivalent` (a dense SwiGLU FFN with one token's active parameters).
"""

from __future__ import annotations

import itertools
import resource
import sys
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import Progress

from moebench.bench import options, plots, report, timing
from moebench.bench.cli import open_comm
from moebench.bench.layer import forward as moe
from moebench.bench.layer.presets import Preset, get_preset
from moebench.bench.layer.workloads import Skew, make_tokens
from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE
from moebench.kernels import BASELINES, EXPERT_KERNELS

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
BASELINE_ALGO = "native"  # the baselines run over the backend's own all-to-all
DEFAULT_ALGOS = [*ALGORITHMS, *(f"{pair}:{moe.DEFAULT_INNER}" for pair in DISPATCH_COMBINE if pair != "plain")]


def add_arguments(p) -> None:
    options.add_model(p)
    options.add_batch(p, "1,8,128,1024,4096")
    p.add_argument("--algos", type=options.str_list, default=DEFAULT_ALGOS,
                   help=f"exchange (plain pair over it) or pair:exchange; exchanges: {', '.join(ALGORITHMS)}; "
                   f"pairs: {', '.join(DISPATCH_COMBINE)}")  # fmt: skip
    options.add_names(p, "--kernels", EXPERT_KERNELS, EXPERT_KERNELS, "expert kernels")
    options.add_impl(p)
    options.add_skew(p, "gate", gate=True)
    options.add_capacity_factor(p, "none")
    options.add_launch(p)
    options.add_dtype(p, "auto")
    options.add_iterations(p, iters=10, warmup=3)
    options.add_seed(p)
    options.add_output(p)


@dataclass(frozen=True)
class Config:
    preset: Preset
    batches: list[int]
    algos: list[tuple[str, str]]  # (pair, inner)
    kernels: list[str]
    impl: str
    skews: list[Skew]
    capacity_factors: list[float | None]
    dtype: torch.dtype
    iters: int
    warmup: int
    seed: int
    tp: int


def validate(args) -> Config:
    """Every check that needs no communication, identical on every rank: ValueError on bad input."""
    P = options.launch_size()
    preset = get_preset(args.model)
    if preset.E % P:
        raise ValueError(f"{preset.name} has E={preset.E} experts, not divisible by P={P} ranks")
    options.check_batch(args)
    options.check_launch(args)
    if not args.algos:
        raise ValueError("--algos needs at least one configuration")
    algos = [moe.parse_algo(a) for a in args.algos]
    options.check_names(args.kernels, EXPERT_KERNELS, "kernel")
    options.check_iterations(args)
    options.check_skews(args)
    if not args.capacity_factor:
        raise ValueError("--capacity-factor needs at least one value")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Config(preset, args.batch, algos, args.kernels, args.impl, args.skew, args.capacity_factor,
                  options.resolve_dtype(args.dtype, device), args.iters, args.warmup, args.seed, args.tp)  # fmt: skip


# ---------------------------------------------------------------------------------------------- one config


@dataclass(frozen=True)
class Workload:
    """This rank's tokens for one (skew, capacity factor, batch) and the reference output."""

    skew: Skew
    capacity_factor: float | None
    T: int
    x_TH: torch.Tensor
    forced: list  # one forced routing per iteration (shift moves between batches), or [None]
    y_ref_TH: torch.Tensor


def make_workload(comm, cfg: Config, skew: Skew, cf, T: int) -> Workload:
    """Tokens shared inside each TP group (as after a TP attention block), seeded by TP group."""
    group_seed = cfg.seed * 1000 + comm.rank // comm.tp.size
    x_TH = make_tokens(T, cfg.preset.H, cfg.dtype, "cpu", seed=group_seed)
    batches = range(cfg.iters + cfg.warmup) if skew.kind == "shift" else [0]
    forced = [moe.forced_routing(skew, T, cfg.preset, group_seed, b) for b in batches]
    y_ref_TH = moe.reference_forward(x_TH, cfg.preset, cf, cfg.seed, forced[0])
    return Workload(skew, cf, T, x_TH.to(comm.device), forced, y_ref_TH)


def rel_error(y_TH: torch.Tensor, ref_TH: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in float64 (0 when both are zero)."""
    diff = torch.linalg.vector_norm(y_TH.double().cpu() - ref_TH)
    norm = torch.linalg.vector_norm(ref_TH)
    return float(diff / norm) if norm > 0 else float(diff)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def phase_fields(samples: np.ndarray) -> dict:
    fields = {f"{ph}_us": float(np.median(samples[:, i])) for i, ph in enumerate(moe.PHASES)}
    fields.update({f"{ph}_p99_us": float(np.percentile(samples[:, i], 99)) for i, ph in enumerate(moe.PHASES)})
    total = timing.stats(samples[:, -1])
    fields.update(total_us=total["time_us"], p99_us=total["p99_us"], p20_us=total["p20_us"], p80_us=total["p80_us"])
    return fields


def measure_layer(comm, cfg: Config, work: Workload, weights, layer: moe.LayerConfig, role: str) -> dict:
    """Check once against the reference, then time the layer phase by phase."""
    info = moe.ForwardInfo()
    y_TH = moe.forward(comm, work.x_TH, weights, layer, lambda: None, work.forced[0], info)
    error = rel_error(y_TH, work.y_ref_TH)
    forced = itertools.cycle(work.forced)
    samples = timing.measure_phases(
        lambda mark: moe.forward(comm, work.x_TH, weights, layer, mark, next(forced)),
        num_phases=len(moe.PHASES),
        iters=cfg.iters,
        warmup=cfg.warmup,
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
            "kernel_peak_mb": info.stats.peak_extra_bytes / 1e6,
            "rss_mb": peak_rss_mb(),
            "error": error,
        }
    )
    return {
        "algo": layer.label,
        "kernel": layer.kernel,
        "role": role,
        **phase_fields(samples),
        **load_fields(cfg, work, per_rank),
    }


def load_fields(cfg: Config, work: Workload, per_rank: list[dict]) -> dict:
    P, L = len(per_rank), cfg.tp
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


def measure_dense(comm, cfg: Config, work: Workload) -> dict:
    """dense-equivalent: the same tokens through one dense SwiGLU FFN with the active parameter count."""
    w = moe.dense_equivalent_weights(cfg.preset, cfg.dtype, comm.device, cfg.seed)

    def fn(mark):
        for phase in moe.PHASES:
            if phase == "experts":
                moe.dense_forward(work.x_TH, *w)
            mark()

    samples = timing.measure_phases(
        fn, num_phases=len(moe.PHASES), iters=cfg.iters, warmup=cfg.warmup, comm=comm, device=comm.device
    )
    return {
        "algo": "dense-equivalent",
        "kernel": "dense",
        "role": "dense",
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


def layer_configs(cfg: Config, cf) -> list[tuple[moe.LayerConfig, str]]:
    """Every (pair, inner) x kernel of the run, then each baseline over the native all-to-all."""
    configs = [
        (moe.LayerConfig(cfg.preset, pair, inner, kernel, cfg.impl, cf), "config")
        for pair, inner in cfg.algos
        for kernel in cfg.kernels
    ]
    return configs + [
        (moe.LayerConfig(cfg.preset, "plain", BASELINE_ALGO, name, "torch", cf), "baseline") for name in BASELINES
    ]


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
    """Per (skew, cf, batch): the fastest correct configuration and its speedup over each baseline."""
    columns = ["batch", "skew", "cf", "best config", "total", "baseline", "baseline µs", "speedup", "dense-equiv",
               "dominant phase"]  # fmt: skip
    out = []
    for key, group in itertools.groupby(rows, key=lambda r: (r["skew"], r["capacity_factor"], r["batch"])):
        group = list(group)
        candidates = [r for r in group if r["role"] == "config" and r["correct"]]
        baseline = next((r for r in group if r["role"] == "baseline"), None)
        dense = next((r for r in group if r["role"] == "dense"), None)
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
                f"{baseline['algo']} + {baseline['kernel']}" if baseline else "",
                baseline["total_us"] if baseline else "",
                f"{baseline['total_us'] / best['total_us']:.2f}x" if baseline else "",
                dense["total_us"] if dense else "",
                f"{dominant} ({share:.0%})",
            ]
        )
    return columns, out


CAPTION = (
    "Phases: median µs of the slowest rank per iteration; total = whole forward (median, p99). tok/s = distinct "
    "tokens (P/L x batch) / total. imb = max/mean rows received per rank, and kept assignments per expert. "
    "pad waste = executed / useful expert FLOPs. drop % of T*k assignments (capacity per rank's tokens). kernel MB "
    "= the expert kernel's peak extra memory (MB = 1e6 B); rss MB = process peak RSS (max over ranks). rel err = "
    "||y - ref|| / ||ref|| against a single-process float64 reference; ok: within 1e-5 (fp32) or 2e-2 (bf16/fp16). "
    "algo: an exchange (the plain pair over it) or pair:exchange. Baselines: each of BASELINES (loop = the "
    "per-expert Python loop) over native; dense-equivalent = one dense SwiGLU FFN with k*F columns."
)


def title(meta: dict) -> str:
    return (
        f"MoE layer {meta['model']} (H={meta['H']} F={meta['F']} E={meta['E']} k={meta['k']}), {meta['dtype']}, "
        f"impl {meta['impl']}, P={meta['P']} G={meta['G']} L={meta['L']}"
    )


OLD_ROLES = {"naive": "baseline", "dense-equivalent": "dense"}  # results stored before rows carried a role


def render(data: dict, path) -> None:
    rows = [{"role": OLD_ROLES.get(r["algo"], "config"), **r} for r in data["rows"]]
    report.print_table(report.stored_title(data, path), COLUMNS, table_rows(rows))
    report.print_table("Best configuration per batch", *summary(rows))


def plot(rows: list[dict], base) -> list:
    first = (rows[0]["skew"], rows[0]["capacity_factor"])
    rows = [r for r in rows if (r["skew"], r["capacity_factor"]) == first]
    paths = plots.series(rows, base, "latency", x="batch", y="total_us", label=lambda r: f"{r['algo']} + {r['kernel']}",
                         xlabel="tokens per rank", ylabel="layer latency (µs, median)",
                         title=f"MoE layer latency vs batch (skew {first[0]}, cf {first[1] or 'none'})")  # fmt: skip
    batches = sorted({r["batch"] for r in rows})
    panels = {
        f"phase breakdown, batch {b} per rank": [(f"{r['algo']}\n{r['kernel']}", r) for r in rows if r["batch"] == b]
        for b in dict.fromkeys([batches[0], batches[-1]])
    }
    return paths + plots.phase_bars(panels, moe.PHASES, base, "phases", "µs (median per phase)")


def run(args) -> int:
    cfg = validate(args)
    comm = open_comm(args.backend, args.ranks_per_node, args.tp)
    p = cfg.preset
    meta = {**report.base_meta("moe", sys.argv), **report.comm_meta(comm), "tag": args.tag}
    meta.update(model=p.name, H=p.H, F=p.F, E=p.E, k=p.k, dtype=str(cfg.dtype).removeprefix("torch."), impl=cfg.impl,
                iters=cfg.iters, warmup=cfg.warmup)  # fmt: skip
    if comm.rank == 0:
        report.print_header(meta)
    P = comm.world_size
    weights = moe.make_weights(p, cfg.dtype, comm.device, cfg.seed, comm.rank * (p.E // P), p.E // P)
    cases = list(itertools.product(cfg.skews, cfg.capacity_factors, cfg.batches))
    rows = []
    with Progress(disable=comm.rank != 0, transient=True, console=report.console) as progress:
        task = progress.add_task("moe", total=len(cases) * (len(layer_configs(cfg, None)) + 1))
        for skew, cf, T in cases:
            work = make_workload(comm, cfg, skew, cf, T)
            fields = {"batch": T, "skew": str(skew), "capacity_factor": cf}
            for layer, role in layer_configs(cfg, cf):
                progress.update(task, description=f"batch {T} {layer.label}+{layer.kernel}")
                rows.append({**fields, **measure_layer(comm, cfg, work, weights, layer, role)})
                progress.advance(task)
            rows.append({**fields, **measure_dense(comm, cfg, work)})
            progress.advance(task)
    for r in rows:
        r["tokens_per_s"] = P // cfg.tp * r["batch"] / (r["total_us"] * 1e-6)
    if comm.rank == 0:
        write_outputs(meta, rows, args)
    return report.exit_status(rows, say=comm.rank == 0)


def write_outputs(meta: dict, rows: list[dict], args) -> None:
    caption = report.CONVENTIONS + ". " + CAPTION
    report.print_table(title(meta), COLUMNS, table_rows(rows), caption)
    sum_cols, sum_rows = summary(rows)
    report.print_table("Best configuration per batch (fastest correct; speedup over the baseline)", sum_cols, sum_rows)
    md = (
        f"# {title(meta)}\n\n{report.header_markdown(meta)}\n## Best configuration per batch\n\n"
        + report.rows_to_markdown(sum_cols, sum_rows)
        + "\n## All configurations\n\n"
        + report.rows_to_markdown(COLUMNS, table_rows(rows), caption)
    )
    report.emit(args, meta, rows, md)
