# T = tokens, E = experts, H = hidden, I = expert FFN (variable FFN: ruff rejects I), k = active, S = block size,
# B = row blocks (tiles), J = column blocks per expert (ceil(I / S)), N = nonzero blocks (B * J), P = B * S rows
"""block_sparse: MegaBlocks (Gale et al., 2023) — the expert FFN as block-sparse matmuls.

Tokens are sorted by expert and each expert's rows are padded *in memory* to a multiple of the block size
S (zero rows), giving x_pad [P, H]. The intermediate of all experts is one block-sparse [P, E * I] matrix
whose nonzero S x S blocks are (row block of expert e) x (column blocks e*J .. e*J + J - 1): its topology
in BCSR form is `Topology`. Then
- SDD (sparse = dense x dense, sampled at the topology): for every nonzero block, gate and up blocks of
  x_pad @ [w_gate | w_up] as [H, E * I], SwiGLU fused: h data [N, S, S];
- DSD (dense = sparse x dense): out_pad [P, H] = h [P, E * I] @ w_down as [E * I, H], walking each row
  block's nonzero blocks.
Outputs are gathered back from the padded rows and weighted. The torch path computes the same blocks:
a grouped GEMM over the block-aligned segments of x_pad is exactly the nonzero blocks of the topology
(every row block of expert e times all J column blocks of expert e), padding rows included.
Sizes use the routing's bound on tiles (max_tiles), so nothing syncs; executed rows = used row blocks * S.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from moebench.kernels.common import KernelStats, MemoryMeter, check_inputs, combine, grouped_swiglu
from moebench.kernels.routing import Routing
from moebench.kernels.triton_utils import triton_flags


@dataclass(frozen=True)
class Topology:
    """BCSR structure of the [P, E * I] intermediate in S x S blocks.

    column_indices_N int64 [B * J]: global column block (e * J + j) of each nonzero block, -1 in row
    blocks past the last used one; row_offsets_B1 int64 [B + 1]: row block r's blocks are
    column_indices_N[row_offsets_B1[r]:row_offsets_B1[r + 1]].
    """

    block_size: int
    blocks_per_expert: int
    column_indices_N: torch.Tensor
    row_offsets_B1: torch.Tensor


def make_topology(routing: Routing, ffn: int) -> Topology:
    """The MoE topology: row block r (expert e = routing.tile_expert_B[r]) holds column blocks of expert e."""
    S = routing.block_size
    J = triton.cdiv(ffn, S)
    expert_B = routing.tile_expert_B
    j_J = torch.arange(J, device=expert_B.device)
    column_indices_BJ = torch.where(expert_B[:, None] >= 0, expert_B[:, None] * J + j_J, -1)
    row_offsets_B1 = torch.arange(routing.max_tiles + 1, device=expert_B.device) * J
    return Topology(S, J, column_indices_BJ.reshape(-1), row_offsets_B1)


@triton.jit
def _sdd_gate_up_kernel(
    x_ptr,  # [P, H] rows sorted by expert, each expert padded to a multiple of S
    column_indices_ptr,  # [N]
    w_gate_ptr,  # [E, H, I], read as [H, E * I] block columns
    w_up_ptr,  # [E, H, I]
    data_ptr,  # [N, S, S] out: SwiGLU of the nonzero blocks
    H,
    FFN,
    J,
    S: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    block = tl.program_id(0).to(tl.int64)
    column = tl.load(column_indices_ptr + block)
    if column < 0:
        return
    e = column // J
    rows = (block // J) * S + tl.arange(0, S)
    cols = (column % J) * S + tl.arange(0, S)  # inside expert e
    w_off = e * H * FFN + cols[None, :]
    acc_gate = tl.zeros([S, S], dtype=tl.float32)
    acc_up = tl.zeros([S, S], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_ptr + rows[:, None] * H + ks[None, :], mask=ks[None, :] < H, other=0.0)
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
    s = tl.arange(0, S)
    tl.store(data_ptr + block * S * S + s[:, None] * S + s[None, :], h.to(data_ptr.dtype.element_ty))


@triton.jit
def _dsd_down_kernel(
    data_ptr,  # [N, S, S] nonzero blocks of h
    column_indices_ptr,  # [N]
    row_offsets_ptr,  # [B + 1]
    w_down_ptr,  # [E, I, H], read as [E * I, H] block rows
    out_ptr,  # [P, H] out
    H,
    FFN,
    J,
    S: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    row_block = tl.program_id(0).to(tl.int64)
    first = tl.load(row_offsets_ptr + row_block)
    if tl.load(column_indices_ptr + first) < 0:
        return
    s = tl.arange(0, S)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([S, BLOCK_N], dtype=tl.float32)
    for block in range(first, tl.load(row_offsets_ptr + row_block + 1)):
        column = tl.load(column_indices_ptr + block)
        ks = (column % J) * S + s  # inside expert column // J
        a = tl.load(data_ptr + block * S * S + s[:, None] * S + s[None, :], mask=ks[None, :] < FFN, other=0.0)
        b = tl.load(
            w_down_ptr + (column // J) * FFN * H + ks[:, None] * H + cols[None, :],
            mask=(ks[:, None] < FFN) & (cols[None, :] < H),
            other=0.0,
        )
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    rows = row_block * S + s
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=cols[None, :] < H)


def _ffn_torch(x_PH, routing: Routing, w_gate_EHI, w_up_EHI, w_down_EIH, meter: MemoryMeter) -> torch.Tensor:
    """The topology's nonzero blocks, expert by expert, as grouped GEMMs over the block-aligned segments."""
    out_PH = meter.alloc(torch.empty_like(x_PH))

    def store(r0: int, r1: int, out_CH: torch.Tensor) -> None:
        out_PH[r0:r1] = out_CH

    seg_ends_E = routing.block_offsets_E1[1:]
    grouped_swiglu(x_PH, None, seg_ends_E, w_gate_EHI, w_up_EHI, w_down_EIH, x_PH.shape[0], store, meter)
    return out_PH


