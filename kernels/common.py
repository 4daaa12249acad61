# T = tokens, H = hidden, F = expert FFN width, E = experts, k = experts per token, R = rows of a layout
"""What the expert kernels and the loop baseline share: input checks, stats, the memory meter, the SwiGLU
FFN on torch, the combine."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy
import torch
from torch.nn.functional import grouped_mm, silu

from moebench.kernels.routing import HOST, IMPLS, Routing
from moebench.kernels.triton_utils import require_triton

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FLOPS_PER_ROW = 6  # SwiGLU: 2*H*F each for gate, up and down (DESIGN.md §3)


def check_inputs(
    x_TH: torch.Tensor,
    routing: Routing,
    w_gate_EHF: torch.Tensor,
    w_up_EHF: torch.Tensor,
    w_down_EFH: torch.Tensor,
    impl: str,
) -> tuple[int, int, int, int]:
    """ValueError naming the problem unless the inputs fit together (and Triton can run them, for
    impl="triton"); returns (T, H, F, E)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    if x_TH.dim() != 2:
        raise ValueError(f"x must be [T, H], got shape {tuple(x_TH.shape)}")
    if w_gate_EHF.dim() != 3 or w_up_EHF.shape != w_gate_EHF.shape:
        raise ValueError(
            f"w_gate and w_up must both be [E, H, F]; got {tuple(w_gate_EHF.shape)} and {tuple(w_up_EHF.shape)}"
        )
    T, H = x_TH.shape
    E, H_w, F = w_gate_EHF.shape
    if H_w != H:
        raise ValueError(f"x has H={H} but w_gate is [E, H, F] = {tuple(w_gate_EHF.shape)}")
    if tuple(w_down_EFH.shape) != (E, F, H):
        raise ValueError(f"w_down must be [E, F, H] = {(E, F, H)}, got {tuple(w_down_EFH.shape)}")
    if routing.num_experts != E:
        raise ValueError(f"weights have E={E} experts but the routing has {routing.num_experts}")
    if routing.num_tokens != T:
        raise ValueError(f"x has T={T} tokens but the routing has {routing.num_tokens}")
    if x_TH.dtype not in DTYPES:
        raise ValueError(f"x dtype must be one of float32, bfloat16, float16; got {x_TH.dtype}")
    # devices compared as get_device() integers (-1: the CPU): reading .device makes a new object each time,
    # ~7 µs with the caches a decode step's experts leave
    where = x_TH.get_device()
    for name, w in (("w_gate", w_gate_EHF), ("w_up", w_up_EHF), ("w_down", w_down_EFH)):
        if w.dtype != x_TH.dtype:
            raise ValueError(f"{name} dtype {w.dtype} does not match x dtype {x_TH.dtype}")
        if w.get_device() != where:
            raise ValueError(f"{name} is on {w.device} but x is on {x_TH.device}")
    routing_device = routing.device
    if (-1 if routing_device.type == "cpu" else routing_device.index) != where:
        raise ValueError(f"routing is on {routing_device} but x is on {x_TH.device}")
    if impl == "triton":
        require_triton(x_TH)
    return T, H, F, E


@dataclass(frozen=True)
class KernelStats:
    """What an expert kernel did. Counts may be 0-d device tensors so the kernel never syncs;
    reading a property converts them (a sync on GPU).

    useful rows = kept (token, expert) pairs; executed rows = rows the kernel's GEMMs computed
    (padding and partial tiles included); FLOPs = 6 * H * F per row (SwiGLU).
    peak_extra_bytes: peak memory the kernel allocated beyond its inputs and its output y (see MemoryMeter).
    """

    hidden: int
    ffn: int
    num_useful_rows: int | torch.Tensor
    num_executed_rows: int | torch.Tensor
    num_dropped: int | torch.Tensor
    num_padded_rows: int | torch.Tensor
    peak_extra_bytes: int

    @property
    def useful_flops(self) -> int:
        return FLOPS_PER_ROW * self.hidden * self.ffn * int(self.num_useful_rows)

    @property
    def executed_flops(self) -> int:
        return FLOPS_PER_ROW * self.hidden * self.ffn * int(self.num_executed_rows)

    @property
    def padding_waste(self) -> float:
        """executed / useful FLOPs (1.0 = nothing wasted; inf if only padding was computed)."""
        useful, executed = self.useful_flops, self.executed_flops
        if useful == 0:
            return 1.0 if executed == 0 else float("inf")
        return executed / useful

    @property
    def dropped(self) -> int:
        return int(self.num_dropped)

    @property
    def padded_rows(self) -> int:
        """Rows of padding the kernel held in memory (and computed)."""
        return int(self.num_padded_rows)

    def to_dict(self) -> dict:
        return {
            "useful_flops": self.useful_flops,
            "executed_flops": self.executed_flops,
            "padding_waste": self.padding_waste,
            "dropped": self.dropped,
            "padded_rows": self.padded_rows,
            "peak_extra_bytes": self.peak_extra_bytes,
        }


