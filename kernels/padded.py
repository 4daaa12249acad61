# T = tokens, E = experts, C = capacity (rows per expert), H = hidden, I = expert FFN (variable FFN: ruff rejects I),
# k = active
"""padded: static capacity, as in GShard, Switch and DeepSpeed-MoE.

Every expert gets exactly C rows: kept tokens are scattered into a zero-filled [E, C, H] buffer (slot =
the assignment's place in its expert's queue), overflow beyond C is dropped by the routing's drop policy,
and batched GEMMs run over all E * C slots — the padding is computed, as in those systems. Outputs are
gathered back and weighted. C = the routing's capacity; without a capacity factor every expert is padded
to the busiest one (DeepSpeed's "dropless"), which needs the max count on the host (one sync).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from moebench.kernels.common import KernelStats, MemoryMeter, check_inputs, combine
from moebench.kernels.routing import Routing
from moebench.kernels.triton_utils import triton_flags

BLOCK_M = 64


@triton.jit
def _padded_gate_up_kernel(
    x_ptr,  # [E, C, H]
    w_gate_ptr,  # [E, H, I]
    w_up_ptr,  # [E, H, I]
    h_ptr,  # [E, C, I] out: silu(x @ w_gate) * (x @ w_up)
    C,
    H,
    FFN,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    tiles_per_expert = tl.cdiv(C, BLOCK_M)
    e = (tl.program_id(0) // tiles_per_expert).to(tl.int64)
    rows = (tl.program_id(0) % tiles_per_expert) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    x_rows = x_ptr + (e * C + rows)[:, None] * H
    w_off = e * H * FFN + cols[None, :]
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_rows + ks[None, :], mask=(rows[:, None] < C) & (ks[None, :] < H), other=0.0)
        w_mask = (ks[:, None] < H) & (cols[None, :] < FFN)
        b_gate = tl.load(w_gate_ptr + w_off + ks[:, None] * FFN, mask=w_mask, other=0.0)
        b_up = tl.load(w_up_ptr + w_off + ks[:, None] * FFN, mask=w_mask, other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b_gate = b_gate.to(tl.float32)
            b_up = b_up.to(tl.float32)
        acc_gate = tl.dot(a, b_gate, acc_gate, input_precision=DOT_PREC)
        acc_up = tl.dot(a, b_up, acc_up, input_precision=DOT_PREC)
    h = acc_gate * tl.sigmoid(acc_gate) * acc_up
    h_mask = (rows[:, None] < C) & (cols[None, :] < FFN)
    tl.store(h_ptr + (e * C + rows)[:, None] * FFN + cols[None, :], h.to(h_ptr.dtype.element_ty), mask=h_mask)


@triton.jit
def _padded_down_kernel(
    h_ptr,  # [E, C, I]
    w_down_ptr,  # [E, I, H]
    out_ptr,  # [E, C, H] out: h @ w_down
    C,
    H,
    FFN,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    tiles_per_expert = tl.cdiv(C, BLOCK_M)
    e = (tl.program_id(0) // tiles_per_expert).to(tl.int64)
    rows = (tl.program_id(0) % tiles_per_expert) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    h_rows = h_ptr + (e * C + rows)[:, None] * FFN
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, FFN, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(h_rows + ks[None, :], mask=(rows[:, None] < C) & (ks[None, :] < FFN), other=0.0)
        b = tl.load(
            w_down_ptr + e * FFN * H + ks[:, None] * H + cols[None, :],
            mask=(ks[:, None] < FFN) & (cols[None, :] < H),
            other=0.0,
        )
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    out_mask = (rows[:, None] < C) & (cols[None, :] < H)
    tl.store(out_ptr + (e * C + rows)[:, None] * H + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _ffn_torch(x_ECH, w_gate_EHI, w_up_EHI, w_down_EIH, meter: MemoryMeter) -> torch.Tensor:
    """Batched GEMMs over every slot, padding included: [E, C, H] -> [E, C, H]."""
    h_ECI = meter.alloc(torch.bmm(x_ECH, w_gate_EHI))
    up_ECI = meter.alloc(torch.bmm(x_ECH, w_up_EHI))
    F.silu(h_ECI, inplace=True).mul_(up_ECI)
    meter.free(up_ECI)
    out_ECH = meter.alloc(torch.bmm(h_ECI, w_down_EIH))
    meter.free(h_ECI)
    return out_ECH


def _ffn_triton(x_ECH, w_gate_EHI, w_up_EHI, w_down_EIH, meter: MemoryMeter) -> torch.Tensor:
    """The same batched GEMMs as two Triton kernels (gate+up fused with SwiGLU, then down)."""
    E, C, H = x_ECH.shape
    FFN = w_gate_EHI.shape[2]
    flags = triton_flags(x_ECH)
    h_ECI = meter.alloc(x_ECH.new_empty(E, C, FFN))
    out_ECH = meter.alloc(x_ECH.new_empty(E, C, H))
    rows = E * triton.cdiv(C, BLOCK_M)
    if rows:
        grid_up = (rows, triton.cdiv(FFN, flags["BLOCK_N"]))
        _padded_gate_up_kernel[grid_up](x_ECH, w_gate_EHI, w_up_EHI, h_ECI, C, H, FFN, BLOCK_M=BLOCK_M, **flags)
        grid_down = (rows, triton.cdiv(H, flags["BLOCK_N"]))
        _padded_down_kernel[grid_down](h_ECI, w_down_EIH, out_ECH, C, H, FFN, BLOCK_M=BLOCK_M, **flags)
    meter.free(h_ECI)
    return out_ECH


def padded_experts(
    x_TH: torch.Tensor,
    routing: Routing,
    w_gate_EHI: torch.Tensor,
    w_up_EHI: torch.Tensor,
    w_down_EIH: torch.Tensor,
    impl: str = "torch",
) -> tuple[torch.Tensor, KernelStats]:
    """Static-capacity experts. Returns (y_TH in x's dtype, stats); executed rows = E * C."""
    T, H, FFN, E = check_inputs(x_TH, routing, w_gate_EHI, w_up_EHI, w_down_EIH, impl)
    C = routing.capacity if routing.capacity is not None else int(routing.counts_E.max()) if T else 0
    meter = MemoryMeter(x_TH.device)
    slot_Tk = routing.topk_ids_Tk * C + routing.rank_Tk
    # Dropped assignments are written to one spare row past the E * C slots, so no sync is needed.
    x_slots_RH = meter.alloc(x_TH.new_zeros(E * C + 1, H))
    x_slots_RH[torch.where(routing.kept_Tk, slot_Tk, E * C)] = x_TH[:, None, :].expand(T, routing.top_k, H)
    x_ECH = x_slots_RH[: E * C].view(E, C, H)
    ffn = _ffn_triton if impl == "triton" else _ffn_torch
    out_ECH = ffn(x_ECH, w_gate_EHI, w_up_EHI, w_down_EIH, meter)
    meter.free(x_slots_RH)
    y_TH = combine(out_ECH.view(E * C, H), slot_Tk, routing, x_TH.dtype, meter)
    stats = KernelStats(
        hidden=H,
        ffn=FFN,
        num_useful_rows=routing.num_kept,
        num_executed_rows=E * C,
        num_dropped=routing.num_dropped,
        num_padded_rows=E * C - routing.num_kept,
        peak_extra_bytes=meter.peak_bytes(y_TH),
    )
    return y_TH, stats
