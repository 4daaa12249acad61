# T = tokens, E = experts, k = experts per token, A = T*k assignments, B = tiles (row blocks)
"""Routing: the top-k softmax gate, capacity and drops, and the layout metadata every expert kernel reads.

`route(logits_TE, k)` runs the gate and builds a frozen `Routing`; `routing_from_topk(ids, weights, E)`
builds the same object from expert ids chosen elsewhere (a forced skew, or rows that arrive after an
all-to-all). An *assignment* is one (token, slot) pair, numbered `a = t * k + j`.

Layout (all device tensors, computed without host syncs):
- `sort_idx_A`: assignments in expert order, stable (token order inside an expert, or gate-weight order
  under drop_policy="weight"); kept assignments first, dropped ones after `offsets_E1[E]`.
- `offsets_E1`: expert e's kept rows are `sort_idx_A[offsets_E1[e]:offsets_E1[e + 1]]`.
- `rank_Tk`: an assignment's place in its expert's queue (before drops); kept iff rank < capacity.
  A kept assignment sits at row `offsets_E1[e] + rank` of the sorted order.
- `block_offsets_E1`: the same segments with each one padded to a multiple of `block_size` rows.
- `tile_expert_B` / `tile_row_B`: for each tile of `block_size` rows, its expert and its first row in
  the exact sorted order; tiles past the last used one hold expert -1. `B` is a bound known without
  looking at the data (`max_tiles`), so a grid can be launched without a sync.

Capacity (DESIGN.md §3): capacity = ceil(capacity_factor * T * k / E) rows per expert; without a capacity
factor nothing is dropped.
"""

from __future__ import annotations

import copy
import itertools
import math
from functools import cached_property

import torch
import triton
import triton.language as tl

from moebench.kernels.triton_utils import require_triton

DEFAULT_BLOCK_SIZE = 64
DROP_POLICIES = ("position", "weight")
IMPLS = ("torch", "triton")


