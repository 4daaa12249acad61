# P = world size, R = rows a rank sends, M = rows it receives, H = elements per row (any trailing shape),
# C = cap (rows per peer), K = header rows carrying a count (ceil(8 / row bytes))
"""ll: the low-latency dispatch/combine of DeepEP and pplx-kernels: fixed-size per-peer buffers, the counts
inside the payload, one fixed-size all-to-all each way and no count exchange.

Every rank reserves C rows for every peer, C agreed without communication: `cap_rows`, or by default the worst
case, `max_rows_per_rank` (the most rows any rank sends: tokens per rank x k in the MoE layer, every row to one
peer). Dispatch writes each peer's row count into K header rows ahead of its rows and sends P x (K + C) rows
(the library's all-to-all with equal counts: on the CPU an MPI-4 persistent Alltoall on buffers kept per shape);
the receiver reads the counts from the headers. Combine needs no header: each rank knows what it received and
what it sent, and sends P x C rows back. A peer chunk over the cap is a ValueError on the sending rank (one
line), never a silent drop. The exchange is the library's own, so `ll` runs over `native` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from moebench.collectives import schedule as sched
from moebench.collectives.comm import row_bytes
from moebench.collectives.exchange import DispatchCombine, offsets, validate_splits

COUNT_BYTES = 8  # an int64 row count, at the start of a peer's header rows
INNERS = ("native",)


@dataclass(frozen=True)
class Handle:
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


class _Exchange:
    """One fixed shape's host buffers (send and receive, uint8 [P, block bytes]) and the backend's persistent
    all-to-all over them (MPI Alltoall_init: each call is Start + Wait); stale rows past a peer's count are
    never read."""

    __slots__ = ("recv", "release", "run", "send")

    def __init__(self, comm, peers: int, block_rows: int, row_nbytes: int):
        self.send = np.zeros((peers, block_rows * row_nbytes), np.uint8)
        self.recv = np.zeros_like(self.send)
        self.run, self.release = comm.world.persistent_alltoall(self.send, self.recv)


def _host_exchange(comm, peers: int, block_rows: int, row_nbytes: int) -> _Exchange:
    """The reused _Exchange of this shape, kept on the communicator's world group (it lives and dies with it);
    past MAX_SHAPES shapes the old ones are released."""
    cache = comm.world.__dict__.setdefault("_ll_exchanges", {})
    key = (peers, block_rows, row_nbytes)
    cached = cache.get(key)
    if cached is None:
        if len(cache) >= MAX_SHAPES:
            for old in cache.values():
                old.release()
            cache.clear()
        cached = cache[key] = _Exchange(comm, peers, block_rows, row_nbytes)
    return cached


def _as_bytes(x: torch.Tensor) -> np.ndarray:
    """uint8 [rows, row bytes] numpy view of a CPU tensor of any dtype (a copy only if not contiguous)."""
    if x.dtype == torch.uint8 and x.dim() == 2 and x.is_contiguous():  # the MoE layer's packed rows: a view
        return x.numpy()
    if x.numel() == 0:
        return np.empty((x.shape[0], row_bytes(x)), np.uint8)
    a = x.numpy() if x.dtype in _NUMPY else x.contiguous().view(torch.uint8).numpy()
    return np.ascontiguousarray(a).reshape(x.shape[0], -1).view(np.uint8)


_NUMPY = (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.uint8, torch.int8)


def _from_bytes(rows: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """uint8 [M, row bytes] -> a tensor of like's dtype and trailing shape."""
    if rows.shape[0] == 0:
        return like.new_empty((0, *like.shape[1:]))
    if like.dtype == torch.uint8 and like.dim() == 2:  # the MoE layer's packed rows: no views
        return torch.from_numpy(rows)
    return torch.from_numpy(rows).view(like.dtype).view(rows.shape[0], *like.shape[1:])


def _gather(blocks: np.ndarray, counts, skip: int, rb: int) -> np.ndarray:
    """The first counts[s] rows after `skip` rows of every peer block s, as one uint8 [M, rb] array."""
    parts = [blocks[s, skip * rb : (skip + n) * rb] for s, n in enumerate(counts) if n]
    if len(parts) == 1:
        return parts[0].reshape(-1, rb).copy()
    return np.concatenate(parts).reshape(-1, rb) if parts else np.empty((0, rb), np.uint8)


