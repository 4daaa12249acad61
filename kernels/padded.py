# T = tokens, H = hidden, F = expert FFN width, E = experts, k = experts per token, C = capacity (rows per expert)
"""padded: static capacity, as in GShard, Switch and DeepSpeed-MoE.

Every expert gets exactly C rows: kept tokens are scattered into a zero-filled [E, C, H] buffer (slot =
the assignment's place in its expert's queue), overflow beyond C is dropped by the routing's drop policy,
and batched GEMMs run over all E * C slots — the padding is computed, as in those systems. Outputs are
gathered back and weighted. C = the routing's capacity; without a capacity factor every expert is padded
to the busiest one (DeepSpeed's "dropless"), which needs the max count on the host (one sync).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moebench.kernels.common import KernelStats, MemoryMeter, check_inputs, combine, scatter_rows, swiglu_ffn
from moebench.kernels.routing import Routing
from moebench.kernels.triton_utils import down_tile, swiglu_tile, triton_flags

BLOCK_M = 64


@triton.jit
def _slot_tile(C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's expert, its BLOCK_M slots (rows of that expert, in 0 .. C) and BLOCK_N columns."""
    tiles_per_expert = tl.cdiv(C, BLOCK_M)
    e = (tl.program_id(0) // tiles_per_expert).to(tl.int64)
    rows = (tl.program_id(0) % tiles_per_expert) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return e, rows, cols


@triton.jit
def _padded_gate_up_kernel(
    x_ptr,  # [E, C, H]
    w_gate_ptr,  # [E, H, F]
    w_up_ptr,  # [E, H, F]
    h_ptr,  # [E, C, F] out: silu(x @ w_gate) * (x @ w_up)
    C,
    H,
    F,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    e, rows, cols = _slot_tile(C, BLOCK_M, BLOCK_N)
    slots = e * C + rows
    w_off = e * H * F
    h = swiglu_tile(
        x_ptr + slots * H, rows < C, w_gate_ptr + w_off, w_up_ptr + w_off, cols, H, F,
        BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, DOT_PREC,
    )  # fmt: skip
    h_mask = (rows[:, None] < C) & (cols[None, :] < F)
    tl.store(h_ptr + slots[:, None] * F + cols[None, :], h.to(h_ptr.dtype.element_ty), mask=h_mask)


@triton.jit
def _padded_down_kernel(
    h_ptr,  # [E, C, F]
    w_down_ptr,  # [E, F, H]
    out_ptr,  # [E, C, H] out: h @ w_down
    C,
    H,
    F,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    e, rows, cols = _slot_tile(C, BLOCK_M, BLOCK_N)
    slots = e * C + rows
    acc = down_tile(
        h_ptr + slots * F, rows < C, w_down_ptr + e * F * H, cols, H, F, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, DOT_PREC
    )
    out_mask = (rows[:, None] < C) & (cols[None, :] < H)
    tl.store(out_ptr + slots[:, None] * H + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _ffn_torch(x_ECH, w_gate_EHF, w_up_EHF, w_down_EFH, meter: MemoryMeter) -> torch.Tensor:
    """Batched GEMMs over every slot, padding included: [E, C, H] -> [E, C, H]."""
    return swiglu_ffn(x_ECH, w_gate_EHF, w_up_EHF, w_down_EFH, meter, torch.bmm)


def padded_experts(
    x_TH: torch.Tensor,
    routing: Routing,
    w_gate_EHF: torch.Tensor,
    w_up_EHF: torch.Tensor,
    w_down_EFH: torch.Tensor,
    impl: str = "torch",
) -> tuple[torch.Tensor, KernelStats]:
    """Static-capacity experts. Returns (y_TH in x's dtype, stats); executed rows = E * C (torch) or
    E * ceil(C / BLOCK_M) * BLOCK_M (Triton: its GEMMs run whole tiles of BLOCK_M rows, as dynamic counts)."""
    T, H, F, E = check_inputs(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH, impl)
    C = routing.capacity if routing.capacity is not None else int(routing.counts_E.max()) if T else 0
    meter = MemoryMeter.of(x_TH)
    slot_Tk = routing.topk_ids_Tk * C + routing.rank_Tk
    x_slots_RH = scatter_rows(x_TH, routing, slot_Tk, E * C, meter)
    x_ECH = x_slots_RH[: E * C].view(E, C, H)
    ffn = _ffn_triton if impl == "triton" else _ffn_torch
    out_ECH = ffn(x_ECH, w_gate_EHF, w_up_EHF, w_down_EFH, meter)
    meter.free(x_slots_RH)
    y_TH = combine(out_ECH.view(E * C, H), slot_Tk, routing, x_TH.dtype, meter)
    stats = KernelStats(
        hidden=H,
        ffn=F,
        num_useful_rows=routing.num_kept,
        num_executed_rows=E * (triton.cdiv(C, BLOCK_M) * BLOCK_M if impl == "triton" else C),
        num_dropped=routing.num_dropped,
        num_padded_rows=E * C - routing.num_kept,
        peak_extra_bytes=meter.peak_bytes(y_TH),
    )
    return y_TH, stats


def _ffn_triton(x_ECH, w_gate_EHF, w_up_EHF, w_down_EFH, meter: MemoryMeter) -> torch.Tensor:
    """The same batched GEMMs as two Triton kernels (gate+up fused with SwiGLU, then down)."""
    E, C, H = x_ECH.shape
    F = w_gate_EHF.shape[2]
    flags = triton_flags(x_ECH)
    h_ECF = meter.alloc(x_ECH.new_empty(E, C, F))
    out_ECH = meter.alloc(x_ECH.new_empty(E, C, H))
    row_tiles = E * triton.cdiv(C, BLOCK_M)
    if row_tiles:
        grid_up = (row_tiles, triton.cdiv(F, flags["BLOCK_N"]))
        _padded_gate_up_kernel[grid_up](x_ECH, w_gate_EHF, w_up_EHF, h_ECF, C, H, F, BLOCK_M=BLOCK_M, **flags)
        grid_down = (row_tiles, triton.cdiv(H, flags["BLOCK_N"]))
        _padded_down_kernel[grid_down](h_ECF, w_down_EFH, out_ECH, C, H, F, BLOCK_M=BLOCK_M, **flags)
    meter.free(h_ECF)
    return out_ECH