class Routing:
    """Which experts each token goes to, what is kept, and where every kept row sits.

    Built from the top-k choice (topk_ids_Tk int64 [T, k], topk_weights_Tk fp32 [T, k]), the expert count,
    the capacity (None: nothing can be dropped), the drop policy and the block size. Everything else is
    computed on first use and kept (a kernel pays only for the metadata it reads; at decode, a few ops):
    counts_E, kept_counts_E int64 [E] (assignments per expert before / after drops); kept_Tk bool [T, k];
    rank_Tk int64 [T, k]; num_dropped (0-d tensor, or 0 when nothing can be dropped); sort_idx_A int64 [A];
    offsets_E1, block_offsets_E1 int64 [E + 1]; tile_expert_B, tile_row_B int64 [max_tiles].
    Treat it as immutable.
    """

    def __init__(self, topk_ids_Tk, topk_weights_Tk, num_experts: int, capacity: int | None,
                 drop_policy: str = "position", block_size: int = DEFAULT_BLOCK_SIZE):  # fmt: skip
        self.topk_ids_Tk = topk_ids_Tk
        self.topk_weights_Tk = topk_weights_Tk
        self.num_experts = num_experts
        self.capacity = capacity
        self.drop_policy = drop_policy
        self.block_size = block_size
        self.unit_weights = False  # every weight is 1.0 (rows after an all-to-all): kernels may skip the scaling

    @property
    def device(self) -> torch.device:
        return self.topk_ids_Tk.device

    @property
    def num_tokens(self) -> int:
        return self.topk_ids_Tk.shape[0]

    @property
    def top_k(self) -> int:
        return self.topk_ids_Tk.shape[1]

    @property
    def num_assignments(self) -> int:
        return self.topk_ids_Tk.numel()

    # -- counts, queues and drops

    @cached_property
    def counts_E(self) -> torch.Tensor:
        return torch.bincount(self.topk_ids_Tk.view(-1), minlength=self.num_experts)

    @cached_property
    def _queue_A(self) -> torch.Tensor:
        """Assignments sorted by expert; inside an expert, in the order the drop policy serves them."""
        return _queue_order(self.topk_ids_Tk.view(-1), self.topk_weights_Tk.view(-1), self.drop_policy)

    @cached_property
    def rank_Tk(self) -> torch.Tensor:
        """Each assignment's place in its expert's queue (before drops)."""
        ids_A, order_A = self.topk_ids_Tk.view(-1), self._queue_A
        starts_E = torch.cumsum(self.counts_E, 0) - self.counts_E
        rank_A = torch.empty_like(ids_A)
        rank_A[order_A] = torch.arange(ids_A.numel(), device=ids_A.device) - starts_E[ids_A[order_A]]
        return rank_A.view(self.topk_ids_Tk.shape)

    @cached_property
    def kept_Tk(self) -> torch.Tensor:
        if self.capacity is None:
            return torch.ones_like(self.topk_ids_Tk, dtype=torch.bool)
        return self.rank_Tk < self.capacity

    @cached_property
    def kept_counts_E(self) -> torch.Tensor:
        return self.counts_E if self.capacity is None else self.counts_E.clamp(max=self.capacity)

    @cached_property
    def num_dropped(self):
        return 0 if self.capacity is None else (~self.kept_Tk).sum()

    @cached_property
    def sort_idx_A(self) -> torch.Tensor:
        """Kept assignments in expert order first, dropped ones after offsets_E1[E]."""
        order_A = self._queue_A
        if self.capacity is None:
            return order_A
        ids_A = self.topk_ids_Tk.view(-1)
        dropped_last_A = torch.where(self.kept_Tk.view(-1)[order_A], ids_A[order_A], self.num_experts)
        return order_A[torch.sort(dropped_last_A, stable=True).indices]

    @cached_property
    def offsets_E1(self) -> torch.Tensor:
        host = self.__dict__.get("offsets_list")
        if host is not None:
            return torch.tensor(host, dtype=torch.int64, device=self.topk_ids_Tk.device)
        kept_E = self.kept_counts_E
        return torch.cat([kept_E.new_zeros(1), torch.cumsum(kept_E, 0)])

    @cached_property
    def topk_ids_list(self) -> list[int]:
        """topk_ids_Tk flattened on the host ([T * k], assignment order; a sync on GPU)."""
        return self.topk_ids_Tk.view(-1).tolist()

    @cached_property
    def topk_weights_list(self) -> list[float]:
        """topk_weights_Tk flattened on the host ([T * k], assignment order; a sync on GPU)."""
        return self.topk_weights_Tk.view(-1).tolist()

    @cached_property
    def sort_idx_list(self) -> list[int]:
        """sort_idx_A on the host (a sync on GPU): what a CPU kernel walks a small batch with."""
        return self.sort_idx_A.tolist()

    @cached_property
    def offsets_list(self) -> list[int]:
        """offsets_E1 on the host (a sync on GPU): what a CPU kernel plans its row ranges with."""
        return self.offsets_E1.tolist()

    @property
    def num_kept(self):
        """Kept assignments (0-d tensor, no sync until read; an int where the offsets are on the host)."""
        host = self.__dict__.get("offsets_list")
        return host[-1] if host is not None else self.offsets_E1[-1]

    @property
    def sorted_pos_Tk(self) -> torch.Tensor:
        """Row of each assignment in the exact sorted order (meaningful where kept)."""
        return self.offsets_E1[self.topk_ids_Tk] + self.rank_Tk

    # -- the block-aligned layout (block_sparse, the Triton kernels)

    @cached_property
    def _blocks(self) -> dict:
        return _block_layout(self.kept_counts_E, self.offsets_E1, self.block_size, self.num_assignments)

    @property
    def block_offsets_E1(self) -> torch.Tensor:
        return self._blocks["block_offsets_E1"]

    @property
    def tile_expert_B(self) -> torch.Tensor:
        return self._blocks["tile_expert_B"]

    @property
    def tile_row_B(self) -> torch.Tensor:
        return self._blocks["tile_row_B"]

    @property
    def max_tiles(self) -> int:
        return max_tiles(self.num_assignments, self.num_experts, self.block_size)

    @property
    def block_pos_Tk(self) -> torch.Tensor:
        """Row of each assignment in the block-aligned layout (meaningful where kept)."""
        return self.block_offsets_E1[self.topk_ids_Tk] + self.rank_Tk

    LAZY = ("counts_E", "rank_Tk", "kept_Tk", "kept_counts_E", "num_dropped", "sort_idx_A", "offsets_E1", "_blocks")

    def to(self, device) -> Routing:
        """Every field computed where it is now, then moved to `device` (to inspect a GPU layout on the host)."""
        other = copy.copy(self)
        for name in self.LAZY:
            value = getattr(self, name)
            move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v
            other.__dict__[name] = {k: move(v) for k, v in value.items()} if isinstance(value, dict) else move(value)
        other.topk_ids_Tk, other.topk_weights_Tk = self.topk_ids_Tk.to(device), self.topk_weights_Tk.to(device)
        return other

    def with_block_size(self, block_size: int) -> Routing:
        """The same routing with block-aligned offsets and the tile map for another block size."""
        if block_size == self.block_size:
            return self
        _check_block_size(block_size)
        other = copy.copy(self)
        other.block_size = block_size
        other.__dict__.pop("_blocks", None)
        return other


