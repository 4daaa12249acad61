# T = tokens, E = experts, H = hidden, I = expert FFN, k = active
"""`python -m moebench kernels`: the expert kernels side by side on one device, with reference rows.

For each token count: one forced routing (--skew), then
- `dense`: one GEMM chain (gate, up, SwiGLU, down) on T*k rows with a single expert's weights, into
  preallocated buffers — the same useful FLOPs with no routing and no allocation, the ceiling here;
- `loop`: the per-expert Python loop most model code ships (kernels.reference.loop_experts);
- every kernel in --kernels; `padded` once per --capacity-factor ("none" = pad to the busiest expert),
  `dynamic` and `block_sparse` dropless, as those designs run.
Only the kernel call is timed; building the routing metadata from the given top-k ids (sort, offsets,
tile map) is timed on its own in the `routing µs` column. Each row's output is checked against `loop`
run with the same drops (rel err = ||y - y_loop|| / ||y_loop||).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from moebench.bench import workloads
from moebench.bench.timing import measure, stats

KERNEL_NAMES = ("padded", "dynamic", "block_sparse")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HUANG_STATIC_WASTE = 12.8  # Huang et al., NeurIPS'24: static gating executes up to 12.8x the useful rows (LM)
COLUMNS = [
    "kernel", "impl", "tokens", "cf", "median µs", "p20 µs", "p80 µs", "routing µs", "TFLOP/s", "x dense",
    "waste", "drop %", "weights MB", "GB/s", "peak MB", "rel err",
]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m moebench kernels`."""
    parser.add_argument("--model", default="mixtral-8x7b-tiny", help="preset (DESIGN.md §4) or its -tiny variant")
    parser.add_argument("--tokens", default="1,16,128,1024,4096", help="comma-separated token counts T")
    parser.add_argument("--kernels", default=",".join(KERNEL_NAMES), help="comma-separated expert kernels")
    parser.add_argument("--impl", default="torch", choices=["torch", "triton"], help="kernel implementation")
    parser.add_argument("--skew", default="uniform", help="routing: uniform | zipf:S | hot:F | shift[:F]")
    parser.add_argument(
        "--capacity-factor", default="none,1.0,2.0", help="comma-separated, for padded; none = dropless"
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bf16 on cuda, else fp32")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--block-size", type=int, default=64, help="rows per tile / block (power of two >= 16)")
    parser.add_argument("-n", "--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("-w", "--warmup", type=int, default=3, help="warmup iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write rows to this JSON file")
    parser.add_argument("--save", action="store_true", help="store the run under results/<machine>/")
    parser.add_argument("--tag", default="", help="name suffix of the stored run")


@dataclass(frozen=True)
class Config:
    preset: workloads.Preset
    tokens: list[int]
    kernels: list[str]
    impl: str
    skew: workloads.Skew
    capacity_factors: list[float | None]
    dtype: torch.dtype
    device: torch.device
    block_size: int
    iters: int
    warmup: int
    seed: int


def _parse_list(text: str, flag: str, convert) -> list:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"{flag} needs at least one value")
    try:
        return [convert(s) for s in items]
    except ValueError:
        raise ValueError(f"bad {flag} {text!r}") from None


