"""Plain dispatch/combine: any all-to-all-v algorithm as a pair, every TP rank sending all its rows.

P = world size, R = rows a rank sends, M = rows it receives, H = elements per row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

import moebench.collectives as collectives
from moebench.collectives.exchange import Algorithm, DispatchCombine, Plan, validate_splits


class Handle(NamedTuple):
    """What combine needs to send rows back: the algorithm and its plan (made every dispatch: a NamedTuple, not a
    frozen dataclass, whose __init__ costs more)."""

    algorithm: Algorithm
    plan: Plan


def dispatch(comm, send: torch.Tensor, send_splits, inner: str = "flat", max_rows_per_rank: int | None = None):
    """send [R, H] (rows for rank 0 first), send_splits (P counts) -> recv [M, H], recv_splits (P counts), handle."""
    algorithm = collectives.ALGORITHMS[inner]  # the package's registry (filled after this module is imported)
    plan = algorithm.plan(comm, validate_splits(comm, send, send_splits))
    return algorithm.forward(comm, send, plan), list(plan.recv_splits), Handle(algorithm, plan)


def combine(comm, processed_recv: torch.Tensor, handle: Handle) -> torch.Tensor:
    """processed_recv [M, H] (row i answers recv row i) -> out [R, H] (row i answers send row i)."""
    return handle.algorithm.backward(comm, processed_recv, handle.plan)


def schedule(inner: Algorithm, splits, row_bytes: int, topo, back_bytes: int | None = None,
             max_rows_per_rank: int | None = None) -> list:  # fmt: skip
    """The inner exchange's plan + forward (rows of row_bytes), then its backward (rows of back_bytes)."""
    back = row_bytes if back_bytes is None else back_bytes
    return [*inner.schedule(splits, row_bytes, topo), *inner.schedule(splits, back, topo, backward=True)]


PAIR = DispatchCombine("plain", dispatch, combine, schedule)
