# P = world size, R = rows a rank sends, M = rows it receives, H = elements per row (any trailing shape),
# C = cap (rows per peer), K = header rows carrying a count (ceil(8 / row bytes))
"""ll: the low-latency dispatch/combine of DeepEP and pplx-kernels: fixed-size per-peer buffers, the counts
inside the payload, one fixed-size all-to-all out and no count exchange either way.

Every rank reserves C rows for every peer, C agreed without communication: `cap_rows`, or by default the worst
case, `max_rows_per_rank` (the most rows any rank sends: tokens per rank x k in the MoE layer, every row to one
peer). Dispatch writes each peer's row count into K header rows ahead of its rows and sends (P - 1) x (K + C)
rows (the library's all-to-all with equal counts; on the CPU an MPI-4 persistent collective on buffers kept per
shape, my own block never leaving home); the receiver reads the counts from the headers. Combine needs no count
exchange either: each rank knows what it received and what it sent, and returns the rows by the library's
all-to-all-v on those counts (fixed-size blocks there would only add a copy in and out: what a GPU needs them
for, a CUDA graph's static shapes, the CPU does not). A peer chunk over the cap is a ValueError on the sending
rank (one line), never a silent drop. The exchange is the library's own, so `ll` runs over `native` only.
"""

from __future__ import annotations

import math
import struct
from ctypes import memmove
from sys import getrefcount
from typing import NamedTuple

import numpy as np
import torch

from moebench.collectives import schedule as sched
from moebench.collectives.comm import row_bytes, storage_use_count, storage_uses
from moebench.collectives.exchange import DispatchCombine, offsets, validate_splits

COUNT_BYTES = 8  # an int64 row count, at the start of a peer's header rows
INNERS = ("native",)


class Handle(NamedTuple):
    """What combine needs: the cap, and the rows sent to / received from every peer."""

    cap: int
    send_splits: tuple[int, ...]
    recv_splits: tuple[int, ...]


def header_rows(row_nbytes: int) -> int:
    """K: rows that hold one int64 count."""
    return math.ceil(COUNT_BYTES / row_nbytes) if row_nbytes else 1


def cap_rows_for(cap_rows: int | None, max_rows_per_rank: int | None) -> int:
    """C: cap_rows, else the worst case max_rows_per_rank; ValueError when neither is known."""
    cap = cap_rows if cap_rows is not None else max_rows_per_rank
    if cap is None or cap < 0:
        raise ValueError("ll needs its fixed buffer size on every rank: cap_rows (rows per peer) or "
                         "max_rows_per_rank (the most rows any rank sends; the worst case)")  # fmt: skip
    return int(cap)


def _refuse(comm, splits: tuple, cap: int) -> None:
    """ValueError naming the first peer chunk over the cap (cap_rows_for has refused a missing cap already)."""
    d, n = next((d, n) for d, n in enumerate(splits) if n > cap)
    raise ValueError(f"ll: rank {comm.rank} sends {n} rows to rank {d}, over the cap of {cap} rows per peer")


def _blocks(rows: torch.Tensor, splits, block: int, skip: int, P: int) -> torch.Tensor:
    """[P * block, ...] zeros with chunk d of `rows` (splits[d] rows) at row d * block + skip."""
    buf = rows.new_zeros((P * block, *rows.shape[1:]))
    for d, (start, n) in enumerate(zip(offsets(splits), splits)):
        if n:
            buf[d * block + skip : d * block + skip + n] = rows[start : start + n]
    return buf


def _unblock(buf: torch.Tensor, counts, block: int, skip: int) -> torch.Tensor:
    """The first counts[s] rows after `skip` of every block s, in order."""
    parts = [buf[s * block + skip : s * block + skip + n] for s, n in enumerate(counts) if n]
    return torch.cat(parts) if parts else buf[:0]


def _count_slots(buf: torch.Tensor, P: int) -> torch.Tensor:
    """uint8 [P, 8] view: the count slot at the start of every peer block (any row width and dtype)."""
    return buf.reshape(P, -1).view(torch.uint8)[:, :COUNT_BYTES]


MAX_SHAPES = 8  # fixed-size exchanges kept per group (a few shapes repeat; each holds P x (K + C) rows twice)
MAX_LAYOUTS = 64  # split patterns (copy plans, reused outputs) kept per exchange


