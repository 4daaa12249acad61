"""The backend's own all-to-all-v (MPI_Alltoallv / all_to_all_single with splits): the reference row.

P = world size, H = elements per row.
"""

from __future__ import annotations

import torch
from moebench.collectives import flat
from moebench.collectives.exchange import Algorithm, Plan


def forward(comm, send: torch.Tensor, plan: Plan) -> torch.Tensor:
    """send [N, H] (rows for rank 0 first) -> recv [sum(recv_splits), H] (rows from rank 0 first)."""
    return comm.world.alltoallv(send, plan.send_splits, plan.recv_splits)


def backward(comm, rows: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Return rows [sum(recv_splits), H] to the ranks they came from -> [N, H] in send order."""
    return comm.world.alltoallv(rows, plan.recv_splits, plan.send_splits)


# The count exchange is the same single alltoall of P integers that flat uses.
ALGORITHM = Algorithm("native", flat.plan, forward, backward)
