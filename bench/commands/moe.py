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

from moebench.bench import options, plots, report, roofline, timing
from moebench.bench.cli import open_comm
from moebench.bench.layer import forward as moe
from moebench.bench.layer import traces
from moebench.bench.layer.overlap import parse_overlap, pipeline
from moebench.bench.layer.placements import PLACEMENTS, check_placements, fit_placement, redundant_for
from moebench.bench.layer.presets import Preset, get_preset
from moebench.bench.layer.skews import Skew, varies_by_batch
from moebench.bench.layer.workloads import make_tokens, spread_batch_sizes
from moebench.bench.timing import Case
from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE
from moebench.collectives import schedule as sched
from moebench.kernels import BASELINES, EXPERT_KERNELS
from moebench.kernels.routers import parse_routers

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
PHASE_SUM_TOLERANCE = 0.02  # phases (critical rank, median band) must sum to the median total within 2%
NO_OVERLAP = parse_overlap("none")  # the sequential layer's schedule (the pair's own)
BASELINE_ALGO = "native"  # the baselines run over the backend's own all-to-all
DEFAULT_ALGOS = [*ALGORITHMS, *(f"{pair}:{moe.default_inner(pair)}" for pair in DISPATCH_COMBINE if pair != "plain")]


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
    options.add_batch_spread(p)
    options.add_routers(p, "topk")
    options.add_placements(p, ["contiguous"])
    p.add_argument("--overlap", type=options.str_list, default=["none"],
                   help="communication-computation overlap modes: none, chunks:C (C chunks pipelined), dual (two "
                   "micro-batches); overlap runs plain, dedup, fp8, fp8-dedup over native, dropless")  # fmt: skip
    p.add_argument("--shared-experts", type=int, default=0, metavar="N",
                   help="N shared experts (a dense SwiGLU of N*F columns on every token, every rank; DeepSeek-V3 "
                   "has 1); with overlap they run while the first dispatch is in flight")  # fmt: skip
    options.add_launch(p)
    options.add_dtype(p, "auto")
    options.add_iterations(p, iters=100, warmup=3)
    p.add_argument("--warm-weights", action="store_true",
                   help="time every call on one weight copy (cache-warm); default: rotate copies (cold)")  # fmt: skip
    p.add_argument("--record-trace", default=None, metavar="FILE",
                   help="write the gate's routing of the first workload (one step per batch) as a trace")  # fmt: skip
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
    rounds: int = 5
    budget_s: float | None = None
    warm: bool = False
    routers: tuple = (None,)  # None: the gate as trained (topk) on its fast paths
    placements: tuple[str, ...] = ("contiguous",)
    redundant: int = 0
    batch_spread: float = 0.0
    overlaps: tuple = (None,)  # None: the sequential layer; else bench.layer.overlap.Overlap
    shared: int = 0  # shared experts


def validate(args) -> Config:
    """Every check that needs no communication, identical on every rank: ValueError on bad input."""
    P = options.launch_size()
    preset = get_preset(args.model)
    if preset.E % P:
        raise ValueError(f"{preset.name} has E={preset.E} experts, not divisible by P={P} ranks")
    options.check_batch(args)
    options.check_batch_spread(args)
    options.check_launch(args)
    if not args.algos:
        raise ValueError("--algos needs at least one configuration")
    algos = [moe.parse_algo(a) for a in args.algos]
    options.check_names(args.kernels, EXPERT_KERNELS, "kernel")
    options.check_iterations(args)
    options.check_skews(args)
    if not args.capacity_factor:
        raise ValueError("--capacity-factor needs at least one value")
    parsed = parse_routers(args.routers, preset.E, preset.k, preset.groups, preset.topk_groups, preset.name)
    routers = tuple(None if router.kind == "topk" else router for router in parsed)  # None: the gate's fast paths
    options.check_names(args.placements, PLACEMENTS, "placement")
    R = args.redundant or 0
    check_placements(args.placements, preset.E, P, args.ranks_per_node or P, R)
    if R and not any(PLACEMENTS[name].replicates for name in args.placements):
        raise ValueError(f"--redundant {R}: none of the placements {', '.join(args.placements)} holds replicas")
    if args.shared_experts < 0:
        raise ValueError(f"--shared-experts must be >= 0 (got {args.shared_experts})")
    if not args.overlap:
        raise ValueError("--overlap needs at least one mode")
    overlaps = tuple(None if o.name == "none" else o for o in map(parse_overlap, args.overlap))
    if any(overlaps) and args.batch_spread:
        raise ValueError("--overlap cuts every rank's batch into the same number of chunks: it needs equal batches "
                         "(drop --batch-spread)")  # fmt: skip
    for overlap in overlaps:
        if overlap is not None and not any(pipelinable(a, overlap, cf) for a in algos for cf in args.capacity_factor):
            raise ValueError(f"--overlap {overlap.name} pipelines the plain, dedup, fp8 and fp8-dedup pairs over "
                             f"native, dropless: none of --algos / --capacity-factor qualifies")  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Config(preset, args.batch, algos, args.kernels, args.impl, args.skew, args.capacity_factor,
                  options.resolve_dtype(args.dtype, device), args.iters, args.warmup, args.seed, args.tp, args.rounds,
                  options.budget_seconds(args), args.warm_weights, routers, tuple(args.placements), R,
                  args.batch_spread, overlaps, args.shared_experts)  # fmt: skip


def pipelinable(algo: tuple[str, str], overlap, cf) -> bool:
    """Whether (pair, inner) at capacity factor cf runs under the overlap mode (None: always)."""
    return overlap is None or pipeline.runs(DISPATCH_COMBINE[algo[0]], algo[1], cf)


# ---------------------------------------------------------------------------------------------- one config


@dataclass(frozen=True)
class Workload:
    """This rank's tokens for one (skew, capacity factor, batch) and the reference output."""

    skew: Skew
    capacity_factor: float | None
    T: int  # the batch named (tokens per rank; each TP group's own under --batch-spread: group_tokens)
    x_TH: torch.Tensor
    forced: list  # one forced routing per iteration (shift moves between batches), or [None]
    y_ref_TH: dict  # router (None: the gate) -> the float64 reference output of this rank's tokens
    group_tokens: tuple[int, ...] = ()  # tokens of every TP group, in group order
    first_id: int = 0  # global id of this rank's first token

    @property
    def total_tokens(self) -> int:
        return sum(self.group_tokens)


