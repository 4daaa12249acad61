# P = world size, R_s = rows rank s sends, M = rows it receives, H = elements per row (any trailing shape)
"""allgather: Megatron-Core's all-gather token dispatcher as a pair (small expert-parallel groups, large top-k).

Dispatch all-gathers every rank's split counts (P x P integers) and every rank's rows (each rank receives all
sum(R_s) rows), then keeps the chunks addressed to itself, in source order: the rows an all-to-all would have
brought, moved as P - 1 copies of each rank's whole buffer instead of one chunk per peer. Combine returns the
processed rows with the library's all-to-all-v (the all-to-all of partial results; a reduce-scatter would move
sum(R_s) rows again), so the pair runs over `native`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moebench.collectives import schedule as sched
from moebench.collectives.exchange import DispatchCombine, offsets, validate_splits

INNERS = ("native",)


@dataclass(frozen=True)
class Handle:
    """The rows this rank sent to / received from every peer (combine reverses them)."""

    send_splits: tuple[int, ...]
    recv_splits: tuple[int, ...]


def dispatch(comm, send: torch.Tensor, send_splits, inner: str = "native", max_rows_per_rank: int | None = None):
    """send [R, ...] (rows for rank 0 first), send_splits (P counts) -> recv [M, ...], recv_splits, handle."""
    if inner not in INNERS:
        raise ValueError(f"allgather gathers with the library and returns with its all-to-all: it runs over native, "
                         f"not {inner}")  # fmt: skip
    splits = validate_splits(comm, send, send_splits)
    P, me = comm.world_size, comm.rank
    mine = torch.tensor([splits], dtype=torch.int64, device=send.device)
    matrix = comm.world.allgatherv(mine, [1] * P).cpu().numpy()  # [P, P]: row s = rank s's send_splits
    everything = comm.world.allgatherv(send.contiguous(), matrix.sum(axis=1).tolist())
    starts = offsets(matrix.sum(axis=1))
    recv_splits = tuple(int(n) for n in matrix[:, me])
    parts = [everything[starts[s] + int(matrix[s, :me].sum()) :][:n] for s, n in enumerate(recv_splits) if n]
    recv = torch.cat(parts) if parts else everything[:0]
    return recv, list(recv_splits), Handle(splits, recv_splits)


def combine(comm, processed_recv: torch.Tensor, handle: Handle) -> torch.Tensor:
    """processed_recv [M, ...] (row i answers recv row i) -> out [R, ...] (row i answers send row i)."""
    return comm.world.alltoallv(processed_recv, handle.recv_splits, handle.send_splits)


def schedule(inner, splits, row_bytes: int, topo, back_bytes: int | None = None,
             max_rows_per_rank: int | None = None) -> list:  # fmt: skip
    """The counts (every rank's P integers to every peer), every rank's rows to every peer, then the all-to-all-v
    back (rows of back_bytes); the inner exchange plays no part."""
    P = topo.world_size
    splits = np.asarray(splits, dtype=np.int64)
    counts = np.full((P, P), P * sched.COUNT_BYTES, dtype=np.float64)
    rows_out = np.repeat(splits.sum(axis=1)[:, None] * float(row_bytes), P, axis=1)
    back = sched.byte_matrix(splits.T, row_bytes if back_bytes is None else back_bytes)
    return [sched.dense_exchange("allgather counts", counts),
            sched.dense_exchange("allgather rows", rows_out),
            sched.dense_exchange("alltoallv back", back, self_bytes=np.diag(back).copy())]  # fmt: skip


PAIR = DispatchCombine("allgather", dispatch, combine, schedule, inners=INNERS)
