# T = tokens per rank, E = experts, El = E / P local experts, H = hidden, F = expert FFN width, k = experts per
# token, P = ranks, L = TP degree, A = kept (token, expert) assignments sent by this rank, M = rows received,
# W = bytes of one packed row (H elements + the expert id)
"""One expert-parallel MoE layer, composed from routing + dispatch/combine + an expert kernel.

Every rank holds the router and its own El = E / P experts (rank r owns experts r*El .. r*El+El-1), all
drawn from one seed (identical to the single-process reference). Forward on rank r, phase by phase:

  gate       logits = x @ w_router, top-k softmax (or a forced distribution), capacity and drops
  permute    kept assignments sorted by destination rank; each row packed as bytes with its local
             expert id (one message per peer carries rows and ids)
  dispatch   split counts exchanged, rows moved by the chosen dispatch/combine pair over its exchange
  experts    the chosen kernel on the received rows, each row one assignment (k = 1, weight 1)
  combine    expert outputs sent back along the same routes
  unpermute  weighted sum of each token's expert outputs -> y[T, H]

A LayerConfig may name a router (kernels.routers: the gate then runs that router on its logits, token ids
from this rank's TP group) and a placement (bench.layer.placements: rank r holds the experts of its slots,
a replicated expert's weights once per slot, and permute sends each kept assignment to the slot the
placement's dispatch picks for this rank). Without them the layer is the gate as trained on the contiguous
layout, on its small-batch host paths.

Drops happen where tokens are routed (capacity per expert from this rank's T tokens, as DeepSpeed's
per-rank capacity); the expert side computes every row it receives. With TP degree L the L ranks of a
TP group hold the same tokens; `plain` sends all of them (each expert computes L copies) and
`coordinated` sends 1/L and all-gathers after combine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from moebench.bench.layer.placements import Placement
from moebench.bench.layer.presets import Preset
from moebench.bench.layer.skews import forced_logits, sample_topk
from moebench.bench.layer.units import UNITS
from moebench.bench.layer.workloads import make_expert_weights, make_router_weights
from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE
from moebench.kernels import KernelStats, reference, route, routing_from_topk
from moebench.kernels.common import MemoryMeter, host_gemv_applies, host_swiglu, rows_matmul
from moebench.kernels.routers import Router, RouterInput
from moebench.kernels.routing import HOST, HOST_GATE_LOGITS, check_gate_options, host_gate

PHASES = ("gate", "quantize", "permute", "dispatch", "shared", "dequantize", "experts", "combine", "unpermute")
DEFAULT_INNER = "flat"  # the exchange under a pair named without one ("coordinated" = "coordinated:flat")


def default_inner(pair: str) -> str:
    """The exchange a pair named without one runs over: flat, or the first it runs over."""
    inners = DISPATCH_COMBINE[pair].inners
    return DEFAULT_INNER if inners is None or DEFAULT_INNER in inners else inners[0]


def parse_algo(spec: str) -> tuple[str, str]:
    """An --algos entry -> (pair, inner): an exchange name runs as the plain pair over it; `pair:inner`
    names any other pair over an exchange it runs over (a bare pair name: default_inner). ValueError otherwise."""
    pair, _, inner = spec.rpartition(":") if ":" in spec else ("", "", spec)
    if not pair:
        if spec in ALGORITHMS:
            return "plain", spec
        pair, inner = spec, default_inner(spec) if spec in DISPATCH_COMBINE else DEFAULT_INNER
    if pair in DISPATCH_COMBINE and inner in ALGORITHMS:
        if not DISPATCH_COMBINE[pair].runs_over(inner):
            raise ValueError(f"{pair} runs over {', '.join(DISPATCH_COMBINE[pair].inners)} only, not {inner}")
        return pair, inner
    exchanges, pairs = ", ".join(ALGORITHMS), ", ".join(DISPATCH_COMBINE)
    raise ValueError(f"unknown algorithm {spec!r}; use an exchange ({exchanges}) or pair:exchange (pairs: {pairs})")


def algo_label(pair: str, inner: str) -> str:
    """The row label: the exchange name for the plain pair, else pair:inner."""
    return inner if pair == "plain" else f"{pair}:{inner}"


@dataclass(frozen=True)
class MoeWeights:
    """w_router_HE [H, E] and this rank's experts: w_gate_EHF, w_up_EHF [El, H, F], w_down_EFH [El, F, H]."""

    w_router_HE: torch.Tensor
    w_gate_EHF: torch.Tensor
    w_up_EHF: torch.Tensor
    w_down_EFH: torch.Tensor
    first_expert: int
    shared: tuple | None = None  # the shared experts as one dense SwiGLU: [H, N*F], [H, N*F], [N*F, H]

    @property
    def experts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.w_gate_EHF, self.w_up_EHF, self.w_down_EFH

    @cached_property
    def router_host_HE(self) -> np.ndarray:
        """The router as an fp32 numpy array [H, E] (a view where it is fp32 on the CPU), made once: the host
        gate's GEMV operand (a view made per call costs ~8 µs with the caches the experts leave)."""
        w = self.w_router_HE
        return (w if w.dtype == torch.float32 else w.float()).cpu().numpy()