def make_workload(comm, cfg: Config, skew: Skew, cf, T: int) -> Workload:
    """Tokens shared inside each TP group (as after a TP attention block), seeded by TP group."""
    group_seed = cfg.seed * 1000 + comm.rank // comm.tp.size
    group, layout = comm.rank // comm.tp.size, (comm.world_size, comm.topology.ranks_per_node)
    sizes = spread_batch_sizes(T, cfg.batch_spread, comm.world_size // comm.tp.size, cfg.seed)
    mine, first_id = sizes[group], sum(sizes[:group])
    x_TH = make_tokens(mine, cfg.preset.H, cfg.dtype, "cpu", seed=group_seed)
    batches = range(cfg.iters + cfg.warmup) if varies_by_batch(skew) else [0]
    # one expert popularity for the whole cluster (cfg.seed); each TP group draws its own tokens (part = group)
    forced = [moe.forced_routing(skew, mine, cfg.preset, cfg.seed, b, group, layout, first_id) for b in batches]
    part = moe.rank_part(comm)
    y_ref_TH = {router: moe.reference_forward(x_TH, cfg.preset, cf, cfg.seed, forced[0], router, first_id, part,
                                              cfg.shared) for router in cfg.routers}  # fmt: skip
    for codec in {DISPATCH_COMBINE[pair].codec for pair, _ in cfg.algos if not DISPATCH_COMBINE[pair].codec.exact}:
        x_q = codec.reference(x_TH).to(x_TH.dtype)  # the values a correct encode + decode gives
        for router in cfg.routers:
            y_ref_TH[router, codec.name] = moe.reference_forward(x_TH, cfg.preset, cf, cfg.seed, forced[0], router,
                                                                 first_id, part, cfg.shared, x_q)  # fmt: skip
    return Workload(skew, cf, T, x_TH.to(comm.device), forced, y_ref_TH, tuple(sizes), first_id)


class TraceRecorder:
    """--record-trace: the gate's routing (topk, as trained) of the run's first workload, one step per batch
    size, every TP group's tokens in group order; rank 0 writes it."""

    def __init__(self):
        self.steps_ids, self.steps_weights, self.skew = [], [], ""

    def add(self, comm, cfg: Config, work: Workload, weights) -> None:
        layer = moe.LayerConfig(cfg.preset, "plain", "flat", "loop", capacity_factor=None)
        routing = moe.gate(work.x_TH, weights, layer, work.forced[0], work.first_id)
        mine = (routing.topk_ids_Tk.cpu().tolist(), routing.topk_weights_Tk.cpu().tolist())
        groups = comm.allgather_object(mine)[:: comm.tp.size]
        self.steps_ids.append(torch.tensor([row for ids, _ in groups for row in ids], dtype=torch.int64))
        self.steps_weights.append(torch.tensor([row for _, w in groups for row in w], dtype=torch.float32))
        self.skew = str(work.skew)

    def write(self, path: str, preset: Preset, argv: list[str]) -> None:
        source = f"moebench moe, the gate on workload {self.skew}, one step per batch size: {' '.join(argv)}"
        document = traces.trace_document(self.steps_ids, self.steps_weights, preset.E, preset.k, preset.name, source)
        traces.write_trace(path, document)
        report.console.print(f"wrote trace {path}")


def rel_error(y_TH: torch.Tensor, ref_TH: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in float64 (0 when both are zero)."""
    diff = torch.linalg.vector_norm(y_TH.double().cpu() - ref_TH)
    norm = torch.linalg.vector_norm(ref_TH)
    return float(diff / norm) if norm > 0 else float(diff)


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux: `5` into /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """VmHWM: the peak resident set since the last reset_peak_rss (else the process lifetime), MB = 1e6 B."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def weight_copies(comm, cfg: Config, weights, dense_w, warm: bool) -> tuple[list, list | None, roofline.Rotation, int]:
    """(expert weight copies, dense-equivalent copies, their rotation, LLC bytes): enough copies that the k
    experts a token reads, over the copies, exceed 3x the last-level cache (all ranks share it), within half
    the memory available; one copy with --warm-weights."""
    p = cfg.preset
    llc = roofline.last_level_cache_bytes(comm.device)
    elem = torch.finfo(cfg.dtype).bits // 8
    active = p.k * 3 * p.H * p.F * elem  # the least a rank's experts stream at batch 1: the dense-equivalent's bytes
    local_bytes = sum(w.numel() * w.element_size() for w in weights.experts)
    budget = options.available_memory_bytes() // (2 * comm.world_size)
    n = 1 if warm else roofline.cold_copies(active, llc, local_bytes + active, budget)
    experts, dense = [weights], None if dense_w is None else [dense_w]
    for _ in range(n - 1):  # allocated in turns: on this VM buffers allocated at different times read at
        experts.append(  # different speeds (up to 1.3x), so each side's copies spread over the same memory
            moe.MoeWeights(
                weights.w_router_HE,
                *(w.clone() for w in weights.experts),
                weights.first_expert,
                None if weights.shared is None else tuple(w.clone() for w in weights.shared),
            )
        )
        if dense is not None:
            dense.append(tuple(w.clone() for w in dense_w))
    return experts, dense, roofline.Rotation(n), llc


def checked_layer(comm, cfg: Config, work: Workload, weights, layer: moe.LayerConfig, role: str):
    """One forward checked against the reference: the row's correctness, load and memory fields (collective)."""
    info = moe.ForwardInfo()
    reset_peak_rss()
    y_TH = moe.run_layer(comm, work.x_TH, weights, layer, lambda: None, work.forced[0], info, work.first_id)
    rss = peak_rss_mb()
    error = rel_error(y_TH, work.y_ref_TH[layer.router])
    stats = info.stats
    per_rank = comm.allgather_object(
        {
            "recv_rows": info.recv_rows,
            "expert_counts": info.routing.kept_counts_E.cpu().tolist(),
            "dropped": int(info.routing.num_dropped),
            "useful": stats.useful_flops,
            "executed": stats.executed_flops,
            "active_experts": info.active_experts,
            "kernel_peak_mb": stats.peak_extra_bytes / 1e6,
            "rss_mb": rss,
            "error": error,
            "send_splits": [int(n) for n in np.sum(info.chunk_splits, axis=0)],
            "chunk_splits": [list(c) for c in info.chunk_splits],
            "dispatch_wire_bytes": info.dispatch_wire_bytes,
            "combine_wire_bytes": info.combine_wire_bytes,
            "gate_mass": moe.gate_mass(moe.gate_logits(work.x_TH, weights, work.forced[0]), info.routing, cfg.preset.k),
        }
    )
    row = {"algo": layer.label, "pair": layer.pair_name, "inner": layer.inner, "kernel": layer.kernel, "role": role,
           "overlap": layer.overlap_name, "shared_experts": cfg.shared, "router": str(layer.router or "topk"),
           "placement": layer.placement.name if layer.placement else "contiguous",
           "redundant": layer.placement.redundant if layer.placement else 0,
           "gate_mass": float(np.mean([r["gate_mass"] for r in per_rank[:: cfg.tp]])),
           **wire_fields(comm, cfg, layer, per_rank), **load_fields(cfg, work, per_rank)}  # fmt: skip
    codec, tolerance = layer.pair.codec, TOLERANCE[cfg.dtype]
    if codec.exact:
        row.update(check_error=row["rel_error"], error_bound=tolerance)
    else:  # checked against the reference on the quantized values; the error against the exact one is reported
        checked = comm.allgather_object(rel_error(y_TH, work.y_ref_TH[layer.router, codec.name]))
        row.update(check_error=max(checked), error_bound=tolerance + codec.combine_error_bound,
                   quantization_bound=tolerance + codec.rel_error_bound)  # fmt: skip
    within = row["rel_error"] <= row.get("quantization_bound", row["error_bound"])
    row["correct"] = row["check_error"] <= row["error_bound"] and within and row["bytes_match"]
    return row, per_rank, info


def wire_fields(comm, cfg: Config, layer: moe.LayerConfig, per_rank: list[dict]) -> dict:
    """The busiest rank's dispatch and combine wire bytes as counted, as the schedule (the pair's, or the overlap
    mode's over its chunks) predicts them at the same splits and row bytes (the dispatch alone: the schedule with
    0-byte combine rows), and whether every rank's counted bytes equal the prediction."""
    chunks = np.array([r["chunk_splits"] for r in per_rank], dtype=np.int64).transpose(1, 0, 2)  # [C, P, P]
    out_bytes, back_bytes = moe.row_bytes(layer, cfg.dtype)
    inner, topo, cap = ALGORITHMS[layer.inner], comm.topology, layer.max_rows
    schedule = (layer.overlap or NO_OVERLAP).schedule
    dispatch = sched.traffic(schedule(layer.pair, inner, chunks, out_bytes, 0, topo, cap), topo)[:, :2].sum(axis=1)
    both = sched.traffic(schedule(layer.pair, inner, chunks, out_bytes, back_bytes, topo, cap), topo)[:, :2]
    combine = both.sum(axis=1) - dispatch
    counted_dispatch = np.array([r["dispatch_wire_bytes"] for r in per_rank])
    counted_combine = np.array([r["combine_wire_bytes"] for r in per_rank])
    return {"dispatch_bytes": int(counted_dispatch.max()), "combine_bytes": int(counted_combine.max()),
            "dispatch_bytes_predicted": int(dispatch.max()), "combine_bytes_predicted": int(combine.max()),
            "dispatch_row_bytes": out_bytes, "combine_row_bytes": back_bytes,
            "bytes_match": bool(np.array_equal(counted_dispatch, dispatch)
                                and np.array_equal(counted_combine, combine))}  # fmt: skip


def load_fields(cfg: Config, work: Workload, per_rank: list[dict]) -> dict:
    L = cfg.tp
    rows = np.array([r["recv_rows"] for r in per_rank], dtype=np.float64)
    # Tokens are duplicated inside TP groups: count each group's routing once.
    experts = np.sum([r["expert_counts"] for r in per_rank[::L]], axis=0).astype(np.float64)
    useful, executed = sum(r["useful"] for r in per_rank), sum(r["executed"] for r in per_rank)
    error = max(r["error"] for r in per_rank)
    return {
        "imbalance_rank": float(rows.max() / rows.mean()) if rows.mean() else 1.0,
        "imbalance_expert": float(experts.max() / experts.mean()) if experts.mean() else 1.0,
        "padding_waste": executed / useful if useful else 1.0,
        "dropped_pct": 100.0 * sum(r["dropped"] for r in per_rank[::L]) / (work.total_tokens * cfg.preset.k),
        "kernel_peak_mb": max(r["kernel_peak_mb"] for r in per_rank),
        "peak_rss_mb": max(r["rss_mb"] for r in per_rank),
        "rel_error": error,
    }


def layer_case(comm, work: Workload, copies: list, rotate: roofline.Rotation, layer: moe.LayerConfig, row: dict):
    """The timed forward of one configuration, phase by phase, each call on the next weight copy."""
    forced = itertools.cycle(work.forced)
    fn = lambda mark, weights, routing: moe.run_layer(comm, work.x_TH, weights, layer, mark, routing, None,
                                                      work.first_id)  # fmt: skip
    return Case(row, fn, phases=moe.PHASES, prepare=lambda: (rotate(copies), next(forced)))


def dense_case(work: Workload, copies: list, rotate: roofline.Rotation, row: dict) -> Case:
    """dense-equivalent: the same tokens through one dense SwiGLU FFN with the active parameter count; its
    time is all `experts` (the other phases are marked empty)."""

    def fn(mark, weights):
        for phase in moe.PHASES:
            if phase == "experts":
                moe.dense_forward(work.x_TH, *weights)
            mark()

    return Case(row, fn, phases=moe.PHASES, prepare=lambda: (rotate(copies),))


def floor_cases(comm, per_rank: list[dict], row_bytes: tuple[int, int]) -> list[Case]:
    """The backend's all-to-all-v on prebuilt arguments at the dispatch's splits and row bytes and at the
    combine's (the reverse): what the exchanges cost at least, for the layer's roofline."""
    splits = np.array([r["send_splits"] for r in per_rank], dtype=np.int64)
    me = comm.rank
    out = []
    directions = (("dispatch", splits[me], splits[:, me], row_bytes[0]),
                  ("combine", splits[:, me], splits[me], row_bytes[1]))  # fmt: skip
    for name, send_splits, recv_splits, width in directions:
        send = torch.zeros(int(send_splits.sum()), width, dtype=torch.uint8, device=comm.device)
        fn = comm.world.prepared_alltoallv(send, [int(n) for n in send_splits], [int(n) for n in recv_splits])
        out.append(Case({"floor": name}, fn))
    return out


def floor_key(row: dict, per_rank: list[dict]) -> tuple:
    """Configurations that move the same rows of the same widths share their floor."""
    return (row["dispatch_row_bytes"], row["combine_row_bytes"], *(tuple(r["send_splits"]) for r in per_rank))


def layer_roofline(cfg: Config, roof, per_rank: list[dict], T: int, floor_us: float) -> float:
    """Least time of the layer: the router GEMM, the critical rank's experts (active weights or FLOPs), the shared
    experts, and the floor all-to-alls at the dispatch's and combine's bytes."""
    p, elem, N = cfg.preset, torch.finfo(cfg.dtype).bits // 8, cfg.shared
    gate = roof.time_us(2 * T * p.H * p.E, p.H * p.E * elem)
    experts = max(roof.time_us(r["useful"], r["active_experts"] * 3 * p.H * p.F * elem) for r in per_rank)
    shared = roof.time_us(6 * T * p.H * N * p.F, 3 * p.H * N * p.F * elem) if N else 0.0  # every rank runs them
    return gate + experts + shared + floor_us


def dense_row(cfg: Config, roof, T: int) -> dict:
    p, elem, width = cfg.preset, torch.finfo(cfg.dtype).bits // 8, (cfg.preset.k + cfg.shared) * cfg.preset.F
    flops, nbytes = 6 * T * p.H * width, 3 * p.H * width * elem
    return {
        "algo": "dense-equivalent", "kernel": "dense", "role": "dense", "imbalance_rank": 1.0,
        "imbalance_expert": 1.0, "padding_waste": 1.0, "dropped_pct": 0.0, "kernel_peak_mb": 0.0,
        "peak_rss_mb": None, "rel_error": None, "correct": None, "roofline_us": roof.time_us(flops, nbytes),
    }  # fmt: skip


def fit_layer_placement(comm, cfg: Config, work: Workload, weights, router, name: str):
    """None for contiguous (the layer's own layout); else the placement fit on the load of the timed batches
    themselves (every TP group's kept assignments per expert under this router, summed per node: the staleness
    of a fit on other batches is `moebench balance`'s question)."""
    if name == "contiguous":
        return None
    p, P, G, L = cfg.preset, comm.world_size, comm.topology.ranks_per_node, comm.tp.size
    layer = moe.LayerConfig(p, "plain", "flat", "loop", capacity_factor=work.capacity_factor, router=router)
    counts_E = torch.zeros(p.E, dtype=torch.float64)
    for forced in work.forced:
        routing = moe.gate(work.x_TH, weights, layer, forced, work.first_id, moe.rank_part(comm))
        counts_E += routing.kept_counts_E.cpu().double()
    load_NE = torch.zeros(P // G, p.E, dtype=torch.float64)
    for rank, counts in enumerate(comm.allgather_object(counts_E.tolist())):
        if rank % L == 0:  # tokens are duplicated inside a TP group: count each group once
            load_NE[rank // G] += torch.tensor(counts, dtype=torch.float64)
    return fit_placement(name, load_NE, P, G, redundant_for(name, cfg.redundant), p.groups)


def policy_weights(comm, cfg: Config, work: Workload, weights, warm: bool, contiguous: tuple):
    """Per (router, placement) of the run: (router, placement or None, its weight copies, their rotation); the
    contiguous layout reuses `contiguous` = (copies, rotation) of the layer's own weights."""
    out = []
    for router in cfg.routers:
        for name in cfg.placements:
            placement = fit_layer_placement(comm, cfg, work, weights, router, name)
            if placement is None:
                out.append((router, None, *contiguous))
                continue
            held = placement.experts_P[comm.rank]
            mine = moe.make_weights(cfg.preset, cfg.dtype, comm.device, cfg.seed, held=held, shared=cfg.shared)
            copies, _, rotate, _ = weight_copies(comm, cfg, mine, None, warm)
            out.append((router, placement, copies, rotate))
    return out


def bench_batch(comm, cfg: Config, work: Workload, weights, roof, warm: bool) -> list[dict]:
    """Every configuration, the baselines and the dense-equivalent at one (skew, cf, batch): each checked once,
    then all timed interleaved (phases from the critical rank of each iteration), cold weights unless warm."""
    dense_w = moe.dense_equivalent_weights(cfg.preset, cfg.dtype, comm.device, cfg.seed, cfg.shared)
    copies, dense_copies, rotate, _ = weight_copies(comm, cfg, weights, dense_w, warm)
    timed, checks = [], []
    for router, placement, policy_copies, policy_rotate in policy_weights(comm, cfg, work, weights, warm,
                                                                         (copies, rotate)):  # fmt: skip
        max_rows = max(work.group_tokens) * cfg.preset.k
        for layer, role in layer_configs(cfg, work.capacity_factor, router, placement, max_rows):
            row, per_rank, _ = checked_layer(comm, cfg, work, policy_copies[0], layer, role)
            timed.append(layer_case(comm, work, policy_copies, policy_rotate, layer, row))
            checks.append(per_rank)
    floors = {}  # floor_key -> its two floor cases (the same on every rank: keys come from allgathered fields)
    for case, per_rank in zip(timed, checks):
        key = floor_key(case.row, per_rank)
        if key not in floors:
            floors[key] = floor_cases(comm, per_rank, (case.row["dispatch_row_bytes"], case.row["combine_row_bytes"]))
    dense = dense_case(work, dense_copies, rotate, dense_row(cfg, roof, max(work.group_tokens)))
    timed_all = [*timed, dense, *(c for pair in floors.values() for c in pair)]
    timing.run_interleaved(comm, timed_all, cfg.iters, cfg.warmup, cfg.rounds, comm.device, cfg.budget_s)
    for case, per_rank in zip(timed, checks):
        floor_us = sum(c.row["time_us"] for c in floors[floor_key(case.row, per_rank)])
        case.row["floor_a2a_us"] = floor_us
        case.row["roofline_us"] = layer_roofline(cfg, roof, per_rank, max(work.group_tokens), floor_us)
    rows = [c.row for c in (*timed, dense)]
    for row in rows:
        row["roofline_frac"] = row["roofline_us"] / row["time_us"]
        row["total_us"] = row["time_us"]
        row["phases_add_up"] = abs(row["phase_sum_us"] - row["time_us"]) <= PHASE_SUM_TOLERANCE * row["time_us"]
        row["weight_copies"] = rotate.n
    return rows


def layer_configs(cfg: Config, cf, router=None, placement=None, max_rows=None) -> list[tuple[moe.LayerConfig, str]]:
    """Every overlap mode x (pair, inner) x kernel of the run under one router and placement (an overlap mode
    with the pairs it pipelines only); under the gate as trained and the contiguous layout, then each baseline
    over the native all-to-all. max_rows: the most rows any rank sends (the busiest TP group's tokens x k)."""
    configs = [
        (moe.LayerConfig(cfg.preset, pair, inner, kernel, cfg.impl, cf, router, placement, max_rows, overlap),
         "config")
        for overlap in cfg.overlaps
        for pair, inner in cfg.algos
        if pipelinable((pair, inner), overlap, cf)
        for kernel in cfg.kernels
    ]  # fmt: skip
    if router is not None or placement is not None:
        return configs
    return configs + [
        (moe.LayerConfig(cfg.preset, "plain", BASELINE_ALGO, name, "torch", cf, max_rows=max_rows), "baseline")
        for name in BASELINES
    ]


# ---------------------------------------------------------------------------------------------- output

COLUMNS = [
    "batch", "algo", "kernel", "router", "placement", "skew", "cf", *moe.PHASES, "total", "p20", "p80", "p99",
    "Σ/total", "roofline", "roof frac", "tok/s", "imb rank", "imb expert", "pad waste", "drop %", "kernel MB",
    "rss MB", "rel err", "ok",
]  # fmt: skip


def _opt(value, fmt="{:.1f}"):
    return "-" if value is None else fmt.format(value)


def _algo_label(r: dict) -> str:
    """The row's algo, with its overlap mode when it has one: `native (chunks:2)`."""
    overlap = r.get("overlap", "none")
    return r["algo"] if overlap in ("none", None) else f"{r['algo']} ({overlap})"


def table_rows(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        ok = "-" if r["correct"] is None else ("yes" if r["correct"] else "NO")
        sums = r.get("phase_sum_us")
        out.append(
            [
                r["batch"], _algo_label(r), r["kernel"], r.get("router", "topk"), _placement_label(r), r["skew"],
                r["capacity_factor"] or "none",
                *(r.get(f"{p}_us", "") for p in moe.PHASES),
                r["total_us"], r.get("p20_us", "-"), r.get("p80_us", "-"), r["p99_us"],
                "-" if sums is None else f"{sums / r['total_us']:.3f}",
                _opt(r.get("roofline_us")), _opt(r.get("roofline_frac"), "{:.2f}"),
                r["tokens_per_s"], r["imbalance_rank"], r["imbalance_expert"], r["padding_waste"], r["dropped_pct"],
                r["kernel_peak_mb"], _opt(r["peak_rss_mb"]), _opt(r["rel_error"], "{:.1e}"), ok,
            ]
        )  # fmt: skip
    return out


def _placement_label(r: dict) -> str:
    name = r.get("placement", "contiguous")
    return f"{name} R={r['redundant']}" if r.get("redundant") else name


def _default_policy(r: dict) -> bool:
    """The gate as trained, experts in the contiguous layout (the rows the best-configuration summary ranks)."""
    return r.get("router", "topk") == "topk" and r.get("placement", "contiguous") == "contiguous"


def _twin(rows: list[dict], r: dict, **fields) -> dict | None:
    """The topk + contiguous row with r's skew, cf, batch, algo and kernel (`fields` overriding r's values)."""
    want = {key: r.get(key, "none") for key in ("skew", "capacity_factor", "batch", "algo", "kernel", "overlap")}
    want |= fields
    return next((b for b in rows if b["role"] == "config" and _default_policy(b)
                 and all(b.get(key, "none") == value for key, value in want.items())), None)  # fmt: skip


def _versus(a: dict, b: dict) -> str:
    """b's time / a's, or `tie` when the difference is inside the spread (timing.ties)."""
    if "p20_us" in a and "p20_us" in b and timing.ties(a, b):
        return "tie"
    return f"{b['total_us'] / a['total_us']:.2f}x"


def summary(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Per (skew, cf, batch): the fastest correct configuration, the others it ties with (timing.ties), its
    speedup over the baseline and its ratio to the dense-equivalent (or `tie`), roofline fraction and the
    dominant phase's share of the total."""
    columns = ["batch", "skew", "cf", "best config", "ties with", "total", "baseline", "vs baseline", "dense-equiv",
               "x dense", "non-expert / dense", "roof frac", "dominant phase"]  # fmt: skip
    out = []
    for key, group in itertools.groupby(rows, key=lambda r: (r["skew"], r["capacity_factor"], r["batch"])):
        group = list(group)
        candidates = [r for r in group if r["role"] == "config" and r["correct"] and _default_policy(r)]
        baseline = next((r for r in group if r["role"] == "baseline"), None)
        dense = next((r for r in group if r["role"] == "dense"), None)
        if not candidates:
            continue
        best = min(candidates, key=lambda r: r["total_us"])
        tied = [r for r in candidates if r is not best and _versus(best, r) == "tie"]
        dominant = max(moe.PHASES, key=lambda p: best.get(f"{p}_us", 0.0))
        non_expert = sum(best.get(f"{p}_us", 0.0) for p in moe.PHASES if p != "experts")
        out.append(
            [
                key[2], key[0], key[1] or "none", f"{_algo_label(best)} + {best['kernel']}", len(tied),
                best["total_us"],
                f"{baseline['algo']} + {baseline['kernel']}" if baseline else "",
                _versus(best, baseline) if baseline else "",
                dense["total_us"] if dense else "",
                f"{best['total_us'] / dense['total_us']:.2f}x" if dense else "",
                f"{non_expert / dense['total_us']:.2f}x" if dense else "",
                _opt(best.get("roofline_frac"), "{:.2f}"),
                f"{dominant} ({best[f'{dominant}_us'] / best['total_us']:.0%})",
            ]
        )  # fmt: skip
    return columns, out


def policy_summary(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Each router / placement row beside the same algo + kernel under topk + contiguous: layer time (ratio, or
    `tie`), the busiest rank's dispatch bytes, rank imbalance, drops and the gate mass kept."""
    columns = ["batch", "skew", "cf", "config", "router", "placement", "total", "vs topk+contiguous",
               "dispatch KB", "vs topk", "imb rank", "drop %", "gate mass", "rel err"]  # fmt: skip
    out = []
    for r in rows:
        if r["role"] != "config" or _default_policy(r):
            continue
        base = _twin(rows, r)
        if base is None:
            continue
        bytes_ratio = f"{r['dispatch_bytes'] / base['dispatch_bytes']:.2f}x" if base["dispatch_bytes"] else "-"
        out.append([r["batch"], r["skew"], r["capacity_factor"] or "none", f"{_algo_label(r)} + {r['kernel']}",
                    r["router"], _placement_label(r), r["total_us"], _versus(r, base), r["dispatch_bytes"] / 1e3,
                    bytes_ratio, r["imbalance_rank"], r["dropped_pct"], r["gate_mass"],
                    _opt(r["rel_error"], "{:.1e}")])  # fmt: skip
    return columns, out


def add_overlap_efficiency(rows: list[dict]) -> None:
    """Each overlapped row against the same configuration without overlap (timed in the same run): t_comm = that
    row's dispatch + combine phases, t_comp = the rest of its total; efficiency = (t_comm + t_comp - t_both) /
    min(t_comm, t_comp): 1 when the smaller part is wholly hidden, 0 when nothing is, < 0 when overlapping costs.
    Round by round (both rows ran interleaved, round r of each at the same time): (sequential's median of round r -
    the overlapped row's) / min(t_comm, t_comp), the spread the one figure hides (t_comm + t_comp is the sequential
    total: the phases add up)."""
    for r in rows:
        if r["role"] != "config" or r.get("overlap", "none") == "none":
            continue
        same = ("skew", "capacity_factor", "batch", "algo", "kernel", "router", "placement", "redundant")
        base = next((b for b in rows if b["role"] == "config" and b.get("overlap", "none") == "none"
                     and all(b.get(key) == r.get(key) for key in same)), None)  # fmt: skip
        if base is None:
            continue
        t_comm = base["dispatch_us"] + base["combine_us"]
        t_comp = base["total_us"] - t_comm
        hidden = max(min(t_comm, t_comp), 1e-9)
        model = overlap_model_us(base, parse_overlap(r["overlap"]).chunks)
        seq_R, both_R = base.get("round_medians_us"), r.get("round_medians_us")
        rounds = [(a - b) / hidden for a, b in zip(seq_R, both_R)] if seq_R and len(seq_R) == len(both_R or []) else []
        r.update(t_comm_us=t_comm, t_comp_us=t_comp, t_sequential_us=base["total_us"], overlap_efficiency_rounds=rounds,
                 overlap_efficiency=(t_comm + t_comp - r["total_us"]) / hidden, overlap_tie=timing.ties(base, r),
                 model_us=model, model_efficiency=(t_comm + t_comp - model) / hidden)  # fmt: skip


def overlap_model_us(base: dict, C: int) -> float:
    """The pipeline model (pipeline.predicted_layer_us) on the sequential row's measured phases: gate, quantize
    and permute before, unpermute after; dispatch and combine, and dequantize + experts, cut evenly into C
    chunks; the shared experts half while chunk 0's dispatch flies, half after the last combine is issued (as
    the pipeline runs them). What overlap would give if communication progressed while the experts run."""
    phase = {p: base.get(f"{p}_us", 0.0) for p in moe.PHASES}
    before, after = phase["gate"] + phase["quantize"] + phase["permute"], phase["unpermute"]
    chunks = [0.0, *[phase["dispatch"] / C] * C, *[phase["combine"] / C] * C]
    compute = [(phase["dequantize"] + phase["experts"]) / C] * C
    return before + pipeline.predicted_layer_us(chunks, compute, phase["shared"] / 2, phase["shared"] / 2) + after


def overlap_summary(rows: list[dict]) -> tuple[list[str], list[list]]:
    columns = ["batch", "skew", "config", "overlap", "t_comm µs", "t_comp µs", "sequential µs", "overlapped µs",
               "vs sequential", "efficiency", "by round", "model µs", "model eff"]  # fmt: skip
    out = [[r["batch"], r["skew"], f"{r['algo']} + {r['kernel']}", r["overlap"], r["t_comm_us"], r["t_comp_us"],
            r["t_sequential_us"], r["total_us"], "tie" if r["overlap_tie"] else
            f"{r['t_sequential_us'] / r['total_us']:.2f}x", f"{r['overlap_efficiency']:.2f}",
            _round_range(r["overlap_efficiency_rounds"]), r["model_us"], f"{r['model_efficiency']:.2f}"]
           for r in rows if "overlap_efficiency" in r]  # fmt: skip
    return columns, out


def _round_range(values: list[float]) -> str:
    """`lo to hi` of per-round figures, or `-` without rounds."""
    return f"{min(values):.2f} to {max(values):.2f}" if values else "-"


def dispatch_summary(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Each pair other than plain against the plain pair over the same exchange, same kernel (topk + contiguous):
    its dispatch and combine wire bytes (busiest rank, counted) and the schedule's prediction, the bytes ratio,
    its encode/decode phases, its time against plain's (or tie), its error against the exact reference, and the
    checked one (fp8: against the reference on the quantized values) beside its bound."""
    columns = ["batch", "skew", "cf", "config", "dispatch B", "predicted", "plain / this B", "combine B",
               "quantize µs", "dequantize µs", "total µs", "vs plain", "rel err", "checked err", "bound"]  # fmt: skip
    out = []
    for r in rows:
        if r["role"] != "config" or not _default_policy(r) or r.get("pair", "plain") == "plain":
            continue
        base = _twin(rows, r, algo=r["inner"])
        if base is None:
            continue
        ratio = f"{base['dispatch_bytes'] / r['dispatch_bytes']:.2f}x" if r["dispatch_bytes"] else "-"
        out.append([r["batch"], r["skew"], r["capacity_factor"] or "none", f"{_algo_label(r)} + {r['kernel']}",
                    r["dispatch_bytes"], r["dispatch_bytes_predicted"], ratio, r["combine_bytes"], r["quantize_us"],
                    r["dequantize_us"], r["total_us"], _versus(r, base), _opt(r["rel_error"], "{:.1e}"),
                    _opt(r.get("check_error"), "{:.1e}"), _opt(r["error_bound"], "{:.1e}")])  # fmt: skip
    return columns, out


TASK_MOE_THROUGHPUT = 1.9  # Kudugunta et al., 2021 (Task-MoE): peak inference throughput routing by task (WMT, 32 E)


def task_lines(rows: list[dict]) -> list[str]:
    """Task-level routing beside Task-MoE's number: each task router row against topk (same configuration)."""
    lines = []
    for r in rows:
        if r["role"] != "config" or not r.get("router", "").startswith("task"):
            continue
        base = _twin(rows, r)
        if base is not None and r["placement"] == "contiguous":
            data = f"{r['dispatch_bytes'] / base['dispatch_bytes']:.2f}x" if base["dispatch_bytes"] else "-"
            speed = r["tokens_per_s"] / base["tokens_per_s"]
            lines.append(f"batch {r['batch']} {r['skew']}: Task-MoE reports {TASK_MOE_THROUGHPUT}x peak throughput "
                         f"routing by task; here {r['router']} vs topk: tok/s {speed:.2f}x ({_versus(r, base)} by the "
                         f"spread), dispatch bytes {data}")  # fmt: skip
    return lines


def skew_lines(rows: list[dict]) -> list[str]:
    """The hot-expert straggler: each skew against `uniform` for the same batch, cf and algo + kernel (topk +
    contiguous): the busiest rank's received rows / the mean, and the layer time (ratio, or tie)."""
    lines = []
    for r in rows:
        if r["role"] != "config" or not _default_policy(r) or r["skew"] == "uniform":
            continue
        base = _twin(rows, r, skew="uniform")
        if base is not None:
            lines.append(
                f"batch {r['batch']} {r['algo']} + {r['kernel']}: {r['skew']} max/mean rows per rank "
                f"{r['imbalance_rank']:.2f} vs uniform {base['imbalance_rank']:.2f}; layer "
                f"{r['total_us']:.0f} µs vs {base['total_us']:.0f} µs (uniform / this: {_versus(r, base)})"
            )
    return lines


CAPTION = (
    "Phases: µs per phase of the critical rank (the rank whose total is largest in that iteration), mean over the "
    "iterations nearest the median total (the median one(s), then those within 1% of it, 20% at most), so they sum "
    "to the total (Σ/total; a row outside "
    "1 +- 0.02 fails); "
    "<phase>_max_us in the JSON is each phase's max over ranks. total = whole forward, median (p20, p80, p99) of "
    "the critical rank; configurations of a batch run interleaved over rounds. Cold weights: every call reads "
    "the next of several weight copies (together > 3x the last-level cache), as one layer of a deep model does; "
    "--warm-weights reuses one. roofline = router GEMM + the critical rank's active experts (their weight bytes "
    "at the measured read bandwidth, or their FLOPs at the measured GEMM rate) + the floor all-to-all (the "
    "library call on prebuilt arguments) at the dispatch's and combine's splits; roof frac = roofline / total. "
    "tok/s = distinct tokens (P/L x batch) / total. dispatch bytes (JSON `dispatch_bytes`): the busiest rank's "
    "dispatch wire bytes as the communicator counted them (rows, headers and count exchange). "
    "imb = max/mean rows received per rank, and kept assignments per "
    "expert. pad waste = executed / useful expert FLOPs. drop % of T*k assignments. kernel MB = the expert kernel's "
    "ledger of its own buffers (MB = 1e6 B); rss MB = peak resident set during this configuration's checked "
    "forward (high-water mark reset before it; max over ranks). rel err = ||y - ref|| / ||ref|| against a "
    "single-process float64 reference; ok: within 1e-5 (fp32) or 2e-2 (bf16/fp16), fp8 rows within 2^-8 more of "
    "the reference run on the e4m3-rounded inputs (the bf16 combine) and within 0.129 more of the exact one; and "
    "every rank's wire bytes equal to the schedule's. algo: an exchange (the plain pair over it) or "
    "pair:exchange, (mode) when overlapped. Baselines: each of BASELINES (loop = the per-expert Python loop) over "
    "native; dense-equivalent = one dense SwiGLU FFN with (k + shared) * F columns. Summary: `tie` = inside the "
    "spread: p20-p80 intervals overlap, and neither row won every round (the rounds' ratio of medians, paired in "
    "time)."
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
    pair_cols, pair_rows = dispatch_summary(rows)
    if pair_rows:
        report.print_table("Dispatch/combine pairs against plain", pair_cols, pair_rows)
    add_overlap_efficiency(rows)  # from the stored rows: runs saved before the model columns get them too
    over_cols, over_rows = overlap_summary(rows)
    if over_rows:
        report.print_table("Overlap against the sequential layer", over_cols, over_rows)
    pol_cols, pol_rows = policy_summary(rows)
    if pol_rows:
        report.print_table("Routers and placements against topk + contiguous", pol_cols, pol_rows)


def plot(rows: list[dict], base) -> list:
    first = (rows[0]["skew"], rows[0]["capacity_factor"])
    rows = [r for r in rows if (r["skew"], r["capacity_factor"]) == first]
    label = lambda r: f"{_algo_label(r)} + {r['kernel']}"
    paths = plots.series(rows, base, "latency", x="batch", y="total_us", label=label,
                         xlabel="tokens per rank", ylabel="layer latency (µs, median)",
                         title=f"MoE layer latency vs batch (skew {first[0]}, cf {first[1] or 'none'})")  # fmt: skip
    batches = sorted({r["batch"] for r in rows})
    panels = {
        f"phase breakdown, batch {b} per rank": [(f"{r['algo']}\n{r['kernel']}", r) for r in rows if r["batch"] == b]
        for b in dict.fromkeys([batches[0], batches[-1]])
    }
    return paths + plots.phase_bars(panels, moe.PHASES, base, "phases", "µs (median per phase)")


def check_memory(comm, cfg: Config, ranks_per_host: int) -> None:
    """Refuse a run whose buffers cannot fit, before any is allocated (the same answer on every rank: the least
    memory any rank sees). Per rank: its experts in the run's dtype; the reference's full weights in the
    dtype and in float64; the dense-equivalent; per batch the tokens (x and the float64 reference's x and y)
    and the rows the layer holds (T*k rows at H + 2F, three buffers). Cold weight copies then take at most
    half of what is left (weight_copies)."""
    p, P = cfg.preset, comm.world_size
    elem = torch.finfo(cfg.dtype).bits // 8
    expert = 3 * p.H * p.F
    T = round(max(cfg.batches) * (1 + cfg.batch_spread))
    per_rank = (p.E // P * expert * elem + p.E * expert * (elem + 8) + p.k * expert * elem
                + T * p.H * (elem + 16) + T * p.k * (p.H + 2 * p.F) * 3 * elem)  # fmt: skip
    need = per_rank * ranks_per_host
    have = -comm.allreduce_max(np.array([-float(options.available_memory_bytes())]))[0]
    if need > have:
        raise ValueError(f"{p.name} at batch {T} needs about {need / 1e9:.1f} GB on this host ({ranks_per_host} ranks: "
                         f"weights + float64 reference + row buffers), {have / 1e9:.1f} GB available")  # fmt: skip


def run(args) -> int:
    cfg = validate(args)
    comm = open_comm(args.backend, args.ranks_per_node, args.tp)
    # the node layout is known only now (hostnames, without --ranks-per-node)
    check_placements(cfg.placements, cfg.preset.E, comm.world_size, comm.topology.ranks_per_node, cfg.redundant)
    p = cfg.preset
    meta = {**report.base_meta("moe", sys.argv), **report.comm_meta(comm), "tag": args.tag}
    check_memory(comm, cfg, meta["ranks_per_host"])
    meta.update(model=p.name, H=p.H, F=p.F, E=p.E, k=p.k, dtype=str(cfg.dtype).removeprefix("torch."), impl=cfg.impl,
                iters=cfg.iters, warmup=cfg.warmup, rounds=cfg.rounds, budget_s=cfg.budget_s,
                shared_experts=cfg.shared, overlap=",".join(args.overlap))  # fmt: skip
    if comm.rank == 0:
        report.print_header(meta)
    P = comm.world_size
    weights = moe.make_weights(p, cfg.dtype, comm.device, cfg.seed, comm.rank * (p.E // P), p.E // P, shared=cfg.shared)
    roof = roofline.measure_roofline_ranks(comm, cfg.dtype)
    meta.update(roofline=roof.fields(), warm_weights=cfg.warm)
    cases = list(itertools.product(cfg.skews, cfg.capacity_factors, cfg.batches))
    rows = []
    recorder = TraceRecorder() if args.record_trace else None
    with Progress(disable=comm.rank != 0, transient=True, console=report.console) as progress:
        task = progress.add_task("moe", total=len(cases))
        for skew, cf, T in cases:
            progress.update(task, description=f"batch {T} skew {skew} cf {cf or 'none'}")
            work = make_workload(comm, cfg, skew, cf, T)
            if recorder is not None and (skew, cf) == cases[0][:2]:
                recorder.add(comm, cfg, work, weights)
            fields = {"batch": T, "skew": str(skew), "capacity_factor": cf, "batch_spread": cfg.batch_spread,
                      "total_tokens": work.total_tokens}  # fmt: skip
            rows += [{**fields, **row} for row in bench_batch(comm, cfg, work, weights, roof, cfg.warm)]
            progress.advance(task)
    for r in rows:
        r["tokens_per_s"] = r["total_tokens"] / (r["total_us"] * 1e-6)
    add_overlap_efficiency(rows)
    if comm.rank == 0:
        write_outputs(meta, rows, args)
        if recorder is not None:
            recorder.write(args.record_trace, p, sys.argv[1:])
    return report.exit_status(rows, say=comm.rank == 0)


def write_outputs(meta: dict, rows: list[dict], args) -> None:
    caption = report.CONVENTIONS + ". " + CAPTION
    report.print_table(title(meta), COLUMNS, table_rows(rows), caption)
    sum_cols, sum_rows = summary(rows)
    report.print_table("Best configuration per batch (fastest correct under topk + contiguous; vs baseline = "
                       "baseline / best, or tie)", sum_cols, sum_rows)  # fmt: skip
    pol_cols, pol_rows = policy_summary(rows)
    if pol_rows:
        report.print_table("Routers and placements against topk + contiguous (same algo + kernel; vs = that row's "
                           "time / this row's, or tie; vs topk = this row's dispatch bytes / that row's)",
                           pol_cols, pol_rows)  # fmt: skip
    over_cols, over_rows = overlap_summary(rows)
    if over_rows:
        report.print_table("Overlap: each mode against the same configuration without (t_comm = its dispatch + "
                           "combine phases, t_comp = the rest; efficiency = (t_comm + t_comp - overlapped) / "
                           "min(t_comm, t_comp); by round = the same from each round's medians, lowest to highest; "
                           "vs sequential = sequential / overlapped, or tie; model = the pipeline model on the "
                           "sequential phases, as if communication progressed under compute)",
                           over_cols, over_rows)  # fmt: skip
    pair_cols, pair_rows = dispatch_summary(rows)
    if pair_rows:
        report.print_table("Dispatch/combine pairs against plain over the same exchange (bytes: the busiest rank's, "
                           "counted; predicted: the pair's schedule; vs plain = plain's time / this, or tie)",
                           pair_cols, pair_rows)  # fmt: skip
    straggler = skew_lines(rows) + task_lines(rows)
    for line in straggler:
        report.console.print(line)
    md = (
        f"# {title(meta)}\n\n{report.header_markdown(meta)}\n## Best configuration per batch\n\n"
        + report.rows_to_markdown(sum_cols, sum_rows)
        + (
            "\n## Routers and placements against topk + contiguous\n\n" + report.rows_to_markdown(pol_cols, pol_rows)
            if pol_rows
            else ""
        )
        + (
            "\n## Dispatch/combine pairs against plain\n\n" + report.rows_to_markdown(pair_cols, pair_rows)
            if pair_rows
            else ""
        )
        + ("\n## Overlap\n\n" + report.rows_to_markdown(over_cols, over_rows) if over_rows else "")
        + "".join(f"- {line}\n" for line in straggler)
        + "\n## All configurations\n\n"
        + report.rows_to_markdown(COLUMNS, table_rows(rows), caption)
    )
    report.emit(args, meta, rows, md)
