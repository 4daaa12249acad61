# T = tokens, E = experts, H = hidden, F = expert FFN width, k = experts per token, R = rows
"""Expert kernels side by side on one device, with reference rows, each row checked against float64.

For each token count and skew: one forced routing, then
- `dense`: the same kept rows through the same active experts as one batched GEMM chain (gate, up, SwiGLU,
  down) on the kernels' own weight copies, into preallocated buffers: the same work with no routing and no
  allocation, the ceiling here;
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
from threadpoolctl import threadpool_limits

from moebench import kernels
from moebench.bench import cuda_graph, options, report, roofline
from moebench.bench.layer import skews, workloads
from moebench.bench.layer.presets import Preset, get_preset
from moebench.bench.timing import Case, run_interleaved, ties
from moebench.kernels.common import MemoryMeter, expert_progressions, host_gemv_applies, host_swiglu
from moebench.kernels.routing import HOST
from moebench.kernels.triton_utils import interpreter_active

HUANG_STATIC_WASTE = 12.8  # Huang et al., NeurIPS'24: static gating executes up to 12.8x the useful rows (LM)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
DROPLESS = ("dynamic", "block_sparse")  # kernels that run without a capacity (one row each, cf none)
COLUMNS = [
    "kernel", "impl", "tokens", "skew", "cf", "median µs", "p20 µs", "p80 µs", "routing µs", "TFLOP/s", "x dense",
    "roofline µs", "roof frac", "waste", "drop %", "weights MB", "GB/s", "peak MB", "rel err", "ok",
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
    options.add_iterations(p, iters=100, warmup=3)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of torch and of numpy's BLAS (default: their own)")  # fmt: skip
    p.add_argument("--warm-weights", action="store_true",
                   help="time every call on one weight copy (cache-warm); default: rotate copies (cold)")  # fmt: skip
    p.add_argument("--cuda-graph", action="store_true",
                   help="CUDA only: time each row as replays of CUDA graphs captured once per weight copy (decode "
                        "timing as vLLM's benchmark_moe); a call that cannot be captured is timed eagerly")  # fmt: skip
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
    rounds: int = 5
    budget_s: float | None = None
    warm: bool = False
    cuda_graph: bool = False


def parse_config(args: argparse.Namespace) -> Config:
    """Validate the flags; ValueError naming the bad one."""
    options.check_batch(args)
    options.check_names(args.kernels, kernels.EXPERT_KERNELS, "expert kernel")
    options.check_iterations(args)
    options.check_skews(args)
    if not args.capacity_factor:
        raise ValueError("--capacity-factor needs at least one value")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1 (got {args.threads})")
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads, user_api="blas")  # numpy's BLAS too (the one-row experts' gemvs)
    check_memory(get_preset(args.model), args.batch, options.resolve_dtype(args.dtype, torch.device("cpu")))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    if args.cuda_graph and device.type != "cuda":
        raise ValueError("--cuda-graph needs a CUDA device (--device cuda): CUDA graphs do not exist on the CPU")
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
        rounds=args.rounds,
        budget_s=options.budget_seconds(args),
        warm=args.warm_weights,
        cuda_graph=args.cuda_graph,
    )


# ---------------------------------------------------------------------------------------------- one row


@dataclass
class Problem:
    """One token count's tensors, shared by every row."""

    skew: skews.Skew
    x_TH: torch.Tensor
    ids_Tk: torch.Tensor
    weights_Tk: torch.Tensor
    weights: tuple  # (w_gate_EHF, w_up_EHF, w_down_EFH)


