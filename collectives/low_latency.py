# P = world size, R = rows a rank sends, M = rows it receives, H = elements per row (any trailing shape),
# C = cap (rows per peer), K = header rows carrying a count (ceil(8 / row bytes))
"""ll: the low-latency dispatch/combine of DeepEP and pplx-kernels: fixed-size per-peer buffers, the counts
inside the payload, one fixed-size all-to-all each way and no count exchange.

Every rank reserves C rows for every peer, C agreed without communication: `cap_rows`, or by default the worst
case, `max_rows_per_rank` (the most rows any rank sends: tokens per rank x k in the MoE layer, every row to one
peer). Dispatch writes each peer's row count into K header rows ahead of its rows and sends P x (K + C) rows
(the library's all-to-all with equal counts: MPI's Alltoall, a request the mpi backend keeps for the shape);
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


def dispatch(comm, send: torch.Tensor, send_splits, inner: str = "native", max_rows_per_rank: int | None = None,
             cap_rows: int | None = None):  # fmt: skip
    """send [R, ...] (rows for rank 0 first), send_splits (P counts) -> recv [M, ...], recv_splits, handle."""
    if inner not in INNERS:
        raise ValueError(f"ll is its own fixed-size exchange (the library's all-to-all): it runs over native, "
                         f"not {inner}")  # fmt: skip
    splits = validate_splits(comm, send, send_splits)
    cap = cap_rows_for(cap_rows, max_rows_per_rank)
    over = [(d, n) for d, n in enumerate(splits) if n > cap]
    if over:
        d, n = over[0]
        raise ValueError(f"ll: rank {comm.rank} sends {n} rows to rank {d}, over the cap of {cap} rows per peer")
    P, K = comm.world_size, header_rows(row_bytes(send))
    buf = _blocks(send, splits, K + cap, K, P)
    counts = torch.tensor(splits, dtype=torch.int64).view(torch.uint8).view(P, COUNT_BYTES)
    _count_slots(buf, P).copy_(counts)
    recv_buf = comm.world.alltoallv(buf, (K + cap,) * P, (K + cap,) * P)
    # the one host sync: the counts the payload carried
    recv_splits = tuple(_count_slots(recv_buf, P).cpu().reshape(-1).view(torch.int64).tolist())
    return _unblock(recv_buf, recv_splits, K + cap, K), list(recv_splits), Handle(cap, splits, recv_splits)


def combine(comm, processed_recv: torch.Tensor, handle: Handle) -> torch.Tensor:
    """processed_recv [M, ...] (row i answers recv row i) -> out [R, ...] (row i answers send row i)."""
    P, cap = comm.world_size, handle.cap
    buf = _blocks(processed_recv, handle.recv_splits, cap, 0, P)
    back = comm.world.alltoallv(buf, (cap,) * P, (cap,) * P)
    return _unblock(back, handle.send_splits, cap, 0)


def schedule(inner, splits, row_bytes: int, topo) -> list:
    """One fixed-size all-to-all each way, no count exchange: P x (K + C) rows out (C the worst case, the most
    rows any rank sends), P x C rows back; the inner exchange plays no part."""
    P = topo.world_size
    splits = np.asarray(splits, dtype=np.int64)
    cap = int(splits.sum(axis=1).max()) if splits.size else 0
    K = header_rows(row_bytes)
    out = np.full((P, P), (K + cap) * row_bytes, dtype=np.float64)
    back = np.full((P, P), cap * row_bytes, dtype=np.float64)
    return [sched.dense_exchange("ll dispatch", out, self_bytes=np.diag(out).copy()),
            sched.dense_exchange("ll combine", back, self_bytes=np.diag(back).copy())]  # fmt: skip


PAIR = DispatchCombine("ll", dispatch, combine, schedule, inners=INNERS)
