# T = tokens, H = hidden, F = FFN width, E = experts, k = top-k, B x J blocks of Q x Q (Z nonzero), R = B*Q rows
"""block_sparse: MegaBlocks (Gale et al., 2023) — the expert FFN as block-sparse matmuls.

Tokens are sorted by expert and each expert's rows are padded *in memory* to a multiple of the block size
Q (zero rows), giving x_pad [R, H]: B row blocks (the routing's max_tiles), R = B * Q rows. The intermediate
of all experts is one block-sparse [R, E * F] matrix whose nonzero Q x Q blocks are (row block of expert e)
x (column blocks e*J .. e*J + J - 1), J = ceil(F / Q) column blocks per expert, Z = B * J nonzero blocks
(those of unused row blocks marked -1): its topology in BCSR form is `Topology`. Then
- SDD (sparse = dense x dense, sampled at the topology): for every nonzero block, gate and up blocks of
  x_pad @ [w_gate | w_up] as [H, E * F], SwiGLU fused: h data [Z, Q, Q];
- DSD (dense = sparse x dense): out_pad [R, H] = h [R, E * F] @ w_down as [E * F, H], walking each row
  block's nonzero blocks.
Outputs are gathered back from the padded rows and weighted. The torch path computes the same blocks:
a grouped GEMM over the block-aligned segments of x_pad is exactly the nonzero blocks of the topology
(every row block of expert e times all J column blocks of expert e), padding rows included.
Sizes use the routing's bound on tiles (max_tiles), so nothing syncs; executed rows = used row blocks * Q.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from moebench.kernels.common import (
    KernelStats,
    MemoryMeter,
    check_inputs,
    combine,
    grouped_swiglu,
    scatter_rows,
)
from moebench.kernels.routing import Routing
from moebench.kernels.triton_utils import load_weight_tile, swiglu_tile, triton_flags


@dataclass(frozen=True)
class Topology:
    """BCSR structure of the [R, E * F] intermediate in Q x Q blocks.

    column_indices_Z int64 [B * J]: global column block (e * J + j) of each nonzero block, -1 in row
    blocks past the last used one; row_offsets_B1 int64 [B + 1]: row block b's blocks are
    column_indices_Z[row_offsets_B1[b]:row_offsets_B1[b + 1]].
    """

    block_size: int
    blocks_per_expert: int
    column_indices_Z: torch.Tensor
    row_offsets_B1: torch.Tensor


def make_topology(routing: Routing, ffn: int) -> Topology:
    """The MoE topology: row block b (expert e = routing.tile_expert_B[b]) holds column blocks of expert e."""
    Q = routing.block_size
    J = triton.cdiv(ffn, Q)
    expert_B = routing.tile_expert_B
    j_J = torch.arange(J, device=expert_B.device)
    column_indices_BJ = torch.where(expert_B[:, None] >= 0, expert_B[:, None] * J + j_J, -1)
    row_offsets_B1 = torch.arange(routing.max_tiles + 1, device=expert_B.device) * J
    return Topology(Q, J, column_indices_BJ.reshape(-1), row_offsets_B1)


@triton.jit
def _sdd_gate_up_kernel(
    x_ptr,  # [R, H] rows sorted by expert, each expert padded to a multiple of Q
    column_indices_ptr,  # [Z]
    w_gate_ptr,  # [E, H, F], read as [H, E * F] block columns
    w_up_ptr,  # [E, H, F]
    data_ptr,  # [Z, Q, Q] out: SwiGLU of the nonzero blocks
    H,
    F,
    J,
    Q: tl.constexpr,
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
    rows = (block // J) * Q + tl.arange(0, Q)
    cols = (column % J) * Q + tl.arange(0, Q)  # inside expert e
    w_off = e * H * F
    every_row = tl.full([Q], True, tl.int1)  # a used row block lies inside x_pad
    h = swiglu_tile(
        x_ptr + rows * H, every_row, w_gate_ptr + w_off, w_up_ptr + w_off, cols, H, F,
        Q, Q, BLOCK_K, UPCAST, DOT_PREC,
    )  # fmt: skip
    q = tl.arange(0, Q)
    tl.store(data_ptr + block * Q * Q + q[:, None] * Q + q[None, :], h.to(data_ptr.dtype.element_ty))


@triton.jit
def _dsd_down_kernel(
    data_ptr,  # [Z, Q, Q] nonzero blocks of h
    column_indices_ptr,  # [Z]
    row_offsets_ptr,  # [B + 1]
    w_down_ptr,  # [E, F, H], read as [E * F, H] block rows
    out_ptr,  # [R, H] out
    H,
    F,
    J,
    Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    row_block = tl.program_id(0).to(tl.int64)
    first = tl.load(row_offsets_ptr + row_block)
    if tl.load(column_indices_ptr + first) < 0:
        return
    q = tl.arange(0, Q)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([Q, BLOCK_N], dtype=tl.float32)
    for block in range(first, tl.load(row_offsets_ptr + row_block + 1)):
        column = tl.load(column_indices_ptr + block)
        ks = (column % J) * Q + q  # inside expert column // J
        a = tl.load(data_ptr + block * Q * Q + q[:, None] * Q + q[None, :], mask=ks[None, :] < F, other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
        b = load_weight_tile(w_down_ptr + (column // J) * F * H, ks, cols, F, H, UPCAST)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
    rows = row_block * Q + q
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=cols[None, :] < H)


def _ffn_torch(x_RH, routing: Routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter: MemoryMeter) -> torch.Tensor:
    """The topology's nonzero blocks, expert by expert, as grouped GEMMs over the block-aligned segments."""
    out_RH = meter.alloc(torch.empty_like(x_RH))

    def store(r0: int, r1: int, chunk_RH: torch.Tensor) -> None:
        out_RH[r0:r1] = chunk_RH

    seg_ends_E = routing.block_offsets_E1[1:]
    grouped_swiglu(x_RH, None, seg_ends_E, w_gate_EHF, w_up_EHF, w_down_EFH, x_RH.shape[0], store, meter)
    return out_RH


