"""The backend's own all-to-all-v (MPI_Alltoallv / all_to_all_single with splits): the reference row.

P = world size, H = elements per row.
"""

from __future__ import annotations

import numpy as np
import torch

from moebench.collectives import flat
from moebench.collectives import schedule as sched
from moebench.collectives.exchange import Algorithm, Plan, validate_splits


def forward(comm, send: torch.Tensor, plan: Plan) -> torch.Tensor:
    """send [R, H] (rows for rank 0 first) -> recv [sum(recv_splits), H] (rows from rank 0 first)."""
    return comm.world.alltoallv(send, plan.send_splits, plan.recv_splits)


def call(comm, send: torch.Tensor, send_splits) -> tuple[torch.Tensor, list[int]]:
    """The standalone all-to-all-v: counts (the plan's exchange), then forward's library call, in one frame.
    send [R, H] -> (recv [sum(recv_splits), H], recv_splits)."""
    world = comm.world
    splits = validate_splits(comm, send, send_splits)
    recv_splits = world.exchange_counts(splits)
    return world.alltoallv(send, splits, recv_splits), list(recv_splits)


def backward(comm, rows: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Return rows [sum(recv_splits), H] to the ranks they came from -> [R, H] in send order."""
    return comm.world.alltoallv(rows, plan.recv_splits, plan.send_splits)


def schedule(splits, row_bytes: int, topo, plan: bool = True, backward: bool = False) -> list[sched.Phase]:
    """Counts (one world alltoall), then one library all-to-all-v of every message at once."""
    if backward:
        splits, plan = np.asarray(splits).T, False
    P = topo.world_size
    B = sched.byte_matrix(splits, row_bytes)
    counts = [sched.world_counts(P)] if plan and P > 1 else []
    return [*counts, sched.dense_exchange("alltoallv", B, self_bytes=np.diag(B).copy())]


# The count exchange is the same single alltoall of P integers that flat uses.
ALGORITHM = Algorithm("native", flat.plan, forward, backward, schedule, call)