def _fill(blocks: np.ndarray, rows: np.ndarray, splits, skip: int, rb: int) -> None:
    """Chunk s of `rows` (splits[s] rows of rb bytes) into peer block s after `skip` rows; the rest stays stale."""
    start = 0
    for s, n in enumerate(splits):
        if n:
            blocks[s, skip * rb : (skip + n) * rb] = rows[start : start + n].reshape(-1)
            start += n


def _host_dispatch(comm, send: torch.Tensor, splits, cap: int):
    """The CPU path: numpy copies into reused buffers and a persistent all-to-all (a few µs where torch ops cost
    ~5 each and a fresh all-to-all-v call ~5 of Python)."""
    P, rb = comm.world_size, row_bytes(send)
    send_b, K = _as_bytes(send), header_rows(rb)
    ex = _host_exchange(comm, P, K + cap, rb)
    _fill(ex.send, send_b, splits, K, rb)
    ex.send[:, :COUNT_BYTES].view(np.int64)[:, 0] = splits
    ex.run()
    counts = tuple(ex.recv[:, :COUNT_BYTES].view(np.int64)[:, 0].tolist())
    return _from_bytes(_gather(ex.recv, counts, K, rb), send), counts


def _host_combine(comm, processed: torch.Tensor, handle) -> torch.Tensor:
    P, cap, rb = comm.world_size, handle.cap, row_bytes(processed)
    ex = _host_exchange(comm, P, cap, rb)
    _fill(ex.send, _as_bytes(processed), handle.recv_splits, 0, rb)
    ex.run()
    return _from_bytes(_gather(ex.recv, handle.send_splits, 0, rb), processed)


def dispatch(comm, send: torch.Tensor, send_splits, inner: str = "native", max_rows_per_rank: int | None = None,
             cap_rows: int | None = None):  # fmt: skip
    """send [R, ...] (rows for rank 0 first), send_splits (P counts) -> recv [M, ...], recv_splits, handle."""
    if inner not in INNERS:
        raise ValueError(f"ll is its own fixed-size exchange (the library's all-to-all): it runs over native, "
                         f"not {inner}")  # fmt: skip
    splits = validate_splits(comm, send, send_splits)
    cap, rb = cap_rows_for(cap_rows, max_rows_per_rank), row_bytes(send)
    if rb == 0:
        raise ValueError("ll carries its counts inside the rows: rows of 0 bytes cannot hold them")
    over = [(d, n) for d, n in enumerate(splits) if n > cap]
    if over:
        d, n = over[0]
        raise ValueError(f"ll: rank {comm.rank} sends {n} rows to rank {d}, over the cap of {cap} rows per peer")
    if send.device.type == "cpu" and send.dim() > 1:
        recv, recv_splits = _host_dispatch(comm, send, splits, cap)
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
    """processed_recv [M, ...] (row i answers recv row i) -> out [R, ...] (row i answers send row i)."""
    if processed_recv.device.type == "cpu" and processed_recv.dim() > 1 and row_bytes(processed_recv):
        return _host_combine(comm, processed_recv, handle)
    P, cap = comm.world_size, handle.cap
    buf = _blocks(processed_recv, handle.recv_splits, cap, 0, P)
    back = comm.world.alltoallv(buf, (cap,) * P, (cap,) * P)
    return _unblock(back, handle.send_splits, cap, 0)


def schedule(inner, splits, row_bytes: int, topo, back_bytes: int | None = None,
             max_rows_per_rank: int | None = None) -> list:  # fmt: skip
    """One fixed-size all-to-all each way, no count exchange: P x (K + C) rows out (C the worst case, the most
    rows any rank sends, or max_rows_per_rank as dispatch takes it), P x C rows back (of back_bytes); the inner
    exchange plays no part."""
    back_row = row_bytes if back_bytes is None else back_bytes
    P = topo.world_size
    splits = np.asarray(splits, dtype=np.int64)
    cap = max_rows_per_rank if max_rows_per_rank is not None else int(splits.sum(axis=1).max()) if splits.size else 0
    K = header_rows(row_bytes)
    out = np.full((P, P), (K + cap) * row_bytes, dtype=np.float64)
    back = np.full((P, P), cap * back_row, dtype=np.float64)
    return [sched.dense_exchange("ll dispatch", out, self_bytes=np.diag(out).copy()),
            sched.dense_exchange("ll combine", back, self_bytes=np.diag(back).copy())]  # fmt: skip


PAIR = DispatchCombine("ll", dispatch, combine, schedule, inners=INNERS)