class _Rows:
    """One receive pattern's output [M, ...]: the copies that gather it ((output offset, receive address,
    bytes)) and the last output tensor, handed out again once nothing else holds it (like the mpi backend's
    receive buffers: a decode loop allocates nothing)."""

    __slots__ = ("address", "copies", "dtype", "last", "nbytes", "shape", "uses")

    def __init__(self, copies, nbytes: int, shape: tuple, dtype: torch.dtype):
        self.copies, self.nbytes, self.shape, self.dtype = copies, nbytes, shape, dtype
        self.address, self.last, self.uses = 0, None, 0

    def output(self) -> torch.Tensor:
        """The last output if unheld, else a new one (its address in self.address)."""
        last = self.last  # held here and in self.last: getrefcount's argument makes 3
        if last is not None and getrefcount(last) == 3 and storage_uses(last.untyped_storage()._cdata) - 1 == self.uses:
            return last  # only this slot refers to it
        self.last = torch.empty(self.shape, dtype=self.dtype)
        self.address, self.uses = self.last.data_ptr(), storage_use_count(self.last)
        return self.last


class _Exchange:
    """One fixed shape's host buffers (send and receive, uint8 [P, block bytes], K header rows ahead of the C
    rows of every block) and the backend's persistent all-to-all over them (MPI Alltoallv_init: each call is
    Start + Wait; my own block stays in send: MPI does not copy it); per split pattern, the copies that fill the
    send blocks and gather the received rows (my own from send), built once, run as memmoves by address (no
    views of the caller's tensors). Stale rows past a peer's count are never read."""

    def __init__(self, comm, peers: int, cap: int, row_nbytes: int):
        K = header_rows(row_nbytes)
        self.send = np.zeros((peers, (K + cap) * row_nbytes), np.uint8)
        self.recv = np.zeros_like(self.send)
        self.block, self.skip, self.row = (K + cap) * row_nbytes, K * row_nbytes, row_nbytes
        self.me = comm.world.rank
        # the counts in the receive headers, read in one call: an int64 at the start of every block
        self.counts = struct.Struct("=" + f"q{self.block - COUNT_BYTES}x" * (peers - 1) + "q")
        self.headers: tuple | None = None  # the send_splits the send headers hold now
        self.fills: dict[tuple, list] = {}
        self.gathers: dict[tuple, _Rows] = {}
        self.run, self.release = comm.world.persistent_alltoall(self.send, self.recv)

    def fill(self, rows: torch.Tensor, splits: tuple) -> None:
        """Chunk d of rows (contiguous, on the CPU: splits[d] rows of the exchange's row bytes) into peer
        block d, and the counts into the headers."""
        copies = self.fills.get(splits)
        if copies is None:
            copies = self._copies(splits, self.send.ctypes.data, sending=True)
        source = rows.data_ptr()
        for to, offset, n in copies:
            memmove(to, source + offset, n)
        if splits != self.headers:
            self.send[:, :COUNT_BYTES].view(np.int64)[:, 0] = splits
            self.recv[self.me, :COUNT_BYTES].view(np.int64)[0] = splits[self.me]  # my own: never exchanged
            self.headers = splits

    def gather(self, counts: tuple, like: torch.Tensor) -> torch.Tensor:
        """The first counts[s] rows of every peer block s, in order, as [M, ...] of like's dtype and row shape."""
        key = (counts, like.dtype, like.shape[1:])
        rows = self.gathers.get(key) or self._rows(key)
        if not rows.nbytes:
            return like.new_empty(rows.shape)
        out = rows.output()
        address = rows.address
        for offset, source, n in rows.copies:
            memmove(address + offset, source, n)
        return out

    def _copies(self, splits: tuple, blocks: int, sending: bool) -> list[tuple[int, int, int]]:
        """Per non-empty chunk: (block address, offset in the rows, bytes) when sending (kept per split
        pattern), else (offset in the rows, block address, bytes); blocks: the buffer's address."""
        copies, offset, own = [], 0, self.send.ctypes.data  # my own rows stay in send (never exchanged)
        for peer, n in enumerate(splits):
            if n:
                at, nbytes = (own if peer == self.me else blocks) + peer * self.block + self.skip, n * self.row
                copies.append((at, offset, nbytes) if sending else (offset, at, nbytes))
                offset += nbytes
        if sending:
            if len(self.fills) >= MAX_LAYOUTS:
                self.fills.clear()
            self.fills[splits] = copies
        return copies

    def _rows(self, key) -> _Rows:
        counts, dtype, row_shape = key
        if len(self.gathers) >= MAX_LAYOUTS:
            self.gathers.clear()
        M = sum(counts)
        copies = self._copies(counts, self.recv.ctypes.data, sending=False)
        rows = self.gathers[key] = _Rows(copies, M * self.row, (M, *row_shape), dtype)
        return rows