def make_weights(preset: Preset, dtype, device, seed: int, first_expert: int = 0, num_local: int | None = None,
                 held: list[int] | None = None, shared: int = 0):  # fmt: skip
    """All ranks draw the same full weights from `seed` (on the CPU) and keep experts [first_expert, +num_local),
    or, under a placement, the experts `held` (its slots in order: a replicated expert's weights once per slot);
    `shared` > 0: that many shared experts (DeepSeek-V3, Qwen-MoE), every rank a copy, as one dense SwiGLU."""
    num_local = preset.E if num_local is None else num_local
    local = slice(first_expert, first_expert + num_local) if held is None else torch.tensor(held, dtype=torch.int64)
    experts = [w[local].contiguous() for w in make_expert_weights(preset, dtype, "cpu", seed)]
    w_router_HE = make_router_weights(preset, seed)
    common = MoeWeights(*(w.to(device=device, dtype=dtype) for w in (w_router_HE, *experts)), first_expert)
    if not shared:
        return common
    return replace(common, shared=shared_expert_weights(preset, shared, dtype, device, seed))


def dense_swiglu_weights(H: int, width: int, dtype, device, seed: int):
    """One dense SwiGLU FFN drawn on the CPU from `seed`: [H, width], [H, width], [width, H], normal / sqrt(fan-in)."""
    gen = torch.Generator().manual_seed(seed)
    w_gate = torch.randn(H, width, generator=gen) / H**0.5
    w_up = torch.randn(H, width, generator=gen) / H**0.5
    w_down = torch.randn(width, H, generator=gen) / width**0.5
    return tuple(w.to(device=device, dtype=dtype) for w in (w_gate, w_up, w_down))


def shared_expert_weights(preset: Preset, shared: int, dtype, device, seed: int):
    """N shared experts as one dense SwiGLU of width N*F: [H, N*F], [H, N*F], [N*F, H] (a seed of their own)."""
    return dense_swiglu_weights(preset.H, shared * preset.F, dtype, device, seed + 13)


@dataclass(frozen=True)
class LayerConfig:
    """One configuration of the layer: a dispatch/combine pair over an exchange, and an expert kernel."""

    preset: Preset
    pair_name: str
    inner: str
    kernel: str
    impl: str = "torch"
    capacity_factor: float | None = None
    router: Router | None = None  # None: the gate as trained (topk) on its fast paths
    placement: Placement | None = None  # None: contiguous (rank r holds experts r*El .. r*El+El-1)
    max_rows: int | None = None  # the most rows any rank sends (tokens per rank x k): fixed-buffer pairs' size
    overlap: object = None  # None: the sequential forward; else a bench.layer.overlap.Overlap (its forward)

    def __post_init__(self):
        check_gate_options(self.preset.E, self.preset.k, self.capacity_factor)  # once: the host gate does not

    @property
    def pair(self):
        return DISPATCH_COMBINE[self.pair_name]

    @property
    def label(self) -> str:
        return algo_label(self.pair_name, self.inner)

    @property
    def overlap_name(self) -> str:
        return "none" if self.overlap is None else self.overlap.name


def gate_logits(x_TH, weights: MoeWeights, forced=None) -> torch.Tensor:
    """fp32 [T, E]: the router's logits, or under a forced distribution skews.forced_logits of them."""
    logits_TE = x_TH.float() @ weights.w_router_HE.float()
    if forced is not None:
        logits_TE = forced_logits(logits_TE, forced[0].to(logits_TE.device), forced[1].to(logits_TE.device))
    return logits_TE


def gate_mass(logits_TE: torch.Tensor, routing, k: int) -> float:
    """The gate probability (softmax over all E) the routing's kept assignments carry / what the top k carry."""
    prob_TE = torch.softmax(logits_TE.double(), dim=-1)
    kept = torch.gather(prob_TE, 1, routing.topk_ids_Tk.to(prob_TE.device)) * routing.kept_Tk.to(prob_TE.device)
    top = prob_TE.topk(k, dim=-1).values.sum().item()
    return kept.sum().item() / top if top else 1.0


