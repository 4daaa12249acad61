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

Drops happen where tokens are routed (capacity per expert from this rank's T tokens, as DeepSpeed's
per-rank capacity); the expert side computes every row it receives. With TP degree L the L ranks of a
TP group hold the same tokens; `plain` sends all of them (each expert computes L copies) and
`coordinated` sends 1/L and all-gathers after combine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from moebench.bench.layer.presets import Preset
from moebench.bench.layer.workloads import make_expert_weights, sample_topk
from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE
from moebench.kernels import KernelStats, get_kernel, reference, route, routing_from_topk

PHASES = ("gate", "permute", "dispatch", "experts", "combine", "unpermute")
ID_BYTES = 8  # a local expert id (int64) travels at the end of each packed row
DEFAULT_INNER = "flat"  # the exchange under a pair named without one ("coordinated" = "coordinated:flat")


def parse_algo(spec: str) -> tuple[str, str]:
    """An --algos entry -> (pair, inner): an exchange name runs as the plain pair over it; `pair:inner`
    names any other pair over any exchange (a bare pair name runs over flat). ValueError otherwise."""
    pair, _, inner = spec.rpartition(":") if ":" in spec else ("", "", spec)
    if not pair:
        if spec in ALGORITHMS:
            return "plain", spec
        pair, inner = spec, DEFAULT_INNER
    if pair in DISPATCH_COMBINE and inner in ALGORITHMS:
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

    @property
    def experts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.w_gate_EHF, self.w_up_EHF, self.w_down_EFH


def make_weights(preset: Preset, dtype, device, seed: int, first_expert: int = 0, num_local: int | None = None):
    """All ranks draw the same full weights from `seed` (on the CPU) and keep experts [first_expert, +num_local)."""
    num_local = preset.E if num_local is None else num_local
    local = slice(first_expert, first_expert + num_local)
    experts = [w[local].contiguous() for w in make_expert_weights(preset, dtype, "cpu", seed)]
    gen = torch.Generator().manual_seed(seed + 7)
    w_router_HE = torch.randn(preset.H, preset.E, generator=gen) / preset.H**0.5
    return MoeWeights(*(w.to(device=device, dtype=dtype) for w in (w_router_HE, *experts)), first_expert)


@dataclass(frozen=True)
class LayerConfig:
    """One configuration of the layer: a dispatch/combine pair over an exchange, and an expert kernel."""

    preset: Preset
    pair_name: str
    inner: str
    kernel: str
    impl: str = "torch"
    capacity_factor: float | None = None

    @property
    def pair(self):
        return DISPATCH_COMBINE[self.pair_name]

    @property
    def label(self) -> str:
        return algo_label(self.pair_name, self.inner)


def gate(x_TH, weights: MoeWeights, cfg: LayerConfig, forced=None):
    """Router GEMM + top-k + capacity -> Routing over all E experts. `forced`: (ids_Tk, weights_Tk) to use instead."""
    logits_TE = x_TH.float() @ weights.w_router_HE.float()
    if forced is None:
        return route(logits_TE, cfg.preset.k, cfg.capacity_factor)
    return routing_from_topk(forced[0], forced[1], cfg.preset.E, cfg.capacity_factor, validate=False)


@dataclass(frozen=True)
class Permuted:
    """send_AW: packed rows [A, W] (uint8) in destination order; token_A, weight_A: their token and weight."""

    send_AW: torch.Tensor
    send_splits: list[int]
    token_A: torch.Tensor
    weight_A: torch.Tensor


def permute(x_TH, routing, num_ranks: int, experts_per_rank: int) -> Permuted:
    """Sort kept assignments by destination rank and pack each row with its local expert id."""
    T, k = routing.topk_ids_Tk.shape
    kept_A = routing.kept_Tk.reshape(-1)
    ids_A = routing.topk_ids_Tk.reshape(-1)[kept_A]
    dest_A = ids_A // experts_per_rank
    order_A = torch.sort(dest_A, stable=True).indices
    assignment_A = torch.arange(T * k, device=x_TH.device)[kept_A][order_A]
    token_A = assignment_A // k
    local_ids_A = (ids_A[order_A] % experts_per_rank).to(torch.int64)
    x_bytes_TW = x_TH.contiguous().view(torch.uint8).reshape(T, -1)
    send_AW = torch.cat([x_bytes_TW[token_A], local_ids_A.view(torch.uint8).reshape(-1, ID_BYTES)], dim=1)
    # The all-to-all needs the counts on the host: the one sync this phase needs.
    send_splits = torch.bincount(dest_A, minlength=num_ranks).tolist()
    weight_A = routing.topk_weights_Tk.reshape(-1)[assignment_A]
    return Permuted(send_AW, send_splits, token_A, weight_A)


