# T = tokens, H = hidden, F = expert FFN width, E = experts, k = experts per token, A = T*k assignments, B = tiles,
# N = active experts, R = rows per active expert (the busiest one's, batched path), S = N * R slots, r = rows of
# one slice of them (the batched path in slices)
"""dynamic: exact per-expert segments and no drops (Huang et al.'s dynamic gating).

Each expert gets exactly as many rows as were assigned to it (the routing's kept segments). The FFN is a
grouped GEMM over those variable segments:
- triton: the vLLM fused_moe / ScatterMoE recipe. Programs walk the routing's tile -> expert map; the
  gate+up kernel gathers token rows of x on load (no permuted copy of x) and writes the SwiGLU output in
  expert order [A, F]; the down kernel reads it, multiplies by the gate weight and scatters each row on
  store to its (token, slot) place in an fp32 [T, k, H] buffer, which is summed over k. Tiles are
  block_size rows, so a segment's last tile computes masked rows: executed rows = tiles * block_size.
- torch: torch.nn.functional.grouped_mm over rows gathered in expert order; executed rows = assigned rows
  exactly. It runs on CPU in torch 2.13 (a loop of mm over the groups); on CUDA it is CUTLASS for bf16 on
  sm_90/sm_100 and otherwise the same loop, which reads the offsets on the host (one sync). On CPU the rows
  go through in segment-aligned ranges of a bounded workspace (common.row_chunks), gathered range by range;
  a small batch whose busiest expert has <= BATCHED_ROWS rows (one Triton tile; >= 2 on one thread) runs
  instead as one torch.bmm chain over the active experts, each padded to the busiest (memory-bound there, so
  the padded rows are nearly free), and with several torch threads so does a busiest expert of up to
  THREADED_ROWS rows whose padding stays within PAD_WASTE_LIMIT x the kept rows (bmm gives each thread whole
  experts): executed rows = active experts * busiest, padded rows = executed - kept.
With a capacity factor in the routing, dropped assignments are skipped (they sort after the kept ones).
"""

from __future__ import annotations

import bisect
import itertools

import numpy
import torch
import triton
import triton.language as tl

from moebench.kernels.common import (
    CPU_CHUNK_BYTES,
    KernelStats,
    MemoryMeter,
    check_inputs,
    combine,
    expert_progressions,
    grouped_swiglu,
    host_numpy_applies,
    host_swiglu,
    plan_chunks,
    swiglu_ffn,
)
from moebench.kernels.routing import HOST_ROWS, Routing
from moebench.kernels.triton_utils import down_tile, swiglu_tile, triton_flags


@triton.jit
def _tile_rows(tile_row_ptr, offsets_ptr, e, BLOCK_M: tl.constexpr):
    """This program's tile of expert e: its rows in expert order, and which of them are inside e's segment."""
    rows = tl.load(tile_row_ptr + tl.program_id(0)) + tl.arange(0, BLOCK_M)
    return rows, rows < tl.load(offsets_ptr + e + 1)