HOST = torch.device("cpu")


class HostRouting(Routing):
    """A Routing decided on the CPU host for a small batch: the host lists (topk_ids_list, topk_weights_list, and
    where known sort_idx_list and offsets_list) are the truth, and the [T, k] tensors and every other field are
    built from them only on first use (a torch.tensor of a short list costs ~13 µs with cold caches, a kernel
    walking the lists needs none)."""

    def __init__(self, ids: list[int], weights: list[float] | None, shape: tuple[int, int], num_experts: int,
                 capacity: int | None, block_size: int = DEFAULT_BLOCK_SIZE):  # fmt: skip
        self.num_experts, self.capacity, self.block_size = num_experts, capacity, block_size
        self.drop_policy = "position"
        self.shape = shape
        self.unit_weights = weights is None
        self.topk_ids_list = ids
        if weights is not None:
            self.topk_weights_list = weights

    @cached_property
    def topk_ids_Tk(self) -> torch.Tensor:
        return torch.tensor(self.topk_ids_list, dtype=torch.int64).view(self.shape)

    @cached_property
    def topk_weights_Tk(self) -> torch.Tensor:
        if self.unit_weights:
            return torch.ones(self.shape)
        return torch.tensor(self.topk_weights_list, dtype=torch.float32).view(self.shape)

    @property
    def device(self) -> torch.device:
        return HOST  # one object, not a new one per read

    @property
    def num_tokens(self) -> int:
        return self.shape[0]

    @property
    def top_k(self) -> int:
        return self.shape[1]

    @property
    def num_assignments(self) -> int:
        return self.shape[0] * self.shape[1]

    @cached_property
    def sort_idx_A(self) -> torch.Tensor:
        host = self.__dict__.get("sort_idx_list")
        return torch.tensor(host, dtype=torch.int64) if host is not None else Routing.sort_idx_A.func(self)

    LAZY = (*Routing.LAZY, "topk_ids_Tk", "topk_weights_Tk")

    def to(self, device) -> Routing:
        """A plain Routing of the same choice on `device`, every field computed."""
        plain = Routing(self.topk_ids_Tk, self.topk_weights_Tk, self.num_experts, self.capacity, self.drop_policy,
                        self.block_size)  # fmt: skip
        plain.unit_weights = self.unit_weights
        return plain.to(device)


# ---------------------------------------------------------------------------------------------- validation


def _check_block_size(block_size: int) -> None:
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")


def _check_options(num_experts: int, k: int, capacity_factor, drop_policy: str, block_size: int) -> None:
    if not 1 <= k <= num_experts:
        raise ValueError(f"k must be in 1..E={num_experts}, got k={k}")
    if capacity_factor is not None and not (capacity_factor > 0 and math.isfinite(capacity_factor)):
        raise ValueError(f"capacity_factor must be a positive number or None, got {capacity_factor}")
    if drop_policy not in DROP_POLICIES:
        raise ValueError(f"unknown drop_policy {drop_policy!r}; valid: {', '.join(DROP_POLICIES)}")
    _check_block_size(block_size)


def capacity_for(num_tokens: int, k: int, num_experts: int, capacity_factor: float | None) -> int | None:
    """ceil(capacity_factor * T * k / E) rows per expert, or None without a capacity factor."""
    if capacity_factor is None:
        return None
    return math.ceil(capacity_factor * num_tokens * k / num_experts)


# ---------------------------------------------------------------------------------------------- the gate


