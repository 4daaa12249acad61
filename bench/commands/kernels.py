# T = tokens, E = experts, H = hidden, F = expert FFN width, k = experts per token, R = rows
"""Expert kernels side by side on one device, with reference rows, each row checked against float64.

For each token count and skew: one forced routing, then
- `dense`: one GEMM chain (gate, up, SwiGLU, down) on T*k rows with a single expert's weights, into
  preallocated buffers — the same useful FLOPs with no routing and no allocation, the ceiling here;
- every baseline of the BASELINES registry (`loop`: the per-expert Python loop most model code ships);
- every kernel in --kernels (the EXPERT_KERNELS registry); `padded` once per --capacity-factor
  ("none" = pad to the busiest expert), the dropless kernels (dynamic, block_sparse) once, as they run.
Only the kernel call is timed; building the routing metadata from the given top-k ids (sort, offsets,
tile map) is timed on its own in the `routing µs` column. Each row's output is checked against the
float64 reference with the same drops (rel err = ||y - y_ref|| / ||y_ref||; tolerance by dtype): a
wrong row is printed and the run exits 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from moebench import kernels
from moebench.bench import options, report
from moebench.bench.layer import workloads
from moebench.bench.layer.presets import Preset, get_preset
from moebench.bench.timing import measure, stats
from moebench.kernels.triton_utils import interpreter_active

HUANG_STATIC_WASTE = 12.8  # Huang et al., NeurIPS'24: static gating executes up to 12.8x the useful rows (LM)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
DROPLESS = ("dynamic", "block_sparse")  # kernels that run without a capacity (one row each, cf none)
COLUMNS = [
    "kernel", "impl", "tokens", "skew", "cf", "median µs", "p20 µs", "p80 µs", "routing µs", "TFLOP/s", "x dense",
    "waste", "drop %", "weights MB", "GB/s", "peak MB", "rel err", "ok",
]  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `moebench kernels`."""
    options.add_model(p)
    options.add_batch(p, "1,16,128,1024,4096", alias="--tokens")
    options.add_names(p, "--kernels", kernels.EXPERT_KERNELS, kernels.EXPERT_KERNELS, "expert kernels")
    options.add_impl(p)
    options.add_skew(p, "uniform", gate=False)
    options.add_capacity_factor(p, "none,1.0,2.0")
    options.add_dtype(p, "auto")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--block-size", type=int, default=64, help="rows per tile / block (power of two >= 16)")
    options.add_iterations(p, iters=10, warmup=3)
    options.add_seed(p)
    options.add_output(p)


@dataclass(frozen=True)
class Config:
    preset: Preset
    tokens: list[int]
    kernels: list[str]
    impl: str
    skews: list
    capacity_factors: list[float | None]
    dtype: torch.dtype
    device: torch.device
    block_size: int
    iters: int
    warmup: int
    seed: int


def parse_config(args: argparse.Namespace) -> Config:
    """Validate the flags; ValueError naming the bad one."""
    options.check_batch(args)
    options.check_names(args.kernels, kernels.EXPERT_KERNELS, "expert kernel")
    options.check_iterations(args)
    options.check_skews(args)
    if not args.capacity_factor:
        raise ValueError("--capacity-factor needs at least one value")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    if args.impl == "triton" and device.type == "cpu" and not interpreter_active():
        raise ValueError(
            "--impl triton on CPU runs in the Triton interpreter: set TRITON_INTERPRET=1 in the environment"
        )
    return Config(
        preset=get_preset(args.model),
        tokens=args.batch,
        kernels=args.kernels,
        impl=args.impl,
        skews=args.skew,
        capacity_factors=args.capacity_factor,
        dtype=options.resolve_dtype(args.dtype, device),
        device=device,
        block_size=args.block_size,
        iters=args.iters,
        warmup=args.warmup,
        seed=args.seed,
    )


# ---------------------------------------------------------------------------------------------- one row