@triton.jit
def _dynamic_gate_up_kernel(
    x_ptr,  # [T, H] tokens in their original order
    sort_idx_ptr,  # [A] assignment ids in expert order
    tile_expert_ptr,  # [B] expert of each tile, -1 past the last
    tile_row_ptr,  # [B] first row of each tile in expert order
    offsets_ptr,  # [E + 1] segment ends
    w_gate_ptr,  # [E, H, F]
    w_up_ptr,  # [E, H, F]
    h_ptr,  # [A, F] out, in expert order
    H,
    F,
    TOP_K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    e = tl.load(tile_expert_ptr + tl.program_id(0))
    if e < 0:
        return
    rows, row_mask = _tile_rows(tile_row_ptr, offsets_ptr, e, BLOCK_M)
    token = tl.load(sort_idx_ptr + rows, mask=row_mask, other=0) // TOP_K
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    w_off = e * H * F
    h = swiglu_tile(
        x_ptr + token * H, row_mask, w_gate_ptr + w_off, w_up_ptr + w_off, cols, H, F,
        BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, DOT_PREC,
    )  # fmt: skip
    h_mask = row_mask[:, None] & (cols[None, :] < F)
    tl.store(h_ptr + rows[:, None] * F + cols[None, :], h.to(h_ptr.dtype.element_ty), mask=h_mask)


@triton.jit
def _dynamic_down_kernel(
    h_ptr,  # [A, F] in expert order
    sort_idx_ptr,  # [A]
    tile_expert_ptr,  # [B]
    tile_row_ptr,  # [B]
    offsets_ptr,  # [E + 1]
    w_down_ptr,  # [E, F, H]
    weights_ptr,  # [A] fp32 gate weight of each assignment
    out_ptr,  # [A, H] fp32 out, in assignment order (t * k + j)
    H,
    F,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    e = tl.load(tile_expert_ptr + tl.program_id(0))
    if e < 0:
        return
    rows, row_mask = _tile_rows(tile_row_ptr, offsets_ptr, e, BLOCK_M)
    assignment = tl.load(sort_idx_ptr + rows, mask=row_mask, other=0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = down_tile(
        h_ptr + rows * F, row_mask, w_down_ptr + e * F * H, cols, H, F, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, DOT_PREC
    )
    weight = tl.load(weights_ptr + assignment, mask=row_mask, other=0.0)
    out_mask = row_mask[:, None] & (cols[None, :] < H)
    tl.store(out_ptr + assignment[:, None] * H + cols[None, :], acc * weight[:, None], mask=out_mask)


def _experts_torch_cpu(x_TH, routing: Routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter: MemoryMeter):
    """Expert by expert over the active segments (on CPU a loop of mm beats grouped_mm, which also walks the
    empty experts: 10-30% at 1-16 rows), each segment's rows gathered and run in ranges of a bounded workspace
    (common.plan_chunks); each range's weighted output is added straight into an fp32 y (copied, where every
    token has exactly one row and weight 1: rows after an all-to-all)."""
    T, H = x_TH.shape
    A, k, order_A = routing.num_assignments, routing.top_k, routing.sort_idx_A
    token_A = order_A if k == 1 else order_A // k
    one_row_each = k == 1 and routing.capacity is None and routing.unit_weights
    if not routing.unit_weights:
        weights_Tk = routing.topk_weights_Tk
        weights_A = weights_Tk if routing.capacity is None else torch.where(routing.kept_Tk, weights_Tk, 0.0)
        weights_A = weights_A.view(A)[order_A]
    y_TH = (torch.empty if one_row_each else torch.zeros)(T, H, dtype=torch.float32)
    if x_TH.dtype != torch.float32:
        meter.alloc(y_TH)
    offsets = routing.offsets_list
    budget = max(64, CPU_CHUNK_BYTES // (w_gate_EHF.shape[2] * x_TH.element_size()))
    for r0, r1 in plan_chunks(offsets[1:], budget, whole=False):
        e = bisect.bisect_right(offsets, r0) - 1  # each range lies inside one expert's segment
        tokens_R = token_A[r0:r1]
        x_RH = meter.alloc(x_TH.index_select(0, tokens_R))
        out_RH = swiglu_ffn(x_RH, w_gate_EHF[e], w_up_EHF[e], w_down_EFH[e], meter)
        meter.free(x_RH)
        rows_RH = out_RH if out_RH.dtype == torch.float32 else meter.alloc(out_RH.float())
        if one_row_each:
            y_TH.index_copy_(0, tokens_R, rows_RH)
        else:
            y_TH.index_add_(0, tokens_R, rows_RH if routing.unit_weights else rows_RH.mul_(weights_A[r0:r1, None]))
        meter.free(out_RH, *([] if rows_RH is out_RH else [rows_RH]))
    return y_TH if x_TH.dtype == torch.float32 else y_TH.to(x_TH.dtype)


def _experts_torch_host(x_TH, routing: Routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter: MemoryMeter):
    """A small CPU batch (A <= HOST_ROWS, so every segment fits the workspace): the same loop over active experts,
    its order, tokens and weights walked as host lists, so an expert costs its FFN, one gather and one weighted
    scatter (consecutive tokens: a slice and an add, with the weight as alpha for one row), not the metadata's tensor
    ops. The ledger counts the gathered copy only where there is one (consecutive tokens are read in place)."""
    T, H = x_TH.shape
    k, offsets, order = routing.top_k, routing.offsets_list, routing.sort_idx_list
    weights = None if routing.unit_weights else routing.topk_weights_list
    y_TH = torch.zeros(T, H, dtype=torch.float32)
    if x_TH.dtype != torch.float32:
        meter.alloc(y_TH)
    gemv = host_numpy_applies(x_TH)
    if gemv:  # one-row experts run in numpy (host_swiglu), on views of the same memory
        x_np, y_np = x_TH.numpy(), y_TH.numpy()
        w_np = (w_gate_EHF.numpy(), w_up_EHF.numpy(), w_down_EFH.numpy())
    for e in range(routing.num_experts):
        ids = order[offsets[e] : offsets[e + 1]]
        if not ids:
            continue
        tokens = ids if k == 1 else [a // k for a in ids]  # ascending (a stable sort by expert)
        first, n = tokens[0], len(tokens)
        if gemv and n == 1:
            out_RH = host_swiglu(x_np[first : first + 1], w_np[0][e], w_np[1][e], w_np[2][e], meter)
            if weights is not None:
                out_RH *= weights[ids[0]]  # in place: no temporary beside the ledger's buffers
            y_np[first : first + 1] += out_RH
            meter.free(out_RH)
            continue
        run = tokens[-1] - first == n - 1  # consecutive tokens: views, no index tensor (~20 µs with cold caches)
        index = None if run else torch.tensor(tokens)
        if not run:
            x_RH = meter.alloc(x_TH.index_select(0, index))
        elif n == T:  # every token, in order: x itself (no slice op)
            x_RH = x_TH
        else:
            x_RH = x_TH[first : first + n]
        out_RH = swiglu_ffn(x_RH, w_gate_EHF[e], w_up_EHF[e], w_down_EFH[e], meter)
        if not run:
            meter.free(x_RH)
        rows_RH = out_RH if out_RH.dtype == torch.float32 else meter.alloc(out_RH.float())
        if n == 1:
            y_TH[first].add_(rows_RH[0], alpha=1.0 if weights is None else weights[ids[0]])
        else:
            if weights is not None:
                rows_RH.mul_(torch.tensor([weights[a] for a in ids]).unsqueeze(1))
            if run:
                y_TH[first : first + n].add_(rows_RH)
            else:
                y_TH.index_add_(0, index, rows_RH)
        meter.free(out_RH, *([] if rows_RH is out_RH else [rows_RH]))
    return y_TH if x_TH.dtype == torch.float32 else y_TH.to(x_TH.dtype)


# A busiest expert with up to BATCHED_ROWS rows (one Triton tile): the CPU path runs one bmm chain. One row per
# expert takes it only with several torch threads (bmm hands each thread whole experts: T = 1, 2 threads, 6-14%
# faster than the host path's gemv in three interleaved runs); on one thread, as in the layer's ranks, the host
# path stays: its numpy gemv keeps the next numpy call warm (after bmm, the layer's unpermute at batch 1 took
# 47-82 µs against 25-27, 4 runs each).
# With several threads the chain also takes up to THREADED_ROWS rows while the padding costs at most
# PAD_WASTE_LIMIT x the kept rows: the exact-row loop's per-expert mm shares each small GEMM between the threads
# where bmm gives each whole experts (mixtral-8x7b-tiny, 2 threads, cold weights, an AMD EPYC: at T = 128,
# rows ~40, the chain 1.47x faster than the loop at waste 1.12 and 1.13x at 1.78; at T = 512 1.22x at 1.10; at
# T = 1024, ~290 rows, 1.06x; at T = 2048 0.85x, and 0.52-0.65x at waste 1.86-1.93 from T = 512; on one thread
# 0.49-1.06x, so the layer's ranks keep the loop).
BATCHED_ROWS = 16
THREADED_ROWS = 256
PAD_WASTE_LIMIT = 1.5
MM_COMBINE_ENTRIES = 1 << 14  # up to T * S this many, the batched path combines with one small GEMM


def _segment_rows(routing: Routing) -> list[int]:
    """Kept rows per expert [E], from the host offsets."""
    offsets = routing.offsets_list
    return [b - a for a, b in itertools.pairwise(offsets)]


def _batched_applies(rows_E: list[int]) -> bool:
    """Whether a CPU batch with rows_E kept rows per expert runs batched (see BATCHED_ROWS, THREADED_ROWS)."""
    rows, threaded = max(rows_E, default=0), torch.get_num_threads() > 1
    if rows < (1 if threaded else 2):
        return False
    if rows <= BATCHED_ROWS:
        return True
    padded = rows * (len(rows_E) - rows_E.count(0))
    return threaded and rows <= THREADED_ROWS and padded <= PAD_WASTE_LIMIT * sum(rows_E)


def _bmm_chain(x_NRH: torch.Tensor, active: list[int], w_gate_EHF, w_up_EHF, w_down_EFH, meter: MemoryMeter):
    """SwiGLU of expert active[j] on x_NRH[j]: [N, R, H] -> [N, R, H], one torch.bmm chain per arithmetic
    progression of the active ids, on strided views of the weights (no gathered copy)."""
    outs = []
    for i, n, step in expert_progressions(active):
        experts = slice(active[i], active[i + n - 1] + 1, step)
        outs.append(swiglu_ffn(x_NRH[i : i + n], w_gate_EHF[experts], w_up_EHF[experts], w_down_EFH[experts],
                               meter, mm=torch.bmm))  # fmt: skip
    if len(outs) == 1:
        return outs[0]
    out_NRH = meter.alloc(torch.cat(outs))
    meter.free(*outs)
    return out_NRH


def _experts_torch_batched(x_TH, routing: Routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter: MemoryMeter,
                           rows: int) -> torch.Tensor:  # fmt: skip
    """A CPU batch that _batched_applies to: every active expert's rows padded to the busiest's `rows` and run as
    one batched SwiGLU chain (_bmm_chain). The padded rows are not free (8 experts, cold weights, 2 threads: 4 rows
    each 1,366 µs, 7 rows 1,608), but splitting the experts into two chains by row count costs more than the padding
    it saves (rows [1, 6, 5, 2, 5, 5, 6, 2]: one chain of 6 rows 1,531-1,568 µs, two chains 1,708-1,799); bmm hands
    whole experts to the threads: a loop of per-expert mm at 4 rows reads cold weights at 6.7-7.6 GB/s on a Xeon
    (2 threads, 4 KiB pages), the batched chain at 9.3-10.6 GB/s. Pad slots read token 0 and are left out of the
    combine: y [T, H] (fp32) = C [T, S] @ rows [S, H], C holding each slot's gate weight in its token's row (one
    small GEMM, where a weight multiply, a zeroed y and index_add_ took ~90 µs at T = 1 with cold caches; above
    MM_COMBINE_ENTRIES, index_add_ in _batched_in_slices, one slice). The slot maps are built on the host with numpy
    (a torch.tensor of the 768 entries of C at T = 16 took 82 µs, numpy's zeros and one indexed store 4.5). Past
    BATCHED_ROWS, where [N, rows, F]
    intermediates would pass CPU_CHUNK_BYTES, the chain runs in slices of rows of every expert (_batched_in_slices;
    each slice reads the active weights again, a small cost where that many rows' GEMMs dominate; up to
    BATCHED_ROWS, where the weights' bytes dominate, it runs whole). Executed rows = active experts * rows (the
    Triton kernel likewise runs whole tiles)."""
    T, H = x_TH.shape
    k, offsets = routing.top_k, routing.offsets_list
    kept_K = routing.sort_idx_list[: offsets[-1]]  # kept assignments, in expert order
    active = [e for e in range(routing.num_experts) if offsets[e + 1] > offsets[e]]
    S = len(active) * rows
    slot_K = [j * rows + i for j, e in enumerate(active) for i in range(offsets[e + 1] - offsets[e])]
    token_K = kept_K if k == 1 else [a // k for a in kept_K]
    weight_K = None if routing.unit_weights else [routing.topk_weights_list[a] for a in kept_K]
    weights = (w_gate_EHF, w_up_EHF, w_down_EFH)
    step = rows  # rows of every expert a slice; past BATCHED_ROWS bounded by CPU_CHUNK_BYTES
    if rows > BATCHED_ROWS:  # every slice reads the weights again: only where GEMMs dominate
        step = min(rows, max(1, CPU_CHUNK_BYTES // (len(active) * w_gate_EHF.shape[2] * x_TH.element_size())))
    if step < rows or T * S > MM_COMBINE_ENTRIES:
        return _batched_in_slices(x_TH, active, rows, step, slot_K, token_K, weight_K, weights, meter)
    if T == 1:  # every slot reads the one token: a broadcast view, no index tensor and no gathered copy
        x_NRH = x_TH.expand(S, H).view(len(active), rows, H)
    else:
        sources_S = _per_slot(S, slot_K, token_K, pad=0)  # the token each slot reads (a pad reads token 0)
        x_NRH = meter.alloc(x_TH.index_select(0, torch.from_numpy(sources_S)).view(len(active), rows, H))
    out_NRH = _bmm_chain(x_NRH, active, *weights, meter)
    if T != 1:
        meter.free(x_NRH)
    rows_SH = out_NRH.view(S, H)
    if rows_SH.dtype != torch.float32:
        rows_SH = meter.alloc(rows_SH.float())
        meter.free(out_NRH)
    combine_TS = numpy.zeros((T, S), numpy.float32)  # y = C @ rows: each slot's weight in its token's row (0: a pad)
    combine_TS[token_K, slot_K] = 1.0 if weight_K is None else weight_K
    y_TH = torch.mm(torch.from_numpy(combine_TS), rows_SH)
    if x_TH.dtype != torch.float32:
        meter.alloc(y_TH)
    meter.free(rows_SH)
    return y_TH if x_TH.dtype == torch.float32 else y_TH.to(x_TH.dtype)


def _per_slot(S: int, slot_K: list[int], values_K: list, pad, dtype=numpy.int64) -> numpy.ndarray:
    """[S]: values_K[i] at slot slot_K[i], `pad` at the slots no kept row fills (the batched path's slot maps)."""
    out_S = numpy.full(S, pad, dtype)
    out_S[slot_K] = values_K
    return out_S


def _batched_in_slices(x_TH, active: list[int], rows: int, step: int, slot_K: list[int], token_K: list[int],
                       weight_K: list[float] | None, weights: tuple, meter: MemoryMeter) -> torch.Tensor:  # fmt: skip
    """The padded chain over rows r0 .. r0 + step of every active expert at a time (step < rows: [N, step, F]
    intermediates within CPU_CHUNK_BYTES, as the exact-row path bounds its workspace; step == rows: one slice,
    where T * S is past MM_COMBINE_ENTRIES), each slice's rows gathered, run, weighted and added into an fp32 y at
    their tokens (pads into a spare row T; y made, and metered, at the first add)."""
    T, H = x_TH.shape
    N = len(active)
    sources_NR = _per_slot(N * rows, slot_K, token_K, pad=0).reshape(N, rows)  # the token each slot reads
    targets_NR = _per_slot(N * rows, slot_K, token_K, pad=T).reshape(N, rows)  # where its output adds (pads: T)
    if weight_K is not None:
        weights_NR = _per_slot(N * rows, slot_K, weight_K, pad=0, dtype=numpy.float32).reshape(N, rows)
    y_T1H = None
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        sources = torch.from_numpy(sources_NR[:, r0:r1].reshape(-1))
        x_NrH = meter.alloc(x_TH.index_select(0, sources).view(N, r1 - r0, H))
        out_NrH = _bmm_chain(x_NrH, active, *weights, meter)
        meter.free(x_NrH)
        rows_SH = out_NrH.view(-1, H)
        if rows_SH.dtype != torch.float32:
            rows_SH = meter.alloc(rows_SH.float())
            meter.free(out_NrH)
        if weight_K is not None:
            rows_SH.mul_(torch.from_numpy(weights_NR[:, r0:r1].reshape(-1, 1)))
        if y_T1H is None:
            y_T1H = torch.zeros(T + 1, H, dtype=torch.float32)
            if x_TH.dtype != torch.float32:
                meter.alloc(y_T1H[:T])
        y_T1H.index_add_(0, torch.from_numpy(targets_NR[:, r0:r1].reshape(-1)), rows_SH)
        meter.free(rows_SH)
    y_TH = y_T1H[:T]
    return y_TH if x_TH.dtype == torch.float32 else y_TH.to(x_TH.dtype)


def _experts_torch_gpu(x_TH, routing: Routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter: MemoryMeter):
    """All rows in one range into an [A, H] buffer, then the gather-based combine (no atomics)."""
    A = routing.num_assignments
    token_A = routing.sort_idx_A // routing.top_k
    out_AH = meter.alloc(x_TH.new_empty(A, x_TH.shape[1]))

    def store(r0: int, r1: int, chunk_RH: torch.Tensor) -> None:
        out_AH[r0:r1] = chunk_RH

    grouped_swiglu(x_TH, token_A, routing.offsets_E1[1:], w_gate_EHF, w_up_EHF, w_down_EFH, A, store, meter)
    return combine(out_AH, routing.sorted_pos_Tk, routing, x_TH.dtype, meter)


def _experts_triton(x_TH, routing: Routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter: MemoryMeter) -> torch.Tensor:
    """Gather-on-load gate+up kernel, scatter-on-store down kernel, sum over k."""
    T, H = x_TH.shape
    F = w_gate_EHF.shape[2]
    A, k = routing.num_assignments, routing.top_k
    flags = triton_flags(x_TH)
    meta = (routing.sort_idx_A, routing.tile_expert_B, routing.tile_row_B, routing.offsets_E1)
    weights_A = torch.where(routing.kept_Tk, routing.topk_weights_Tk, 0.0).view(A)
    h_AF = meter.alloc(x_TH.new_empty(A, F))
    out_AH = meter.alloc(torch.zeros(A, H, dtype=torch.float32, device=x_TH.device))
    if routing.max_tiles:
        grid_up = (routing.max_tiles, triton.cdiv(F, flags["BLOCK_N"]))
        _dynamic_gate_up_kernel[grid_up](
            x_TH, *meta, w_gate_EHF, w_up_EHF, h_AF, H, F, k, BLOCK_M=routing.block_size, **flags
        )
        grid_down = (routing.max_tiles, triton.cdiv(H, flags["BLOCK_N"]))
        _dynamic_down_kernel[grid_down](
            h_AF, *meta, w_down_EFH, weights_A, out_AH, H, F, BLOCK_M=routing.block_size, **flags
        )
    meter.free(h_AF)
    y_TH = out_AH.view(T, k, H).sum(1)
    if x_TH.dtype == torch.float32:
        return y_TH
    meter.alloc(y_TH)
    return y_TH.to(x_TH.dtype)


def dynamic_experts(
    x_TH: torch.Tensor,
    routing: Routing,
    w_gate_EHF: torch.Tensor,
    w_up_EHF: torch.Tensor,
    w_down_EFH: torch.Tensor,
    impl: str = "torch",
) -> tuple[torch.Tensor, KernelStats]:
    """Exact-segment experts, no drops. Returns (y_TH in x's dtype, stats); padded rows in memory only on the
    batched CPU path (see _batched_applies), counted in stats."""
    _, H, F, _ = check_inputs(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH, impl)
    meter = MemoryMeter.of(x_TH)
    if impl == "triton":
        y_TH = _experts_triton(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter)
        executed = (routing.tile_expert_B >= 0).sum() * routing.block_size
    else:
        executed = routing.num_kept  # exact segments; the batched CPU path computes padded rows
        if x_TH.is_cuda:
            y_TH = _experts_torch_gpu(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter)
        elif _batched_applies(rows_E := _segment_rows(routing)):
            rows = max(rows_E)
            y_TH = _experts_torch_batched(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter, rows)
            executed = rows * (len(rows_E) - rows_E.count(0))
        else:
            experts = _experts_torch_host if routing.num_assignments <= HOST_ROWS else _experts_torch_cpu
            y_TH = experts(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH, meter)
    stats = KernelStats(
        hidden=H,
        ffn=F,
        num_useful_rows=routing.num_kept,
        num_executed_rows=executed,
        num_dropped=routing.num_dropped,
        num_padded_rows=0 if impl == "triton" else executed - routing.num_kept,
        peak_extra_bytes=meter.peak_bytes(y_TH),
    )
    return y_TH, stats


# The design runs without a capacity: benchmarks run it once, dropless (padded runs once per capacity factor).
dynamic_experts.dropless = True