def _ffn_triton(x_PH, routing: Routing, w_gate_EHI, w_up_EHI, w_down_EIH, meter: MemoryMeter) -> torch.Tensor:
    """SDD (gate+up, SwiGLU fused) over the nonzero blocks, then DSD (down) per row block."""
    P, H = x_PH.shape
    FFN = w_gate_EHI.shape[2]
    topo = make_topology(routing, FFN)
    S, J, N = topo.block_size, topo.blocks_per_expert, topo.column_indices_N.shape[0]
    flags = triton_flags(x_PH)
    data_NSS = meter.alloc(x_PH.new_empty(N, S, S))
    out_PH = meter.alloc(x_PH.new_empty(P, H))
    if N:
        _sdd_gate_up_kernel[(N,)](x_PH, topo.column_indices_N, w_gate_EHI, w_up_EHI, data_NSS, H, FFN, J, S=S, **flags)
        grid_down = (routing.max_tiles, triton.cdiv(H, flags["BLOCK_N"]))
        _dsd_down_kernel[grid_down](
            data_NSS, topo.column_indices_N, topo.row_offsets_B1, w_down_EIH, out_PH, H, FFN, J, S=S, **flags
        )
    meter.free(data_NSS)
    return out_PH


def block_sparse_experts(
    x_TH: torch.Tensor,
    routing: Routing,
    w_gate_EHI: torch.Tensor,
    w_up_EHI: torch.Tensor,
    w_down_EIH: torch.Tensor,
    impl: str = "torch",
) -> tuple[torch.Tensor, KernelStats]:
    """MegaBlocks-style experts with block size routing.block_size. Returns (y_TH in x's dtype, stats)."""
    T, H, FFN, _ = check_inputs(x_TH, routing, w_gate_EHI, w_up_EHI, w_down_EIH, impl)
    meter = MemoryMeter(x_TH.device)
    P = routing.max_tiles * routing.block_size
    pos_Tk = routing.block_pos_Tk
    # padded gather: zero rows pad each expert; dropped assignments go to one spare row past P
    x_pad_RH = meter.alloc(x_TH.new_zeros(P + 1, H))
    x_pad_RH[torch.where(routing.kept_Tk, pos_Tk, P)] = x_TH[:, None, :].expand(T, routing.top_k, H)
    ffn = _ffn_triton if impl == "triton" else _ffn_torch
    out_PH = ffn(x_pad_RH[:P], routing, w_gate_EHI, w_up_EHI, w_down_EIH, meter)
    meter.free(x_pad_RH)
    y_TH = combine(out_PH, pos_Tk, routing, x_TH.dtype, meter)
    executed_rows = routing.block_offsets_E1[-1]
    stats = KernelStats(
        hidden=H,
        ffn=FFN,
        num_useful_rows=routing.num_kept,
        num_executed_rows=executed_rows,
        num_dropped=routing.num_dropped,
        num_padded_rows=executed_rows - routing.num_kept,
        peak_extra_bytes=meter.peak_bytes(y_TH),
    )
    return y_TH, stats