@triton.jit
def _topk_softmax_kernel(
    logits_ptr,  # [T, E], any float dtype
    ids_ptr,  # [T, k] int64
    weights_ptr,  # [T, k] fp32
    T,
    E,
    stride_t,
    TOP_K: tl.constexpr,
    TOP_K_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """Each program takes BLOCK_T rows: k rounds of (max, first index of the max, mask it out)."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    slots = tl.arange(0, TOP_K_PAD)
    mask = (rows[:, None] < T) & (cols[None, :] < E)
    x = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_t + cols[None, :], mask=mask, other=0.0)
    x = tl.where(cols[None, :] < E, x.to(tl.float32), -float("inf"))  # rows past T stay finite
    top = tl.max(x, axis=1)
    ids = tl.zeros([BLOCK_T, TOP_K_PAD], dtype=tl.int32)
    probs = tl.zeros([BLOCK_T, TOP_K_PAD], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        best = tl.max(x, axis=1)
        idx = tl.min(tl.where(x == best[:, None], cols[None, :], BLOCK_E), axis=1)
        ids = tl.where(slots[None, :] == j, idx[:, None], ids)
        probs = tl.where(slots[None, :] == j, tl.exp(best - top)[:, None], probs)
        x = tl.where(cols[None, :] == idx[:, None], -float("inf"), x)
    probs = probs / tl.sum(probs, axis=1)[:, None]
    out = rows[:, None].to(tl.int64) * TOP_K + slots[None, :]
    out_mask = (rows[:, None] < T) & (slots[None, :] < TOP_K)
    tl.store(ids_ptr + out, ids.to(tl.int64), mask=out_mask)
    tl.store(weights_ptr + out, probs, mask=out_mask)


def topk_softmax(logits_TE: torch.Tensor, k: int, impl: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts per token and the softmax over their logits.

    Returns (topk_ids_Tk int64 [T, k], topk_weights_Tk fp32 [T, k]); ids in descending logit order.
    """
    if impl == "torch":
        vals_Tk, ids_Tk = logits_TE.float().topk(k, dim=-1)
        return ids_Tk, torch.softmax(vals_Tk, dim=-1)
    require_triton(logits_TE)
    T, E = logits_TE.shape
    ids_Tk = torch.empty(T, k, dtype=torch.int64, device=logits_TE.device)
    weights_Tk = torch.empty(T, k, dtype=torch.float32, device=logits_TE.device)
    block_e = triton.next_power_of_2(E)
    block_t = max(1, min(64, 4096 // block_e))
    if T > 0:
        _topk_softmax_kernel[(triton.cdiv(T, block_t),)](
            logits_TE, ids_Tk, weights_Tk, T, E, logits_TE.stride(0),
            TOP_K=k, TOP_K_PAD=triton.next_power_of_2(k), BLOCK_T=block_t, BLOCK_E=block_e,
        )  # fmt: skip
    return ids_Tk, weights_Tk


# ---------------------------------------------------------------------------------------------- layout


def max_tiles(num_assignments: int, num_experts: int, block_size: int) -> int:
    """An upper bound on tiles of `block_size` rows over all experts' segments, known without the data.

    Each non-empty expert adds at most one partial tile, and no tile is empty.
    """
    A = num_assignments
    return min(A, A // block_size + min(num_experts, A))


def _block_layout(kept_counts_E: torch.Tensor, offsets_E1: torch.Tensor, block_size: int, num_assignments: int):
    """Block-aligned offsets [E+1], and the tile -> expert / first-row maps [max_tiles]."""
    E = kept_counts_E.shape[0]
    tiles_E = (kept_counts_E + block_size - 1) // block_size
    tile_ends_E = torch.cumsum(tiles_E, 0)
    block_offsets_E1 = torch.cat([tile_ends_E.new_zeros(1), tile_ends_E * block_size])
    tile_B = torch.arange(max_tiles(num_assignments, E, block_size), device=kept_counts_E.device)
    expert_B = torch.searchsorted(tile_ends_E, tile_B, right=True)
    used_B = expert_B < E
    expert_B = expert_B.clamp(max=E - 1)
    first_tile_B = tile_ends_E[expert_B] - tiles_E[expert_B]
    row_B = offsets_E1[expert_B] + (tile_B - first_tile_B) * block_size
    return {
        "block_offsets_E1": block_offsets_E1,
        "tile_expert_B": torch.where(used_B, expert_B, -1),
        "tile_row_B": torch.where(used_B, row_B, -1),
    }


def _queue_order(ids_A: torch.Tensor, weights_A: torch.Tensor, drop_policy: str) -> torch.Tensor:
    """Assignments sorted by expert; inside an expert, in the order the drop policy serves them."""
    if drop_policy == "position":
        return torch.sort(ids_A, stable=True).indices
    by_weight_A = torch.sort(weights_A, descending=True, stable=True).indices
    return by_weight_A[torch.sort(ids_A[by_weight_A], stable=True).indices]


def routing_from_topk(
    topk_ids_Tk: torch.Tensor,
    topk_weights_Tk: torch.Tensor,
    num_experts: int,
    capacity_factor: float | None = None,
    drop_policy: str = "position",
    block_size: int = DEFAULT_BLOCK_SIZE,
    validate: bool = True,
) -> Routing:
    """Build a Routing from expert ids chosen elsewhere.

    Args:
        topk_ids_Tk: int [T, k] expert of each assignment, in 0..num_experts-1.
        topk_weights_Tk: float [T, k] combine weight of each assignment (stored as fp32).
        num_experts: E (for a rank of an expert-parallel layer: its local experts, ids 0..E_local-1).
        capacity_factor: None (dropless) or > 0: capacity = ceil(cf * T * k / E).
        drop_policy: "position" (first come, first kept, in token order) or "weight" (highest gate
            weight first, as in batch-prioritised routing).
        block_size: rows per tile / block for the block-aligned layout (power of two >= 16).
        validate: check ids are in range; this reads the ids on the host (a sync on GPU).
    Rows that arrive already grouped (after an all-to-all) are the case k = 1: ids [R, 1], weights 1.0.
    """
    if topk_ids_Tk.dim() != 2 or topk_weights_Tk.shape != topk_ids_Tk.shape:
        raise ValueError(
            f"topk_ids and topk_weights must both be [T, k]; got {tuple(topk_ids_Tk.shape)} "
            f"and {tuple(topk_weights_Tk.shape)}"
        )
    if topk_ids_Tk.dtype.is_floating_point or topk_ids_Tk.dtype == torch.bool:
        raise ValueError(f"topk_ids must be an integer tensor, got {topk_ids_Tk.dtype}")
    T, k = topk_ids_Tk.shape
    _check_options(num_experts, k, capacity_factor, drop_policy, block_size)
    if validate and topk_ids_Tk.numel() and not 0 <= int(topk_ids_Tk.min()) <= int(topk_ids_Tk.max()) < num_experts:
        raise ValueError(f"expert ids must be in 0..{num_experts - 1}, got a value outside that range")
    ids_Tk = topk_ids_Tk if topk_ids_Tk.dtype == torch.int64 else topk_ids_Tk.long()
    weights_Tk = topk_weights_Tk if topk_weights_Tk.dtype == torch.float32 else topk_weights_Tk.float()
    capacity = capacity_for(T, k, num_experts, capacity_factor)
    return Routing(ids_Tk.contiguous(), weights_Tk.contiguous(), num_experts, capacity, drop_policy, block_size)


HOST_ROWS = 256  # up to this many rows on the CPU, the grouping is a few Python lines, not tensor ops


def routing_for_rows(expert_ids_R, num_experts: int, block_size: int = DEFAULT_BLOCK_SIZE, device=None) -> Routing:
    """The routing of rows that arrive already grouped by destination (after an all-to-all): k = 1, weight 1,
    dropless. Built once per received batch, cheaply: the order and offsets come straight from the ids (on
    the host for a CPU batch of up to HOST_ROWS rows), so no general queue/drop machinery runs.
    expert_ids_R: int64 [R] (a tensor, or a list of ints on the host) local expert of each row, 0..num_experts-1."""
    host_ids = expert_ids_R if isinstance(expert_ids_R, list) else None
    on_cpu = device is None or torch.device(device).type == "cpu"
    if host_ids is not None and on_cpu and len(host_ids) <= HOST_ROWS:  # decode: lists only, tensors if asked
        routing = HostRouting(host_ids, None, (len(host_ids), 1), num_experts, None, block_size)
        routing.__dict__.update(_host_layout(host_ids, num_experts))
        return routing
    ids_R = torch.tensor(host_ids, dtype=torch.int64, device=device) if host_ids is not None else expert_ids_R
    R, device = ids_R.shape[0], ids_R.device
    routing = Routing(ids_R.view(R, 1), torch.ones(R, 1, device=device), num_experts, None, "position", block_size)
    routing.unit_weights = True
    if device.type == "cpu" and R <= HOST_ROWS:
        layout = _host_layout(ids_R.tolist(), num_experts)
        order_R = torch.tensor(layout["sort_idx_list"], dtype=torch.int64)
        routing.__dict__.update(layout, sort_idx_A=order_R, _queue_A=order_R)
    return routing


def _host_layout(ids: list[int], num_experts: int) -> dict:
    """Rows' order by expert (stable) and the segment offsets, in a few Python lines."""
    counts = [0] * num_experts
    for e in ids:
        counts[e] += 1
    return {"sort_idx_list": sorted(range(len(ids)), key=ids.__getitem__),
            "offsets_list": [0, *itertools.accumulate(counts)]}  # fmt: skip


HOST_GATE_LOGITS = 128  # up to this many logits (T * E), the host gate's Python loop beats torch's topk + softmax


def route_host(logits_TE: list[list[float]], k: int, capacity_factor: float | None = None) -> Routing:
    """The top-k softmax gate of `route` for a small batch whose logits are on the host (T * E <= HOST_GATE_LOGITS:
    a few Python lines where tensor ops cost ~5 µs each, more with cold caches): the same choice (ids in descending
    logit order, equal logits to the lower expert id) and weights, as a HostRouting.
    logits_TE: T rows of E floats."""
    check_gate_options(len(logits_TE[0]) if logits_TE else 0, k, capacity_factor)
    return host_gate(logits_TE, k, capacity_factor)


def check_gate_options(num_experts: int, k: int, capacity_factor: float | None) -> None:
    """ValueError unless 1 <= k <= E and the capacity factor is None or positive: what route and route_host check
    on every call, for a caller that calls host_gate many times with the same options."""
    _check_options(num_experts, k, capacity_factor, "position", DEFAULT_BLOCK_SIZE)


def host_gate(logits_TE: list[list[float]], k: int, capacity_factor: float | None) -> Routing:
    """route_host without its option checks (check_gate_options, once): the MoE layer's decode gate, where each
    line of Python costs a few µs with the caches the experts left."""
    E = len(logits_TE[0]) if logits_TE else 0
    ids, weights = [], []
    for row in logits_TE:
        top = sorted(range(E), key=row.__getitem__, reverse=True)[:k]  # stable: equal logits keep the lower id first
        exps = [math.exp(row[e] - row[top[0]]) for e in top]
        total = sum(exps)
        ids += top
        weights += [v / total for v in exps]
    T = len(logits_TE)
    return HostRouting(ids, weights, (T, k), E, capacity_for(T, k, E, capacity_factor))


def route(
    logits_TE: torch.Tensor,
    k: int,
    capacity_factor: float | None = None,
    drop_policy: str = "position",
    block_size: int = DEFAULT_BLOCK_SIZE,
    impl: str = "torch",
) -> Routing:
    """Top-k softmax gate on router logits, then capacity, drops and layout (see `routing_from_topk`).

    Args:
        logits_TE: float [T, E] router logits.
        k: experts per token (1..E).
        impl: "torch" (torch.topk + softmax) or "triton" (one fused top-k softmax kernel).
    Returns a frozen Routing; topk_weights_Tk is the softmax over each token's top-k logits.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    if logits_TE.dim() != 2 or not logits_TE.dtype.is_floating_point:
        raise ValueError(f"logits must be a float [T, E] tensor, got {logits_TE.dtype} {tuple(logits_TE.shape)}")
    E = logits_TE.shape[1]
    _check_options(E, k, capacity_factor, drop_policy, block_size)
    ids_Tk, weights_Tk = topk_softmax(logits_TE, k, impl)
    return routing_from_topk(ids_Tk, weights_Tk, E, capacity_factor, drop_policy, block_size, validate=False)