def gate(x_TH, weights: MoeWeights, cfg: LayerConfig, forced=None, first_token: int = 0, part: tuple = (0, 1)):
    """Router GEMM + top-k + capacity -> Routing over all E experts (its layout is built only where a kernel
    asks for it). `forced`: (ids_Tk, weights_Tk) to use instead of the router's choice. With cfg.router: that
    router on the logits (forced: skews.forced_logits), token ids first_token.. (hash, task), part = (this rank's
    TP group, the number of groups) (task-local)."""
    if cfg.router is not None:
        logits_TE = gate_logits(x_TH, weights, forced)
        token_ids_T = torch.arange(first_token, first_token + x_TH.shape[0], device=logits_TE.device)
        p = cfg.preset
        inp = RouterInput(logits_TE, p.k, cfg.capacity_factor, token_ids_T, None, p.groups, p.topk_groups, *part)
        return cfg.router(inp).routing
    if forced is None:
        x = x_TH if x_TH.dtype == torch.float32 else x_TH.float()
        if not x.is_cuda and x.shape[0] * cfg.preset.E <= HOST_GATE_LOGITS:  # decode: the host gate
            return host_gate((x.numpy() @ weights.router_host_HE).tolist(), cfg.preset.k, cfg.capacity_factor)
        w = weights.w_router_HE if weights.w_router_HE.dtype == torch.float32 else weights.w_router_HE.float()
        return route(x @ w, cfg.preset.k, cfg.capacity_factor)
    return routing_from_topk(forced[0], forced[1], cfg.preset.E, cfg.capacity_factor, validate=False)


@dataclass
class ForwardInfo:
    """What one forward saw: rows received, kernel stats, routing (for load and drop figures)."""

    recv_rows: int = 0
    stats: KernelStats | None = None
    routing: object = None
    permuted: object = None  # the Permuted rows this rank dispatched
    active_experts: int = 0  # local experts that received at least one row
    dispatch_wire_bytes: int = 0  # bytes this rank's dispatch sent to other ranks, as the communicator counted them
    combine_wire_bytes: int = 0  # the same for its combine
    chunk_splits: list | None = None  # send_splits of each chunk dispatched (one chunk unless overlapped)


def row_bytes(cfg: LayerConfig, dtype) -> tuple[int, int]:
    """(dispatch, combine) bytes of one of the layer's rows under cfg's pair: its codec's payload + its unit's
    header, and the combine's row."""
    return cfg.pair.wire_row_bytes(cfg.preset.H, dtype, UNITS[cfg.pair.unit].header_bytes(cfg.preset.k))


