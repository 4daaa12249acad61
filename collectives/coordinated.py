"""Parallelism-coordinated dispatch/combine (DeepSpeed-MoE): each TP rank sends 1/L of the tokens.

P = world size, L = TP degree, t = my TP rank, R = rows a rank holds, M = rows it receives, H = elements per row.
The L ranks of a TP group hold identical `send` and `send_splits` (tokens after a TP block).
Each chunk for destination d is cut into L near-equal parts; TP rank t sends only part t through
the inner all-to-all. Combine returns part t's processed rows, and an all-gather inside the TP
group rebuilds the whole [R, H] result on every TP rank: the same `out` as the plain round trip,
with 1/L of the all-to-all volume. With L = 1 it is the plain round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import moebench.collectives as collectives
from moebench.collectives import plain
from moebench.collectives import schedule as sched
from moebench.collectives.exchange import Algorithm, DispatchCombine, Plan, transpose_chunks, validate_splits


@dataclass(frozen=True)
class Handle:
    """parts[d, u]: rows of chunk d sent by TP rank u; plus the inner algorithm and its plan."""

    algorithm: Algorithm
    plan: Plan
    parts: np.ndarray


def split_parts(send_splits, L: int) -> np.ndarray:
    """[P, L] grid: chunk d's rows cut into L parts, the first (s mod L) parts one row longer."""
    s = np.asarray(send_splits, dtype=np.int64)[:, None]
    return s // L + (np.arange(L)[None, :] < s % L)


def my_slice(send: torch.Tensor, parts: np.ndarray, t: int) -> torch.Tensor:
    """The rows of part t of every chunk, chunk 0 first: [parts[:, t].sum(), H]."""
    L = parts.shape[1]
    if L == 1:
        return send
    chunks = torch.split(send, parts.reshape(-1).tolist())
    return torch.cat([chunks[d * L + t] for d in range(parts.shape[0])])


def dispatch(comm, send: torch.Tensor, send_splits, inner: str = "flat", max_rows_per_rank: int | None = None):
    """send [R, H] (same on every TP rank), send_splits (P counts) -> recv [M, H], recv_splits, handle."""
    algorithm = collectives.ALGORITHMS[inner]
    parts = split_parts(validate_splits(comm, send, send_splits), comm.tp.size)
    part_rows = my_slice(send, parts, comm.tp.rank)
    plan = algorithm.plan(comm, tuple(parts[:, comm.tp.rank].tolist()))
    return algorithm.forward(comm, part_rows, plan), list(plan.recv_splits), Handle(algorithm, plan, parts)


def combine(comm, processed_recv: torch.Tensor, handle: Handle) -> torch.Tensor:
    """processed_recv [M, H] -> out [R, H] on every TP rank (row i answers send row i)."""
    mine = handle.algorithm.backward(comm, processed_recv, handle.plan)
    if comm.tp.size == 1:
        return mine
    gathered = comm.tp.allgatherv(mine, handle.parts.sum(axis=0).tolist())  # TP rank u's parts, u = 0..L-1
    return transpose_chunks(gathered, np.ascontiguousarray(handle.parts.T))  # (u, d) -> (d, u)


def schedule(inner: Algorithm, splits, row_bytes: int, topo, back_bytes: int | None = None,
             max_rows_per_rank: int | None = None) -> list:  # fmt: skip
    """splits[r]: r's TP group's (identical) send_splits. TP rank t cuts out part t of every chunk (one copy),
    the inner plan + forward + backward move 1/L of the rows (out in row_bytes, back in back_bytes), then an
    all-gather inside the TP group and one copy restore the row order. With L = 1, the plain round trip."""
    P, L = topo.world_size, topo.tp
    back = row_bytes if back_bytes is None else back_bytes
    if L == 1:
        return plain.schedule(inner, splits, row_bytes, topo, back)
    splits = np.asarray(splits, dtype=np.int64)
    ranks = np.arange(P)
    part = split_parts(splits.reshape(-1), L).reshape(P, P, L)[ranks, :, ranks % L]  # [P, P]: rows r moves to d
    part_rows = part.sum(axis=1).astype(np.float64)
    full_bytes = splits.sum(axis=1).astype(np.float64) * back
    tp_groups = [topo.tp_ranks(g) for g in range(P // L)]
    gather = sched.group_exchange("tp allgather", tp_groups, lambda a, b: part_rows[a] * back, P)
    return [
        sched.copy_phase("slice", part_rows * row_bytes, P),
        *plain.schedule(inner, part, row_bytes, topo, back),
        sched.with_self(gather, part_rows * back),
        sched.copy_phase("unslice", full_bytes, L * P),
    ]


PAIR = DispatchCombine("coordinated", dispatch, combine, schedule)