class MemoryMeter:
    """Peak extra memory of one kernel call, its output y excluded.

    CPU: a ledger. The kernel passes every buffer it allocates to `alloc` and every buffer it is done
    with to `free`; the peak of the running sum of their sizes is the answer. Buffers are written with
    in-place ops so no untracked temporaries of their size exist. Not seen: library-internal scratch
    (e.g. inside a GEMM) and index / weight vectors of O(T*k) elements.
    CUDA: the caching allocator's own count: torch.cuda.max_memory_allocated() over the call minus
    what was allocated at its start (the peak counter is reset at the start), minus y.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.live = 0
        self.peak = 0
        if self.cuda:
            self.start = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device

    @classmethod
    def of(cls, x: torch.Tensor) -> MemoryMeter:
        """The meter of a kernel whose input is x (x.device is read only on CUDA: on the host it is a new object
        per read, ~7 µs at decode with cold caches)."""
        return cls(x.device if x.is_cuda else HOST)

    def alloc(self, tensor: torch.Tensor) -> torch.Tensor:
        self.live += tensor.nbytes  # one property read: at decode each call costs ~1 µs with cold caches
        if self.live > self.peak:
            self.peak = self.live
        return tensor

    def free(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            self.live -= t.nbytes

    def peak_bytes(self, y: torch.Tensor) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) - self.start - y.numel() * y.element_size()
        return self.peak


def combine(
    out_RH: torch.Tensor, pos_Tk: torch.Tensor, routing: Routing, dtype: torch.dtype, meter: MemoryMeter
) -> torch.Tensor:
    """y[t] = sum_j kept[t, j] * weight[t, j] * out[pos[t, j]], accumulated in fp32, returned in `dtype`.

    out_RH: expert outputs in the kernel's row layout; pos_Tk: each assignment's row there. Dropped
    assignments read row 0 (always a computed row) with weight 0.
    """
    T, k = pos_Tk.shape
    weights_Tk = torch.where(routing.kept_Tk, routing.topk_weights_Tk, 0.0)
    pos_Tk = torch.where(routing.kept_Tk, pos_Tk, 0)
    y_TH = torch.zeros(T, out_RH.shape[1], dtype=torch.float32, device=out_RH.device)
    if dtype != torch.float32:  # an fp32 accumulator beside the output
        meter.alloc(y_TH)
    for j in range(k):
        rows_TH = meter.alloc(out_RH[pos_Tk[:, j]])
        y_TH.addcmul_(rows_TH, weights_Tk[:, j : j + 1])
        meter.free(rows_TH)
    if dtype == torch.float32:
        return y_TH
    meter.free(y_TH)
    return y_TH.to(dtype)


def scatter_rows(x_TH: torch.Tensor, routing: Routing, pos_Tk: torch.Tensor, num_rows: int, meter: MemoryMeter):
    """A zeroed [num_rows + 1, H] buffer with each kept assignment's token row at pos_Tk (dropped assignments go
    to the spare last row, so no sync is needed): the padded kernels' input layout."""
    T, H = x_TH.shape
    rows_RH = meter.alloc(x_TH.new_zeros(num_rows + 1, H))
    rows_RH[torch.where(routing.kept_Tk, pos_Tk, num_rows)] = x_TH[:, None, :].expand(T, routing.top_k, H)
    return rows_RH


HOST_GEMV_DTYPES = (torch.float32, torch.float64)