def _host_exchange(comm, peers: int, cap: int, row_nbytes: int) -> _Exchange:
    """The reused _Exchange of this shape, kept on the communicator's world group (it lives and dies with it);
    past MAX_SHAPES shapes the old ones are released."""
    cache = comm.world.__dict__.get("_ll_exchanges")
    if cache is None:  # (setdefault would build a spare dict every call)
        cache = comm.world._ll_exchanges = {}
    key = (peers, cap, row_nbytes)
    cached = cache.get(key)
    if cached is None:
        if len(cache) >= MAX_SHAPES:
            for old in cache.values():
                old.release()
            cache.clear()
        cached = cache[key] = _Exchange(comm, peers, cap, row_nbytes)
    return cached


def _host_dispatch(comm, send: torch.Tensor, splits: tuple, cap: int, rb: int):
    """The CPU path: memmoves into reused buffers and a persistent all-to-all (a few µs where torch ops cost
    ~5 each and a fresh all-to-all-v call ~5 of Python)."""
    ex = _host_exchange(comm, comm.world_size, cap, rb)
    ex.fill(send if send.is_contiguous() else send.contiguous(), splits)
    ex.run()
    counts = ex.counts.unpack_from(ex.recv)
    return ex.gather(counts, send), counts


def dispatch(comm, send: torch.Tensor, send_splits, inner: str = "native", max_rows_per_rank: int | None = None,
             cap_rows: int | None = None):  # fmt: skip
    """send [R, ...] (rows for rank 0 first), send_splits (P counts) -> recv [M, ...], recv_splits, handle."""
    if inner not in INNERS:
        raise ValueError(f"ll is its own fixed-size exchange (the library's all-to-all): it runs over native, "
                         f"not {inner}")  # fmt: skip
    splits = validate_splits(comm, send, send_splits)
    cap = cap_rows if cap_rows is not None else max_rows_per_rank
    if cap is None or cap < 0 or max(splits) > cap:
        _refuse(comm, splits, cap_rows_for(cap_rows, max_rows_per_rank))
    rb = row_bytes(send)
    if rb == 0:
        raise ValueError("ll carries its counts inside the rows: rows of 0 bytes cannot hold them")
    if send.is_cpu and send.dim() > 1:
        recv, recv_splits = _host_dispatch(comm, send, splits, cap, rb)
        return recv, list(recv_splits), Handle(cap, splits, recv_splits)
    P, K = comm.world_size, header_rows(rb)
    buf = _blocks(send, splits, K + cap, K, P)
    counts = torch.tensor(splits, dtype=torch.int64).view(torch.uint8).view(P, COUNT_BYTES)
    _count_slots(buf, P).copy_(counts)
    recv_buf = comm.world.alltoallv(buf, (K + cap,) * P, (K + cap,) * P)
    # the one host sync: the counts the payload carried
    recv_splits = tuple(_count_slots(recv_buf, P).cpu().reshape(-1).view(torch.int64).tolist())
    return _unblock(recv_buf, recv_splits, K + cap, K), list(recv_splits), Handle(cap, splits, recv_splits)


def combine(comm, processed_recv: torch.Tensor, handle: Handle) -> torch.Tensor:
    """processed_recv [M, ...] (row i answers recv row i) -> out [R, ...] (row i answers send row i): the
    library's all-to-all-v on the counts dispatch learned (both sides know them: no count exchange)."""
    rows = processed_recv if processed_recv.is_contiguous() else processed_recv.contiguous()
    return comm.world.alltoallv(rows, handle.recv_splits, handle.send_splits)


def schedule(inner, splits, row_bytes: int, topo, back_bytes: int | None = None,
             max_rows_per_rank: int | None = None) -> list:  # fmt: skip
    """One fixed-size all-to-all out, no count exchange: (P - 1) x (K + C) rows (C the worst case, the most
    rows any rank sends, or max_rows_per_rank as dispatch takes it; my own block stays home); the rows back
    (of back_bytes) by the library's all-to-all-v on the counts both sides know. The inner exchange plays no
    part."""
    back_row = row_bytes if back_bytes is None else back_bytes
    P = topo.world_size
    splits = np.asarray(splits, dtype=np.int64)
    cap = max_rows_per_rank if max_rows_per_rank is not None else int(splits.sum(axis=1).max()) if splits.size else 0
    K = header_rows(row_bytes)
    out = np.full((P, P), (K + cap) * row_bytes, dtype=np.float64)
    back = sched.byte_matrix(splits, back_row).T
    # my own block is not the library's to copy in dispatch (ll moves those rows itself, as it packs the others)
    return [sched.dense_exchange("ll dispatch", out, self_bytes=np.zeros(P)),
            sched.dense_exchange("ll combine", back, self_bytes=np.diag(back).copy())]  # fmt: skip


PAIR = DispatchCombine("ll", dispatch, combine, schedule, inners=INNERS)