def unpack(recv_MW: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows [M, W] -> x_MH in `dtype` and local expert ids [M]."""
    x_MH = recv_MW[:, :-ID_BYTES].contiguous().view(dtype)
    ids_M = recv_MW[:, -ID_BYTES:].contiguous().view(torch.int64).reshape(-1)
    return x_MH, ids_M


def run_experts(x_MH, ids_M, weights: MoeWeights, cfg: LayerConfig):
    """Each received row through its expert (k = 1, weight 1): y_MH and the kernel's stats."""
    num_local = weights.w_gate_EHF.shape[0]
    ones_M1 = torch.ones(ids_M.shape[0], 1, device=x_MH.device)
    routing = routing_from_topk(ids_M.reshape(-1, 1), ones_M1, num_local, validate=False)
    return get_kernel(cfg.kernel)(x_MH, routing, *weights.experts, impl=cfg.impl)


def unpermute(out_AH, permuted: Permuted, T: int) -> torch.Tensor:
    """y[t] = sum of token t's expert outputs, each times its combine weight (fp32 accumulate)."""
    y_TH = torch.zeros(T, out_AH.shape[1], dtype=torch.float32, device=out_AH.device)
    y_TH.index_add_(0, permuted.token_A, out_AH.float() * permuted.weight_A[:, None])
    return y_TH.to(out_AH.dtype)


@dataclass
class ForwardInfo:
    """What one forward saw: rows received, kernel stats, routing (for load and drop figures)."""

    recv_rows: int = 0
    stats: KernelStats | None = None
    routing: object = None


def forward(comm, x_TH, weights: MoeWeights, cfg: LayerConfig, mark: Callable[[], None], forced=None, info=None):
    """y_TH = MoE(x_TH) across all ranks; `mark()` is called after each phase in PHASES."""
    P = comm.world_size
    routing = gate(x_TH, weights, cfg, forced)
    mark()
    permuted = permute(x_TH, routing, P, cfg.preset.E // P)
    mark()
    recv_MW, _, handle = cfg.pair.dispatch(comm, permuted.send_AW, permuted.send_splits, inner=cfg.inner)
    mark()
    x_MH, ids_M = unpack(recv_MW, x_TH.dtype)
    y_MH, stats = run_experts(x_MH, ids_M, weights, cfg)
    mark()
    out_AH = cfg.pair.combine(comm, y_MH, handle)
    mark()
    y_TH = unpermute(out_AH, permuted, x_TH.shape[0])
    mark()
    if info is not None:
        info.recv_rows, info.stats, info.routing = x_MH.shape[0], stats, routing
    return y_TH


def reference_forward(x_TH, preset: Preset, capacity_factor, seed: int, forced=None) -> torch.Tensor:
    """The whole layer in one process: the same gate, then a float64 per-token loop over all E experts.

    Weights are the layer's own (same seed and dtype), so only the expert arithmetic differs."""
    x_TH = x_TH.cpu()
    full = make_weights(preset, x_TH.dtype, "cpu", seed)
    cfg = LayerConfig(preset, "plain", "flat", "loop", capacity_factor=capacity_factor)
    return reference.moe_experts(x_TH, gate(x_TH, full, cfg, forced), *full.experts)


def dense_equivalent_weights(preset: Preset, dtype, device, seed: int):
    """A dense SwiGLU FFN with one token's active expert parameters: [H, k*F], [H, k*F], [k*F, H]."""
    gen = torch.Generator().manual_seed(seed + 11)
    H, width = preset.H, preset.k * preset.F
    w_gate = torch.randn(H, width, generator=gen) / H**0.5
    w_up = torch.randn(H, width, generator=gen) / H**0.5
    w_down = torch.randn(width, H, generator=gen) / width**0.5
    return tuple(w.to(device=device, dtype=dtype) for w in (w_gate, w_up, w_down))


def dense_forward(x_TH, w_gate, w_up, w_down):
    """The dense-equivalent FFN: same tokens, same active parameter count, no routing, no communication."""
    return (torch.nn.functional.silu(x_TH @ w_gate) * (x_TH @ w_up)) @ w_down


def forced_routing(skew, T: int, preset: Preset, seed: int, batch: int = 0):
    """(ids_Tk, weights_Tk) from a forced distribution (a Skew), or None for the real gate ("gate")."""
    if skew.kind == "gate":
        return None
    return sample_topk(skew, T, preset.E, preset.k, seed=seed, batch=batch)