@dataclass
class Problem:
    """One token count's tensors, shared by every row."""

    skew: workloads.Skew
    x_TH: torch.Tensor
    ids_Tk: torch.Tensor
    weights_Tk: torch.Tensor
    weights: tuple  # (w_gate_EHF, w_up_EHF, w_down_EFH)


def _time(fn, config: Config) -> dict:
    return stats(measure(fn, iters=config.iters, warmup=config.warmup, device=config.device))


def _rel_err(y_TH: torch.Tensor, ref_TH: torch.Tensor) -> float:
    ref = ref_TH.double().cpu()
    return ((y_TH.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def _row(config: Config, problem: Problem, kernel: str, impl: str, cf, timing: dict, useful_flops: int, **extra):
    p = config.preset
    time_s = timing["time_us"] * 1e-6
    row = {
        "kernel": kernel,
        "impl": impl,
        "tokens": problem.x_TH.shape[0],
        "capacity_factor": cf,
        **timing,
        "useful_flops": useful_flops,
        "useful_tflops": useful_flops / time_s / 1e12,
        "model": p.name,
        "skew": str(problem.skew),
        "dtype": str(config.dtype).removeprefix("torch."),
        "device": config.device.type,
    }
    row.update(extra)
    row["weight_gbps"] = row["weight_bytes"] / time_s / 1e9
    return row


def _dense_row(config: Config, problem: Problem) -> dict:
    """One GEMM chain on T*k rows with expert 0's weights into preallocated buffers: the same useful FLOPs,
    no routing and no allocation — the ceiling."""
    T, k = problem.ids_Tk.shape
    p = config.preset
    x_RH = problem.x_TH.repeat_interleave(k, dim=0)
    w_gate_HF, w_up_HF, w_down_FH = (w[0].contiguous() for w in problem.weights)
    h_RF, up_RF = x_RH.new_empty(T * k, p.F), x_RH.new_empty(T * k, p.F)
    out_RH = torch.empty_like(x_RH)

    def dense():
        torch.mm(x_RH, w_gate_HF, out=h_RF)
        torch.mm(x_RH, w_up_HF, out=up_RF)
        torch.nn.functional.silu(h_RF, inplace=True).mul_(up_RF)
        return torch.mm(h_RF, w_down_FH, out=out_RH)

    weight_bytes = 3 * p.H * p.F * problem.x_TH.element_size()
    return _row(config, problem, "dense", "torch", None, _time(dense, config), 6 * p.H * p.F * T * k,
                padding_waste=1.0, dropped_pct=0.0, weight_bytes=weight_bytes, peak_mb=None, rel_err=None,
                correct=None, role="dense")  # fmt: skip


def _active_weight_bytes(config: Config, routing, elem_size: int) -> int:
    """Bytes of the experts that received at least one kept token (what decode really streams)."""
    p = config.preset
    return int((routing.kept_counts_E > 0).sum()) * 3 * p.H * p.F * elem_size


def _kernel_row(config: Config, problem: Problem, name: str, impl: str, cf, y_ref_TH, role: str) -> dict:
    """One kernel (or baseline) on one routing: checked once against float64, then timed (the call only)."""
    T, k = problem.ids_Tk.shape

    def make_routing():
        return kernels.routing_from_topk(
            problem.ids_Tk, problem.weights_Tk, config.preset.E, cf, block_size=config.block_size, validate=False
        )

    routing_timing = _time(make_routing, config)
    routing = make_routing()
    fn = kernels.get_kernel(name)
    args = (problem.x_TH, routing, *problem.weights)
    y_TH, kstats = fn(*args, impl=impl)
    timing = _time(lambda: fn(*args, impl=impl), config)
    error = _rel_err(y_TH, y_ref_TH)
    return _row(
        config, problem, name, impl, cf, timing, kstats.useful_flops,
        routing_us=routing_timing["time_us"],
        executed_flops=kstats.executed_flops,
        padding_waste=kstats.padding_waste,
        dropped_pct=100.0 * kstats.dropped / (T * k),
        padded_rows=kstats.padded_rows,
        weight_bytes=_active_weight_bytes(config, routing, problem.x_TH.element_size()),
        peak_mb=kstats.peak_extra_bytes / 1e6,
        rel_err=error,
        correct=error <= TOLERANCE[config.dtype],
        role=role,
    )  # fmt: skip


def _make_problem(config: Config, skew, T: int) -> Problem:
    p, dev = config.preset, config.device
    ids_Tk, weights_Tk = workloads.sample_topk(skew, T, p.E, p.k, seed=config.seed)
    weights = workloads.make_expert_weights(p, config.dtype, dev, seed=config.seed)
    x_TH = workloads.make_tokens(T, p.H, config.dtype, dev, seed=config.seed)
    return Problem(skew, x_TH, ids_Tk.to(dev), weights_Tk.to(dev), weights)


def _capacity_factors(config: Config, name: str) -> list:
    """A dropless design runs once, without a capacity; a static-capacity one once per --capacity-factor."""
    return [None] if getattr(kernels.get_kernel(name), "dropless", False) else config.capacity_factors


def bench_tokens(config: Config, skew, T: int) -> list[dict]:
    """All rows for one token count: dense, the baselines, then each kernel (per capacity factor where it has one)."""
    problem = _make_problem(config, skew, T)
    plan = [(name, "torch", cf, "baseline") for name in kernels.BASELINES for cf in _capacity_factors(config, name)]
    plan += [(name, config.impl, cf, "kernel") for name in config.kernels for cf in _capacity_factors(config, name)]
    y_refs = {}
    rows = [_dense_row(config, problem)]
    for name, impl, cf, role in plan:
        if cf not in y_refs:  # the float64 truth with the same drops
            routing = kernels.routing_from_topk(problem.ids_Tk, problem.weights_Tk, config.preset.E, cf)
            y_refs[cf] = kernels.reference.moe_experts(problem.x_TH, routing, *problem.weights)
        rows.append(_kernel_row(config, problem, name, impl, cf, y_refs[cf], role))
    dense_tflops = rows[0]["useful_tflops"]
    for row in rows:
        row["frac_dense"] = row["useful_tflops"] / dense_tflops
    return rows


# ---------------------------------------------------------------------------------------------- report


def _table_row(row: dict) -> list:
    def opt(value, scale=1.0):
        return "-" if value is None else value * scale

    ok = "-" if row.get("correct") is None else ("yes" if row["correct"] else "NO")
    return [
        row["kernel"], row["impl"], row["tokens"], row["skew"], row["capacity_factor"] or "none",
        row["time_us"], row["p20_us"], row["p80_us"], opt(row.get("routing_us")), row["useful_tflops"],
        row["frac_dense"], row["padding_waste"], row["dropped_pct"], row["weight_bytes"] / 1e6,
        row["weight_gbps"], opt(row["peak_mb"]), opt(row["rel_err"]), ok,
    ]  # fmt: skip


def _label(row: dict) -> str:
    return row["kernel"] + ("" if row["capacity_factor"] is None else f" cf={row['capacity_factor']}")


def summary_lines(rows: list[dict]) -> list[str]:
    """Per skew and token count: the fastest correct kernel against dense and every baseline, and every other
    kernel's time relative to it (with its drops and padding waste where it has them)."""
    lines = []
    for skew, T in dict.fromkeys((r["skew"], r["tokens"]) for r in rows):
        group = [r for r in rows if (r["skew"], r["tokens"]) == (skew, T)]
        candidates = [r for r in group if r["role"] == "kernel" and r["correct"]]
        if not candidates:
            continue
        best = min(candidates, key=lambda r: r["time_us"])
        parts = [f"fastest {_label(best)} {best['time_us']:.4g} µs, {best['frac_dense']:.2f}x dense throughput"]
        parts += [
            f"{b['time_us'] / best['time_us']:.2f}x faster than {_label(b)}" for b in group if b["role"] == "baseline"
        ]
        for r in candidates:
            if r is not best:
                extra = (
                    f" (drops {r['dropped_pct']:.1f}%, waste {r['padding_waste']:.2f}x)"
                    if r["padding_waste"] > 1
                    else ""
                )
                parts.append(f"{_label(r)} {r['time_us'] / best['time_us']:.2f}x its time{extra}")
        if any(r["padding_waste"] > 1 for r in candidates):
            parts.append(f"Huang et al. NeurIPS'24: static gating wastes up to {HUANG_STATIC_WASTE}x (LM)")
        lines.append(f"T={T} {skew}: " + "; ".join(parts))
    return lines


def _title(config: Config) -> str:
    p = config.preset
    tiny = " [TINY: H, F scaled down]" if p.tiny else ""
    skews = ",".join(map(str, config.skews))
    return (f"expert kernels — {p.describe()}{tiny}, skew {skews}, {str(config.dtype).removeprefix('torch.')}, "
            f"{config.device.type}, impl {config.impl}")  # fmt: skip


def _caption(config: Config) -> str:
    threads = f"{torch.get_num_threads()} torch threads" if config.device.type == "cpu" else "CUDA events"
    act = "" if config.preset.act == "swiglu" else f" (this preset's original expert is {config.preset.act})"
    return (
        f"{report.CONVENTIONS}; {threads}. Experts are SwiGLU{act}: 6*H*F FLOPs per kept (token, expert) pair. "
        "TFLOP/s = useful FLOPs / median; x dense = that / dense row's; waste = executed / useful FLOPs; "
        "dense = one GEMM chain on T*k rows with one expert's weights into preallocated buffers (the ceiling); "
        f"baselines: {', '.join(kernels.BASELINES)} (loop = the per-expert Python loop). "
        "cf: capacity factor of a static-capacity kernel (none = pad to the busiest expert); dropless kernels run "
        "once. routing µs: building the routing metadata from the top-k ids, not in the kernel's time. "
        "weights MB: experts that received >= 1 token; GB/s = that / median. peak MB: extra memory the kernel "
        "allocated (CPU: its buffers' ledger; CUDA: allocator peak). rel err vs the float64 reference with the "
        "same drops; ok: within 1e-5 (fp32) or 2e-2 (bf16/fp16)."
    )


def render(data: dict, path) -> None:
    report.print_table(report.stored_title(data, path), COLUMNS, [_table_row(r) for r in data["rows"]])


def plot(rows: list[dict], base) -> list:
    from moebench.bench import plots

    return plots.series(rows, base, "time", x="tokens", y="time_us", label=lambda r: f"{_label(r)} {r['skew']}",
                        xlabel="tokens", ylabel="time (µs, median)", title="expert kernels")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table and summary, write --json / --save; returns the exit code."""
    config = parse_config(args)
    rows = []
    for skew in config.skews:
        for T in config.tokens:
            rows += bench_tokens(config, skew, T)
    title, caption = _title(config), _caption(config)
    table = [_table_row(row) for row in rows]
    report.print_table(title, COLUMNS, table, caption)
    lines = summary_lines(rows)
    for line in lines:
        report.console.print(line)
    meta = report.base_meta("kernels", sys.argv) | {
        "tag": args.tag, "model": config.preset.name, "skew": ",".join(map(str, config.skews)), "impl": config.impl,
        "dtype": str(config.dtype).removeprefix("torch."), "device": config.device.type,
        "torch_threads": torch.get_num_threads(), "summary": lines,
    }  # fmt: skip
    markdown = f"## {title}\n\n" + report.rows_to_markdown(COLUMNS, table, caption)
    markdown += "\n" + "".join(f"- {line}\n" for line in lines)
    report.emit(args, meta, rows, markdown)
    return report.exit_status(rows)