def _capacity_factor(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def parse_config(args: argparse.Namespace) -> Config:
    """Validate the flags; ValueError naming the bad one."""
    tokens = _parse_list(args.tokens, "--tokens", int)
    if min(tokens) < 1:
        raise ValueError(f"--tokens must be >= 1, got {args.tokens!r}")
    kernels = _parse_list(args.kernels, "--kernels", str)
    for name in kernels:
        if name not in KERNEL_NAMES:
            raise ValueError(f"unknown expert kernel {name!r}; valid: {', '.join(KERNEL_NAMES)}")
    if args.iters < 1 or args.warmup < 0:
        raise ValueError(f"need -n >= 1 and -w >= 0, got -n {args.iters} -w {args.warmup}")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    dtype_name = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return Config(
        preset=workloads.get_preset(args.model),
        tokens=tokens,
        kernels=kernels,
        impl=args.impl,
        skew=workloads.parse_skew(args.skew),
        capacity_factors=_parse_list(args.capacity_factor, "--capacity-factor", _capacity_factor),
        dtype=DTYPES[dtype_name],
        device=device,
        block_size=args.block_size,
        iters=args.iters,
        warmup=args.warmup,
        seed=args.seed,
    )


def _import_kernels(config: Config):
    """Import kernels (and so triton), in interpreter mode for Triton kernels on CPU tensors."""
    if config.impl == "triton" and config.device.type == "cpu":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("--impl triton on CPU runs in the Triton interpreter: set TRITON_INTERPRET=1 in the env")
        os.environ["TRITON_INTERPRET"] = "1"
    from moebench import kernels

    return kernels


# ---------------------------------------------------------------------------------------------- one row


@dataclass
class Problem:
    """One token count's tensors, shared by every row."""

    x_TH: torch.Tensor
    ids_Tk: torch.Tensor
    weights_Tk: torch.Tensor
    w_gate_EHI: torch.Tensor
    w_up_EHI: torch.Tensor
    w_down_EIH: torch.Tensor

    @property
    def weights(self):
        return self.w_gate_EHI, self.w_up_EHI, self.w_down_EIH


def _time(fn, config: Config) -> dict:
    return stats(measure(fn, iters=config.iters, warmup=config.warmup, device=config.device))


def _rel_err(y_TH: torch.Tensor, ref_TH: torch.Tensor) -> float:
    ref = ref_TH.double()
    return ((y_TH.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def _row(config: Config, kernel: str, impl: str, T: int, cf, timing: dict, useful_flops: int, **extra) -> dict:
    p = config.preset
    time_s = timing["time_us"] * 1e-6
    row = {
        "kernel": kernel,
        "impl": impl,
        "tokens": T,
        "capacity_factor": cf,
        **timing,
        "useful_flops": useful_flops,
        "useful_tflops": useful_flops / time_s / 1e12,
        "model": p.name,
        "skew": str(config.skew),
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
    x_RH = problem.x_TH.repeat_interleave(k, dim=0)
    w_gate_HI, w_up_HI, w_down_IH = (w[0].contiguous() for w in problem.weights)
    h_RI, up_RI = x_RH.new_empty(T * k, config.preset.I), x_RH.new_empty(T * k, config.preset.I)
    out_RH = torch.empty_like(x_RH)

    def dense():
        torch.mm(x_RH, w_gate_HI, out=h_RI)
        torch.mm(x_RH, w_up_HI, out=up_RI)
        torch.nn.functional.silu(h_RI, inplace=True).mul_(up_RI)
        return torch.mm(h_RI, w_down_IH, out=out_RH)

    p = config.preset
    weight_bytes = 3 * p.H * p.I * problem.x_TH.element_size()
    return _row(config, "dense", "torch", T, None, _time(dense, config), 6 * p.H * p.I * T * k,
                padding_waste=1.0, dropped_pct=0.0, weight_bytes=weight_bytes, peak_mb=None, rel_err=None)  # fmt: skip


def _active_weight_bytes(config: Config, routing, elem_size: int) -> int:
    """Bytes of the experts that received at least one kept token (what decode really streams)."""
    p = config.preset
    return int((routing.kept_counts_E > 0).sum()) * 3 * p.H * p.I * elem_size


def _loop_row(config: Config, problem: Problem, kernels, routing) -> dict:
    loop = kernels.reference.loop_experts
    args = (problem.x_TH, routing, *problem.weights)
    T, k = problem.ids_Tk.shape
    p = config.preset
    weight_bytes = _active_weight_bytes(config, routing, problem.x_TH.element_size())
    return _row(config, "loop", "torch", T, None, _time(lambda: loop(*args), config), 6 * p.H * p.I * T * k,
                padding_waste=1.0, dropped_pct=0.0, weight_bytes=weight_bytes, peak_mb=None, rel_err=None)  # fmt: skip


def _kernel_row(config: Config, problem: Problem, kernels, name: str, cf, y_ref_TH: torch.Tensor) -> dict:
    T, k = problem.ids_Tk.shape
    E = config.preset.E

    def make_routing():
        return kernels.routing_from_topk(
            problem.ids_Tk, problem.weights_Tk, E, cf, block_size=config.block_size, validate=False
        )

    routing_timing = _time(make_routing, config)
    routing = make_routing()
    fn = kernels.EXPERT_KERNELS[name]
    args = (problem.x_TH, routing, *problem.weights)
    y_TH, kstats = fn(*args, impl=config.impl)
    timing = _time(lambda: fn(*args, impl=config.impl), config)
    return _row(
        config, name, config.impl, T, cf, timing, kstats.useful_flops,
        routing_us=routing_timing["time_us"],
        executed_flops=kstats.executed_flops,
        padding_waste=kstats.padding_waste,
        dropped_pct=100.0 * kstats.dropped / (T * k),
        padded_rows=kstats.padded_rows,
        weight_bytes=_active_weight_bytes(config, routing, problem.x_TH.element_size()),
        peak_mb=kstats.peak_extra_bytes / 1e6,
        rel_err=_rel_err(y_TH, y_ref_TH),
    )  # fmt: skip


def _make_problem(config: Config, T: int) -> Problem:
    p, dev = config.preset, config.device
    ids_Tk, weights_Tk = workloads.sample_topk(config.skew, T, p.E, p.k, seed=config.seed)
    weights = workloads.make_expert_weights(p, config.dtype, dev, seed=config.seed)
    x_TH = workloads.make_tokens(T, p.H, config.dtype, dev, seed=config.seed)
    return Problem(x_TH, ids_Tk.to(dev), weights_Tk.to(dev), *weights)


def bench_tokens(config: Config, kernels, T: int) -> list[dict]:
    """All rows for one token count: dense, loop, then each kernel (padded once per capacity factor)."""
    problem = _make_problem(config, T)
    dropless = kernels.routing_from_topk(problem.ids_Tk, problem.weights_Tk, config.preset.E, validate=False)
    rows = [_dense_row(config, problem), _loop_row(config, problem, kernels, dropless)]
    y_refs = {}
    for name in config.kernels:
        for cf in config.capacity_factors if name == "padded" else [None]:
            if cf not in y_refs:
                routing = kernels.routing_from_topk(problem.ids_Tk, problem.weights_Tk, config.preset.E, cf)
                y_refs[cf] = kernels.reference.loop_experts(problem.x_TH, routing, *problem.weights)
            rows.append(_kernel_row(config, problem, kernels, name, cf, y_refs[cf]))
    dense_tflops = rows[0]["useful_tflops"]
    for row in rows:
        row["frac_dense"] = row["useful_tflops"] / dense_tflops
    return rows


# ---------------------------------------------------------------------------------------------- report


def _table_row(row: dict) -> list:
    def opt(value, scale=1.0):
        return "-" if value is None else value * scale

    cf = row["capacity_factor"]
    return [
        row["kernel"], row["impl"], row["tokens"], "-" if row["kernel"] in ("dense", "loop") else cf or "none",
        row["time_us"], row["p20_us"], row["p80_us"], opt(row.get("routing_us")), row["useful_tflops"],
        row["frac_dense"], row["padding_waste"], row["dropped_pct"], row["weight_bytes"] / 1e6,
        row["weight_gbps"], opt(row["peak_mb"]), opt(row["rel_err"]),
    ]  # fmt: skip


def _find(rows: list[dict], T: int, kernel: str, cf=None) -> dict | None:
    for row in rows:
        if row["tokens"] == T and row["kernel"] == kernel and row["capacity_factor"] == cf:
            return row
    return None


def summary_lines(rows: list[dict]) -> list[str]:
    """Ratios that answer the benchmark's questions, per token count (only those this run measured)."""
    lines = []
    for T in sorted({row["tokens"] for row in rows}):
        dense, loop, dyn = _find(rows, T, "dense"), _find(rows, T, "loop"), _find(rows, T, "dynamic")
        bsp = _find(rows, T, "block_sparse")
        parts = []
        if dyn:
            parts.append(f"dynamic {dyn['frac_dense']:.2f}x dense throughput, {loop['time_us'] / dyn['time_us']:.2f}x "
                         "faster than loop")  # fmt: skip
            for row in rows:
                if row["tokens"] == T and row["kernel"] == "padded":
                    cf = row["capacity_factor"] or "none"
                    parts.append(f"{row['time_us'] / dyn['time_us']:.2f}x faster than padded cf={cf} "
                                 f"(drops {row['dropped_pct']:.1f}%)")  # fmt: skip
        if bsp and dyn:
            parts.append(f"block_sparse / dynamic time {bsp['time_us'] / dyn['time_us']:.2f}")
        wastes = [f"cf={row['capacity_factor'] or 'none'} {row['padding_waste']:.2f}x"
                  for row in rows if row["tokens"] == T and row["kernel"] == "padded"]  # fmt: skip
        if wastes:
            parts.append(f"padded waste {', '.join(wastes)} (Huang et al. NeurIPS'24: static gating up to "
                         f"{HUANG_STATIC_WASTE}x, LM)")  # fmt: skip
        if parts and dense:
            lines.append(f"T={T}: " + "; ".join(parts))
    return lines


def _title(config: Config) -> str:
    p = config.preset
    tiny = " [TINY: H, I scaled down]" if p.tiny else ""
    return (f"expert kernels — {p.name}{tiny} H={p.H} I={p.I} E={p.E} k={p.k}, skew {config.skew}, "
            f"{str(config.dtype).removeprefix('torch.')}, {config.device.type}, impl {config.impl}")  # fmt: skip


def _caption(config: Config) -> str:
    from moebench.bench.report import CONVENTIONS

    threads = f"{torch.get_num_threads()} torch threads" if config.device.type == "cpu" else "CUDA events"
    act = "" if config.preset.act == "swiglu" else f" (this preset's original expert is {config.preset.act})"
    return (
        f"{CONVENTIONS}; {threads}. Experts are SwiGLU{act}: 6*H*I FLOPs per kept (token, expert) pair. "
        "TFLOP/s = useful FLOPs / median; x dense = that / dense row's; waste = executed / useful FLOPs; "
        "dense = one GEMM chain on T*k rows with one expert's weights into preallocated buffers (the ceiling); "
        "loop = per-expert Python loop. "
        "cf: capacity factor of padded (none = pad to the busiest expert); dynamic and block_sparse are dropless. "
        "routing µs: building the routing metadata from the top-k ids, not in the kernel's time. "
        "weights MB: experts that received >= 1 token; GB/s = that / median. peak MB: extra memory the kernel "
        "allocated (CPU: its buffers' ledger; CUDA: allocator peak). rel err vs loop with the same drops."
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table and summary, write --json / --save; returns the exit code."""
    config = parse_config(args)
    kernels = _import_kernels(config)
    from moebench.bench import report

    rows = []
    for T in config.tokens:
        rows += bench_tokens(config, kernels, T)
    title, caption = _title(config), _caption(config)
    table = [_table_row(row) for row in rows]
    report.print_table(title, COLUMNS, table, caption)
    lines = summary_lines(rows)
    for line in lines:
        report.console.print(line)
    meta = report.base_meta("kernels", sys.argv) | {
        "tag": args.tag, "model": config.preset.name, "skew": str(config.skew), "impl": config.impl,
        "dtype": str(config.dtype).removeprefix("torch."), "device": config.device.type,
        "torch_threads": torch.get_num_threads(), "summary": lines,
    }  # fmt: skip
    if args.json is not None:
        report.write_json(args.json, meta, rows)
    if args.save:
        markdown = f"## {title}\n\n" + report.rows_to_markdown(COLUMNS, table, caption)
        markdown += "\n" + "".join(f"- {line}\n" for line in lines)
        for path in report.save_run(meta, rows, markdown):
            report.console.print(f"wrote {path}")
    return 0
