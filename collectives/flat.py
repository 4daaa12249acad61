"""Flat all-to-all-v: our own pairwise exchange built from point-to-point operations.

P = world size, H = elements per row.
Round i (0 <= i < P): rank r sends its chunk for rank (r + i) % P and receives the chunk from
rank (r - i) % P; round 0 is the local copy. Split counts are exchanged first, so every receive
buffer is sized exactly and zero-row chunks are skipped on both sides.
"""

from __future__ import annotations

import numpy as np
import torch

from moebench.collectives import schedule as sched
from moebench.collectives.exchange import Algorithm, Plan, offsets


def pairwise(group, send: torch.Tensor, send_splits, recv_splits) -> torch.Tensor:
    """Pairwise exchange inside `group` with known counts; returns recv [sum(recv_splits), H]."""
    size, me = group.size, group.rank
    recv = send.new_empty((sum(recv_splits), *send.shape[1:]))
    send_off, recv_off = offsets(send_splits), offsets(recv_splits)
    exchange = group.rows_sendrecv(send, recv)
    for step in range(size):
        dest, source = (me + step) % size, (me - step) % size
        exchange(send_off[dest], send_off[dest + 1], dest, recv_off[source], recv_off[source + 1], source)
    return recv


def plan(comm, send_splits) -> Plan:
    """Exchange split counts with every rank: recv_splits[s] = rank s's send_splits[me]."""
    return Plan(send_splits, comm.world.exchange_counts(tuple(send_splits)))


def forward(comm, send: torch.Tensor, plan: Plan) -> torch.Tensor:
    """send [R, H] (rows for rank 0 first) -> recv [sum(recv_splits), H] (rows from rank 0 first)."""
    return pairwise(comm.world, send, plan.send_splits, plan.recv_splits)


def backward(comm, rows: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Return rows [sum(recv_splits), H] to the ranks they came from -> [R, H] in send order."""
    return pairwise(comm.world, rows, plan.recv_splits, plan.send_splits)


def schedule(splits, row_bytes: int, topo, plan: bool = True, backward: bool = False) -> list[sched.Phase]:
    """Counts (one world alltoall), then P - 1 blocking steps r -> (r + i) % P; step 0 is a local torch copy."""
    if backward:  # rows return along the same routes; the plan is reused
        splits, plan = np.asarray(splits).T, False
    P = topo.world_size
    B = sched.byte_matrix(splits, row_bytes)
    ranks = np.arange(P)
    phases = [sched.world_counts(P)] if plan and P > 1 else []
    phases.append(sched.with_self(sched.phase("self copy", P, blocking=True), np.diag(B).copy()))
    for step in range(1, P):
        dst = (ranks + step) % P
        phases.append(sched.phase(f"step {step}", P, ranks, dst, B[ranks, dst], blocking=True))
    return phases


ALGORITHM = Algorithm("flat", plan, forward, backward, schedule)