def host_numpy_applies(x: torch.Tensor) -> bool:
    """Whether x's one-row products may run in numpy: on the CPU, in a dtype numpy has, while torch runs on one
    thread (with more threads torch.matmul splits the columns). numpy's BLAS (OpenBLAS) keeps its own thread
    count, which follows OMP_NUM_THREADS / OPENBLAS_NUM_THREADS and not torch.set_num_threads: the layer's ranks
    run with OMP_NUM_THREADS=1 (one thread each), and `kernels --threads N` limits both."""
    return not x.is_cuda and x.dtype in HOST_GEMV_DTYPES and torch.get_num_threads() == 1


def host_gemv_applies(x_RK: torch.Tensor) -> bool:
    """Whether rows_matmul takes numpy's gemv for x [R, K]: one row, and host_numpy_applies."""
    return x_RK.shape[0] == 1 and host_numpy_applies(x_RK)


def rows_matmul(x_RK: torch.Tensor, w_KN: torch.Tensor) -> torch.Tensor:
    """x [R, K] @ w [K, N] -> [R, N], the formulation fastest at R. One row on one CPU thread goes through numpy's
    BLAS (OpenBLAS sgemv streams w near the memory bandwidth: one row through one mixtral-8x7b-tiny expert, cold
    weights, one core of an AMD EPYC: 92 µs = 30 GB/s, torch.matmul 130 µs = 21 GB/s; on one core of a Xeon
    with a 480 MiB L3 the two tie at 15-16 GB/s); with two threads torch.matmul reads a cold [256, 896] matrix
    at 25-27 GB/s there, numpy 15; from 2 rows torch.matmul is as fast or faster (numpy's sgemm at 2-4 rows:
    1.4-2x slower), as it is everywhere else."""
    if host_gemv_applies(x_RK):
        return torch.from_numpy(x_RK.numpy() @ w_KN.numpy())
    return x_RK @ w_KN


def host_swiglu(x_RH: numpy.ndarray, w_gate_HF: numpy.ndarray, w_up_HF: numpy.ndarray, w_down_FH: numpy.ndarray,
                meter: MemoryMeter) -> numpy.ndarray:  # fmt: skip
    """swiglu_ffn on numpy arrays: x [R, H] -> [R, H], for one row on one CPU thread (host_gemv_applies), where
    every step is a numpy call of ~1 µs against ~5 for a torch op, more with the caches a decode step's weights
    leave (one cold mixtral-8x7b-tiny expert per row, two rows, one core of an AMD EPYC, each of two processes
    at once: numpy throughout 364-368 µs, the torch ops around numpy's gemv 476-486). The ledger is
    swiglu_ffn's. silu(h) * up = a * (1 + tanh(a)) * up with a = h / 2 (a logistic that cannot overflow, unlike
    1 / (1 + exp(-h)); in place, no buffer beyond swiglu_ffn's)."""
    h = meter.alloc(x_RH @ w_gate_HF)
    up = meter.alloc(x_RH @ w_up_HF)
    h *= 0.5
    up *= h
    numpy.tanh(h, out=h)
    h += 1.0
    h *= up
    meter.free(up)
    out = meter.alloc(h @ w_down_FH)
    meter.free(h)
    return out


def swiglu_ffn(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    meter: MemoryMeter,
    mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = rows_matmul,
) -> torch.Tensor:
    """(silu(mm(x, w_gate)) * mm(x, w_up)) @ w_down, the intermediate written in place so the ledger sees
    every buffer. mm: rows_matmul (x [R, H], one expert's weights), torch.bmm (x [E, C, H]) or grouped_mm
    with the segments' offsets (x [R, H], rows sorted by expert)."""
    h = meter.alloc(mm(x, w_gate))
    up = meter.alloc(mm(x, w_up))
    silu(h, inplace=True).mul_(up)
    meter.free(up)
    out = meter.alloc(mm(h, w_down))
    meter.free(h)
    return out