def check_memory(preset: Preset, tokens: list[int], dtype: torch.dtype) -> None:
    """Refuse a run whose buffers cannot fit, before anything is allocated: one copy of the weights in the
    run's dtype and one in float64 (the reference), and per token count the rows of every buffer a kernel or
    the reference holds (x, y and the T*k gathered rows at H + 2F, in float64 for the reference)."""
    elem = torch.finfo(dtype).bits // 8
    weights = 3 * preset.E * preset.H * preset.F
    rows = max(tokens) * preset.k * (preset.H + 2 * preset.F)
    need = weights * (elem + 8) + rows * (3 * elem + 8)
    have = options.available_memory_bytes()
    if need > have:
        raise ValueError(f"{preset.name} at {max(tokens)} tokens needs about {need / 1e9:.1f} GB "
                         f"(weights + float64 reference + row buffers), {have / 1e9:.1f} GB available")  # fmt: skip


def _rel_err(y_TH: torch.Tensor, ref_TH: torch.Tensor) -> float:
    ref = ref_TH.double().cpu()
    return ((y_TH.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def _row(config: Config, problem: Problem, kernel: str, impl: str, cf, useful_flops: int, **extra) -> dict:
    p = config.preset
    row = {
        "kernel": kernel,
        "impl": impl,
        "tokens": problem.x_TH.shape[0],
        "capacity_factor": cf,
        "useful_flops": useful_flops,
        "model": p.name,
        "skew": str(problem.skew),
        "dtype": str(config.dtype).removeprefix("torch."),
        "device": config.device.type,
        "timing": "eager",  # --cuda-graph: "cuda-graph", or the reason it stays eager
    }
    row.update(extra)
    return row


def _dense_case(config: Config, problem: Problem, routing, copies: list, rotate: roofline.Rotation) -> Case:
    """The ceiling doing the same work: the same kept rows through the same active experts as one batched
    GEMM chain over the experts that got rows (each padded to the busiest one's rows), into preallocated
    buffers: no routing, no allocation. It reads the kernels' own weight copies (strided views of the active
    experts, one bmm per arithmetic progression of their ids), the same memory the kernels read: on this VM
    buffers allocated at different times read at different speeds (up to 1.3x between two sets of identical
    buffers), so a ceiling on copies of its own would compare placements, not code. Where every active expert
    has one row (on one CPU thread), each expert's chain runs in numpy as the kernels' one-row experts do
    (common.host_swiglu), faster there than bmm, so the ceiling is not below the kernels."""
    p = config.preset
    counts = routing.kept_counts_E.cpu()
    active = torch.nonzero(counts).view(-1).tolist()
    Ea, Rmax = len(active), int(counts.max()) if len(counts) else 0
    x_ERH = problem.x_TH.new_zeros(Ea, Rmax, p.H)
    order, offsets = routing.sort_idx_A.cpu(), routing.offsets_E1.cpu()
    for j, e in enumerate(active):
        tokens = order[offsets[e] : offsets[e + 1]] // routing.top_k
        x_ERH[j, : len(tokens)] = problem.x_TH[tokens.to(problem.x_TH.device)]
    groups = [(i, i + n, slice(active[i], active[i + n - 1] + 1, step))
              for i, n, step in expert_progressions(active)]  # fmt: skip
    h_ERF, up_ERF = x_ERH.new_empty(Ea, Rmax, p.F), x_ERH.new_empty(Ea, Rmax, p.F)
    out_ERH = torch.empty_like(x_ERH)

    def dense(w_gate, w_up, w_down):
        for a, b, experts in groups:
            torch.bmm(x_ERH[a:b], w_gate[experts], out=h_ERF[a:b])
            torch.bmm(x_ERH[a:b], w_up[experts], out=up_ERF[a:b])
        torch.nn.functional.silu(h_ERF, inplace=True).mul_(up_ERF)
        for a, b, experts in groups:
            torch.bmm(h_ERF[a:b], w_down[experts], out=out_ERH[a:b])
        return out_ERH

    def dense_one_row(w_gate, w_up, w_down):  # one row per expert: each expert's chain as the kernels run it
        gate_np, up_np, down_np = w_gate.numpy(), w_up.numpy(), w_down.numpy()  # the copy this call reads
        for j, e in enumerate(active):
            out_np[j] = out_1H = host_swiglu(x_np[j], gate_np[e], up_np[e], down_np[e], meter)
            meter.free(out_1H)
        return out_ERH

    elem = problem.x_TH.element_size()
    row = _row(config, problem, "dense", "torch", None, 6 * p.H * p.F * int(counts.sum()), padding_waste=1.0,
               dropped_pct=0.0, weight_bytes=Ea * 3 * p.H * p.F * elem, peak_mb=None, rel_err=None, correct=None,
               role="dense")  # fmt: skip
    one_row = Rmax == 1 and host_gemv_applies(x_ERH[0])
    x_np, out_np, meter = (x_ERH.numpy(), out_ERH.numpy(), MemoryMeter(HOST)) if one_row else (None, None, None)
    fn = dense_one_row if one_row else dense
    return Case(row, fn, prepare=lambda: rotate(copies))  # the copy is picked before the clock starts


def _active_weight_bytes(config: Config, routing, elem_size: int) -> int:
    """Bytes of the experts that received at least one kept token (what decode really streams)."""
    p = config.preset
    return int((routing.kept_counts_E > 0).sum()) * 3 * p.H * p.F * elem_size


def _kernel_cases(config: Config, problem: Problem, name: str, impl: str, cf, y_ref_TH, role: str, copies, rotate):
    """One kernel (or baseline) on one routing, checked once against float64; (its timed case, the timed
    routing build)."""
    T, k = problem.ids_Tk.shape

    def make_routing():
        return kernels.routing_from_topk(
            problem.ids_Tk, problem.weights_Tk, config.preset.E, cf, block_size=config.block_size, validate=False
        )

    routing = make_routing()
    fn = kernels.get_kernel(name)
    y_TH, kstats = fn(problem.x_TH, routing, *problem.weights, impl=impl)
    error = _rel_err(y_TH, y_ref_TH)
    row = _row(
        config, problem, name, impl, cf, kstats.useful_flops,
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
    case = Case(row, lambda *weights: fn(problem.x_TH, routing, *weights, impl=impl), prepare=lambda: rotate(copies))
    return case, Case({}, make_routing)


def _graph_cases(config: Config, cases: list[Case], copies: list, rotate: roofline.Rotation, y_refs: dict) -> None:
    """--cuda-graph: each row timed as replays of graphs captured on the weight copies (bench.cuda_graph), its
    `timing` saying so or why it stays eager; a graphed row's call reads `calls` successive copies, so it moves
    the rotation past all of them (each copy still last touched a whole pass ago); a kernel row's replayed
    output is checked against the float64 reference like its eager call (`graph_rel_err`), and a wrong replay
    fails the row."""
    for case in cases:
        case.fn, output, case.row["timing"], case.calls = cuda_graph.graph_or_eager(case.fn, copies)
        case.prepare = lambda calls=case.calls: rotate(copies, calls)
        if output is None or case.row["role"] == "dense":
            continue
        y_TH = output[0] if isinstance(output, tuple) else output
        error = _rel_err(y_TH, y_refs[case.row["capacity_factor"]])
        case.row["graph_rel_err"] = error
        case.row["correct"] = bool(case.row["correct"]) and error <= TOLERANCE[config.dtype]


def _make_problem(config: Config, skew, T: int) -> Problem:
    p, dev = config.preset, config.device
    ids_Tk, weights_Tk = skews.sample_topk(skew, T, p.E, p.k, seed=config.seed)
    weights = workloads.make_expert_weights(p, config.dtype, dev, seed=config.seed)
    x_TH = workloads.make_tokens(T, p.H, config.dtype, dev, seed=config.seed)
    return Problem(skew, x_TH, ids_Tk.to(dev), weights_Tk.to(dev), weights)


def _capacity_factors(config: Config, name: str) -> list:
    """A dropless design runs once, without a capacity; a static-capacity one once per --capacity-factor."""
    return [None] if getattr(kernels.get_kernel(name), "dropless", False) else config.capacity_factors


def bench_tokens(config: Config, skew, T: int, roof) -> list[dict]:
    """All rows for one token count, timed interleaved on cold weights: dense, the baselines, then each kernel
    (per capacity factor where it has one); each with its roofline."""
    problem = _make_problem(config, skew, T)
    p = config.preset
    dropless = kernels.routing_from_topk(problem.ids_Tk, problem.weights_Tk, p.E, None)
    elem = problem.x_TH.element_size()
    active = _active_weight_bytes(config, dropless, elem)
    total = sum(w.numel() * w.element_size() for w in problem.weights)
    budget = options.available_memory_bytes() // 3
    n = 1 if config.warm else roofline.cold_copies(active, roof.llc_bytes, total + active, budget)
    rotate = roofline.Rotation(n)
    copies = [problem.weights] + [tuple(w.clone() for w in problem.weights) for _ in range(n - 1)]
    plan = [(name, "torch", cf, "baseline") for name in kernels.BASELINES for cf in _capacity_factors(config, name)]
    plan += [(name, config.impl, cf, "kernel") for name in config.kernels for cf in _capacity_factors(config, name)]
    y_refs = {}
    dense = _dense_case(config, problem, dropless, copies, rotate)
    rows_cases, routing_cases = [dense], []
    for name, impl, cf, role in plan:
        if cf not in y_refs:  # the float64 truth with the same drops
            routing = kernels.routing_from_topk(problem.ids_Tk, problem.weights_Tk, p.E, cf)
            y_refs[cf] = kernels.reference.moe_experts(problem.x_TH, routing, *problem.weights)
        case, routing_case = _kernel_cases(config, problem, name, impl, cf, y_refs[cf], role, copies, rotate)
        rows_cases.append(case)
        routing_cases.append(routing_case)
    if config.cuda_graph:
        _graph_cases(config, rows_cases, copies, rotate, y_refs)
    run_interleaved(None, rows_cases + routing_cases, config.iters, config.warmup, config.rounds, config.device,
                    config.budget_s)  # fmt: skip
    for case, routing_case in zip(rows_cases[1:], routing_cases):
        case.row["routing_us"] = routing_case.row["time_us"]
    rows = [c.row for c in rows_cases]
    for row in rows:
        time_s = row["time_us"] * 1e-6
        row["useful_tflops"] = row["useful_flops"] / time_s / 1e12
        row["weight_gbps"] = row["weight_bytes"] / time_s / 1e9
        row["roofline_us"] = roof.time_us(row["useful_flops"], row["weight_bytes"])
        row["roofline_frac"] = row["roofline_us"] / row["time_us"]
        row["weight_copies"] = n
        row["frac_dense"] = dense.row["time_us"] / row["time_us"]
    return rows


# ---------------------------------------------------------------------------------------------- report


def _table_row(row: dict) -> list:
    def opt(value, scale=1.0):
        return "-" if value is None else value * scale

    ok = "-" if row.get("correct") is None else ("yes" if row["correct"] else "NO")
    return [
        row["kernel"], row["impl"], row["tokens"], row["skew"], row["capacity_factor"] or "none",
        row["time_us"], row["p20_us"], row["p80_us"], opt(row.get("routing_us")), row["useful_tflops"],
        row["frac_dense"], opt(row.get("roofline_us")), opt(row.get("roofline_frac")), row["padding_waste"],
        row["dropped_pct"], row["weight_bytes"] / 1e6,
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
        drops = f" (drops {best['dropped_pct']:.1f}%)" if best["dropped_pct"] > 0 else ""
        parts = [f"fastest {_label(best)}{drops} {best['time_us']:.4g} µs, {best['frac_dense']:.2f}x dense throughput"]
        for b in (b for b in group if b["role"] == "baseline"):
            speedup = f"{b['time_us'] / best['time_us']:.2f}x faster than {_label(b)}"
            parts.append(f"ties with {_label(b)}" if ties(best, b) else speedup)
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


def graph_lines(rows: list[dict]) -> list[str]:
    """--cuda-graph: how many rows were timed as graph replays, and each row that stayed eager with why."""
    eager = [r for r in rows if r["timing"] != "cuda-graph"]
    lines = [f"CUDA graphs: {len(rows) - len(eager)} of {len(rows)} rows timed as graph replays"]
    lines += [f"T={r['tokens']} {_label(r)} {r['timing']}" for r in eager]
    return lines


def _title(config: Config) -> str:
    p = config.preset
    tiny = " [TINY: H, F scaled down]" if p.tiny else ""
    skews = ",".join(map(str, config.skews))
    return (f"expert kernels — {p.describe()}{tiny}, skew {skews}, {str(config.dtype).removeprefix('torch.')}, "
            f"{config.device.type}, impl {config.impl}")  # fmt: skip


def _caption(config: Config, roof) -> str:
    threads = f"{torch.get_num_threads()} torch threads" if config.device.type == "cpu" else "CUDA events"
    act = "" if config.preset.act == "swiglu" else f" (this preset's original expert is {config.preset.act})"
    return (
        f"{report.CONVENTIONS}; {threads}. Experts are SwiGLU{act}: 6*H*F FLOPs per kept (token, expert) pair. "
        "TFLOP/s = useful FLOPs / median; x dense = dense time / time; waste = executed / useful FLOPs; "
        "dense = the same kept rows through the same active experts as one batched GEMM chain (bmm over the experts "
        "that got rows, each padded to the busiest) on the kernels' own weight copies, into preallocated buffers; "
        "roofline = max(useful FLOPs / GEMM rate, active weight bytes / read bandwidth), both measured in this run "
        f"(read {roof.read_gbps:.1f} GB/s: a sum over >= 3x the {roof.llc_bytes / 2**20:.0f} MiB last-level cache; "
        f"GEMM {roof.gemm_tflops * 1e3:.0f} GFLOP/s at 1024^3), roof frac = roofline / median. Cold weights: every "
        "call reads the next of `weight_copies` copies (their active parts > 3x the cache; --warm-weights: one). "
        "Rows of one token count run interleaved over rounds. "
        + (
            "Timed as CUDA graph replays (--cuda-graph: one graph per weight copy, captured after warm-up; the "
            "replay's output checked too; JSON `timing` says cuda-graph, or eager and why). "
            if config.cuda_graph
            else ""
        )
        + f"baselines: {', '.join(kernels.BASELINES)} (loop = the per-expert Python loop). "
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
    p = config.preset
    roof = roofline.measure_roofline(config.dtype, config.device, 3 * p.E * p.H * p.F * 4)
    rows = []
    for skew in config.skews:
        for T in config.tokens:
            rows += bench_tokens(config, skew, T, roof)
    title, caption = _title(config), _caption(config, roof)
    table = [_table_row(row) for row in rows]
    report.print_table(title, COLUMNS, table, caption)
    lines = summary_lines(rows) + (graph_lines(rows) if config.cuda_graph else [])
    for line in lines:
        report.console.print(line)
    meta = report.base_meta("kernels", sys.argv) | {
        "tag": args.tag, "model": config.preset.name, "skew": ",".join(map(str, config.skews)), "impl": config.impl,
        "dtype": str(config.dtype).removeprefix("torch."), "device": config.device.type,
        "torch_threads": torch.get_num_threads(), "summary": lines, "roofline": roof.fields(),
        "warm_weights": config.warm, "iters": config.iters, "rounds": config.rounds, "budget_s": config.budget_s,
    }  # fmt: skip
    markdown = f"## {title}\n\n" + report.rows_to_markdown(COLUMNS, table, caption)
    markdown += "\n" + "".join(f"- {line}\n" for line in lines)
    report.emit(args, meta, rows, markdown)
    return report.exit_status(rows)