def _ffn_triton(x_RH, routing: Routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter: MemoryMeter) -> torch.Tensor:
    """SDD (gate+up, SwiGLU fused) over the nonzero blocks, then DSD (down) per row block."""
    R, H = x_RH.shape
    F = w_gate_EHF.shape[2]
    topo = make_topology(routing, F)
    Q, J, Z = topo.block_size, topo.blocks_per_expert, topo.column_indices_Z.shape[0]
    flags = triton_flags(x_RH)
    data_ZQQ = meter.alloc(x_RH.new_empty(Z, Q, Q))
    out_RH = meter.alloc(x_RH.new_empty(R, H))
    if Z:
        _sdd_gate_up_kernel[(Z,)](x_RH, topo.column_indices_Z, w_gate_EHF, w_up_EHF, data_ZQQ, H, F, J, Q=Q, **flags)
        grid_down = (routing.max_tiles, triton.cdiv(H, flags["BLOCK_N"]))
        _dsd_down_kernel[grid_down](
            data_ZQQ, topo.column_indices_Z, topo.row_offsets_B1, w_down_EFH, out_RH, H, F, J, Q=Q, **flags
        )
    meter.free(data_ZQQ)
    return out_RH


def block_sparse_experts(
    x_TH: torch.Tensor,
    routing: Routing,
    w_gate_EHF: torch.Tensor,
    w_up_EHF: torch.Tensor,
    w_down_EFH: torch.Tensor,
    impl: str = "torch",
) -> tuple[torch.Tensor, KernelStats]:
    """MegaBlocks-style experts with block size routing.block_size. Returns (y_TH in x's dtype, stats)."""
    _, H, F, _ = check_inputs(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH, impl)
    R = routing.max_tiles * routing.block_size
    pos_Tk = routing.block_pos_Tk
    meter = MemoryMeter.of(x_TH)
    x_pad_RH = scatter_rows(x_TH, routing, pos_Tk, R, meter)  # zero rows pad each expert's segment
    ffn = _ffn_triton if impl == "triton" else _ffn_torch
    out_RH = ffn(x_pad_RH[:R], routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter)
    meter.free(x_pad_RH)
    y_TH = combine(out_RH, pos_Tk, routing, x_TH.dtype, meter)
    executed_rows = routing.block_offsets_E1[-1]
    stats = KernelStats(
        hidden=H,
        ffn=F,
        num_useful_rows=routing.num_kept,
        num_executed_rows=executed_rows,
        num_dropped=routing.num_dropped,
        num_padded_rows=executed_rows - routing.num_kept,
        peak_extra_bytes=meter.peak_bytes(y_TH),
    )
    return y_TH, stats


# The design runs without a capacity: benchmarks run it once, dropless (padded runs once per capacity factor).
block_sparse_experts.dropless = True