def expert_progressions(active: list[int]) -> list[tuple[int, int, int]]:
    """Ascending expert ids cut greedily into arithmetic progressions: (first index, length, step) each, so
    every group's weights are one strided view (w_EHF[a:b:step]), no gathered copy. [0..7] is one group;
    [0, 1, 2, 5] is (0, 3, 1), (3, 1, 1); any two experts are one group."""
    groups, i, n = [], 0, len(active)
    while i < n:
        step, j = (active[i + 1] - active[i]) if i + 1 < n else 1, i  # j: the group's last index
        while j + 1 < n and active[j + 1] - active[j] == step:
            j += 1
        groups.append((i, j - i + 1, step))
        i = j + 1
    return groups


CPU_CHUNK_BYTES = 4 << 20


def plan_chunks(seg_ends: list[int], budget: int, whole: bool = True) -> list[tuple[int, int]]:
    """Row ranges that follow segment boundaries: whole segments merged while a range holds <= budget rows
    (with whole=False each non-empty segment is its own range), a segment larger than budget split into equal
    parts. Covers rows 0 .. seg_ends[-1]."""
    if not whole:
        ranges = []
        for a, b in itertools.pairwise([0, *seg_ends]):
            if b > a:
                ranges += [(a + x, a + y) for x, y in plan_chunks([b - a], budget)]
        return ranges
    chunks, r0, start = [], 0, 0
    for end in seg_ends:
        if end - start > budget:  # a big segment: close the open range, then split this one
            if start > r0:
                chunks.append((r0, start))
            parts = -(-(end - start) // budget)
            cuts = [start + (end - start) * i // parts for i in range(parts + 1)]
            chunks += list(itertools.pairwise(cuts))
            r0 = end
        elif end - r0 > budget:
            chunks.append((r0, start))
            r0 = start
        start = end
    if start > r0:
        chunks.append((r0, start))
    return chunks


def row_chunks(seg_ends_E, num_rows: int, ffn: int, x: torch.Tensor) -> list[tuple[int, int]]:
    """Row ranges a grouped FFN runs in. GPU: all rows at once (no sync). CPU: a bounded workspace (as
    vLLM's fused_moe chunks tokens) — one [rows, F] intermediate within CPU_CHUNK_BYTES, ranges aligned
    to segments — so intermediates come back from the heap cache-sized instead of being freshly mapped
    (page-faulted) on every call, and every GEMM sees whole segments."""
    if x.device.type != "cpu":
        return [(0, num_rows)] if num_rows else []
    budget = max(64, CPU_CHUNK_BYTES // (ffn * x.element_size()))
    return plan_chunks(seg_ends_E if isinstance(seg_ends_E, list) else seg_ends_E.tolist(), budget)


def grouped_swiglu(
    x: torch.Tensor,
    index_R: torch.Tensor | None,
    seg_ends_E: torch.Tensor | list[int],
    w_gate_EHF: torch.Tensor,
    w_up_EHF: torch.Tensor,
    w_down_EFH: torch.Tensor,
    num_rows: int,
    emit: Callable[[int, int, torch.Tensor], None],
    meter: MemoryMeter,
) -> None:
    """SwiGLU of expert e on each row of segment e, rows sorted by expert (segment e ends at seg_ends_E[e]).

    Rows are x[index_R] (x [T, H], gathered range by range) or, without index_R, x [R, H] itself. grouped_mm
    over the segments, one row range (row_chunks) at a time; emit(r0, r1, chunk_RH) takes each range's
    output. On GPU the range may run past seg_ends_E[-1]; those rows of chunk_RH are not computed (garbage).
    """
    host = isinstance(seg_ends_E, list)  # segment ends already on the host (a CPU kernel): no tensor ops for offs
    for r0, r1 in row_chunks(seg_ends_E, num_rows, w_gate_EHF.shape[2], x):
        if host:
            offs_E = torch.tensor([min(max(end - r0, 0), r1 - r0) for end in seg_ends_E], dtype=torch.int32)
        else:
            offs_E = (seg_ends_E - r0).clamp(0, r1 - r0).to(torch.int32)
        x_RH = x[r0:r1] if index_R is None else meter.alloc(x[index_R[r0:r1]])
        chunk_RH = swiglu_ffn(x_RH, w_gate_EHF, w_up_EHF, w_down_EFH, meter, functools.partial(grouped_mm, offs=offs_E))
        if index_R is not None:
            meter.free(x_RH)
        emit(r0, r1, chunk_RH)
        meter.free(chunk_RH)