def forward(comm, x_TH, weights: MoeWeights, cfg: LayerConfig, mark: Callable[[], None], forced=None, info=None,
            first_id: int | None = None):  # fmt: skip
    """y_TH = MoE(x_TH) across all ranks; `mark()` is called after each phase in PHASES. first_id: the global id
    of this rank's first token (routers that read token ids; default: TP groups of equal batches). The pair's
    codec encodes each token once (quantize) and decodes what arrives (dequantize); its unit makes the rows."""
    P, pair, T, dtype = comm.world_size, cfg.pair, x_TH.shape[0], x_TH.dtype
    codec, unit = pair.codec, UNITS[pair.unit]
    if cfg.router is None:  # the gate as trained reads no token ids
        routing = gate(x_TH, weights, cfg, forced)
    else:
        first_id = first_token(comm, T) if first_id is None else first_id
        routing = gate(x_TH, weights, cfg, forced, first_id, rank_part(comm))
    mark()
    payload_TW = codec.encode(x_TH)
    mark()
    permuted = unit.permute(payload_TW, routing, P, cfg.preset.E // P, cfg.placement, comm.rank)
    mark()
    before = comm.traffic.as_array() if info is not None else None
    recv_MW, _, handle = pair.dispatch(comm, permuted.send_AW, permuted.send_splits, inner=cfg.inner,
                                       max_rows_per_rank=cfg.max_rows)  # fmt: skip
    mark()
    middle = comm.traffic.as_array() if info is not None else None
    shared_TH = shared_forward(x_TH, weights)
    mark()
    payload_MW, meta = unit.unpack(recv_MW, cfg.preset.k)
    x_MH = codec.decode(payload_MW, dtype, cfg.preset.H)
    mark()
    y_MH, stats, active = unit.run_experts(x_MH, meta, weights, cfg)
    mark()
    back = codec.combine_dtype(dtype)
    out_RH = pair.combine(comm, y_MH if y_MH.dtype == back else y_MH.to(back), handle)
    mark()
    y_TH = add_shared(unit.unpermute(out_RH, permuted, T, dtype), shared_TH)
    mark()
    if info is not None:
        after = comm.traffic.as_array()
        info.dispatch_wire_bytes = int((middle - before)[:2].sum())
        info.combine_wire_bytes = int((after - middle)[:2].sum())
        info.recv_rows, info.stats, info.routing, info.permuted = x_MH.shape[0], stats, routing, permuted
        info.active_experts, info.chunk_splits = active, [permuted.send_splits]
    return y_TH


def run_layer(comm, x_TH, weights: MoeWeights, cfg: LayerConfig, mark: Callable[[], None], forced=None, info=None,
              first_id: int | None = None):  # fmt: skip
    """The layer under cfg's overlap mode (bench.layer.overlap), or the sequential forward."""
    run = forward if cfg.overlap is None else cfg.overlap.forward
    return run(comm, x_TH, weights, cfg, mark, forced, info, first_id)


def shared_forward(x_TH, weights: MoeWeights):
    """The shared experts on every token ([T, H], fp32 accumulate as dense_forward), or None without them."""
    return None if weights.shared is None else dense_forward(x_TH, *weights.shared)


def add_shared(y_TH, shared_TH):
    """y + the shared experts' output (y unchanged without them)."""
    return y_TH if shared_TH is None else y_TH.add_(shared_TH.to(y_TH.dtype))


def rank_part(comm) -> tuple[int, int]:
    """(this rank's TP group, the number of TP groups): which part of the cluster's tokens it routes."""
    return comm.rank // comm.tp.size, comm.world_size // comm.tp.size


def first_token(comm, T: int) -> int:
    """The global id of this rank's first token: TP groups hold T tokens each, in group order."""
    return comm.rank // comm.tp.size * T


def reference_forward(x_TH, preset: Preset, capacity_factor, seed: int, forced=None, router=None, first_id: int = 0,
                      part: tuple = (0, 1), shared: int = 0, expert_input=None):  # fmt: skip
    """The whole layer in one process: the same gate (or router, with token ids first_id..), then a float64
    per-token loop over all E experts (+ the shared experts, float64). A placement changes where an expert runs,
    not what it computes. expert_input: what the routed experts see instead of x (a codec's decoded values: the
    gate and the shared experts still see x).

    Weights are the layer's own (same seed and dtype), so only the expert arithmetic differs."""
    x_TH = x_TH.cpu()
    full = make_weights(preset, x_TH.dtype, "cpu", seed, shared=shared)
    cfg = LayerConfig(preset, "plain", "flat", "loop", capacity_factor=capacity_factor, router=router)
    forced = None if forced is None else tuple(f.cpu() for f in forced)
    routing = gate(x_TH, full, cfg, forced, first_id, part)
    x_experts = x_TH if expert_input is None else expert_input.cpu()
    y_TH = reference.moe_experts(x_experts, routing, *full.experts)
    if full.shared is None:
        return y_TH
    return y_TH + reference.swiglu_expert(x_TH.double(), *(w.double() for w in full.shared))


def dense_equivalent_weights(preset: Preset, dtype, device, seed: int, shared: int = 0):
    """A dense SwiGLU FFN with one token's active expert parameters (the shared experts' included):
    [H, (k+N)*F], [H, (k+N)*F], [(k+N)*F, H]."""
    return dense_swiglu_weights(preset.H, (preset.k + shared) * preset.F, dtype, device, seed + 11)


def dense_forward(x_TH, w_gate, w_up, w_down):
    """The dense-equivalent FFN: same tokens, same active parameter count, no routing, no communication; its
    matmuls are the experts' own (kernels.common.rows_matmul: numpy's gemv for one row on the CPU, and for one
    row on one thread the whole FFN in numpy, as the dynamic kernel's one-row experts: host_swiglu). The
    shared experts (shared_forward) run through it too."""
    if host_gemv_applies(x_TH):
        return torch.from_numpy(host_swiglu(x_TH.numpy(), w_gate.numpy(), w_up.numpy(), w_down.numpy(),
                                            MemoryMeter(HOST)))  # fmt: skip
    h_TW = rows_matmul(x_TH, w_gate)
    torch.nn.functional.silu(h_TW, inplace=True).mul_(rows_matmul(x_TH, w_up))
    return rows_matmul(h_TW, w_down)


def forced_routing(skew, T: int, preset: Preset, seed: int, batch: int = 0, part: int = 0, layout=(0, 0),
                   first_row: int | None = None):  # fmt: skip
    """(ids_Tk, weights_Tk) from a forced distribution (a Skew), or None for the real gate ("gate"). part: which
    rank (TP group) draws; first_row: its first token's row (a trace's tokens); layout: (P, G) (nodeskew)."""
    if skew.kind == "gate":
        return None
    return sample_topk(skew, T, preset.E, preset.k, seed=seed, batch=batch, part=part, layout=layout,
                       first_row=first_row)  # fmt: skip
