"""The contract every all-to-all algorithm and dispatch/combine pair fills, and the chunk helpers they share.

P = world size, R = rows a rank sends, H = elements per row.

An `Algorithm` is plan + forward + backward + schedule:
- plan(comm, send_splits) -> Plan: the counts exchange; after it every rank knows what it receives;
- forward(comm, send[R, H], plan) -> recv[sum(recv_splits), H];
- backward(comm, rows, plan): the same routes in reverse (combine);
- schedule(splits[P, P], row_bytes, topo, plan=True, backward=False) -> list[Phase]: the messages and
  bytes per link class it sends (collectives/schedule.py): what the cost model prices and what the
  traffic counters of a real run must equal.
A `DispatchCombine` pair wraps any algorithm (`inner`) into dispatch/combine with a round-trip schedule.
Plans let a dispatch reuse its counts for the combine, as a dispatch/combine pair does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from moebench.collectives.codec import RAW, Codec


class Plan:
    """Counts for one exchange. send_splits/recv_splits: P row counts (tuples of ints); extra: algorithm-specific.
    A slotted class: made on every call, it costs ~0.1 µs less than a NamedTuple."""

    __slots__ = ("extra", "recv_splits", "send_splits")

    def __init__(self, send_splits: tuple[int, ...], recv_splits: tuple[int, ...], extra: object = None):
        self.send_splits, self.recv_splits, self.extra = send_splits, recv_splits, extra

    def __repr__(self) -> str:
        return f"Plan(send_splits={self.send_splits}, recv_splits={self.recv_splits}, extra={self.extra!r})"


@dataclass(frozen=True)
class Algorithm:
    """An all-to-all-v algorithm: `ALGORITHMS[name](comm, send, send_splits) -> (recv, recv_splits)`."""

    name: str
    plan: Callable  # (comm, send_splits) -> Plan
    forward: Callable  # (comm, send[R, H], plan) -> recv[sum(recv_splits), H]
    backward: Callable  # (comm, rows[sum(recv_splits), H], plan) -> rows[R, H] in send order
    schedule: Callable  # (splits[P, P], row_bytes, topo, plan=True, backward=False) -> list[Phase]
    # (comm, send[R, H], send_splits) -> (recv, recv_splits): plan + forward in one step, for an algorithm whose
    # standalone call has a shorter path than the two (the same count exchange and data call, no Plan kept)
    call: Callable | None = None

    def __call__(self, comm, send: torch.Tensor, send_splits) -> tuple[torch.Tensor, list[int]]:
        if self.call is not None:
            return self.call(comm, send, send_splits)
        plan = self.plan(comm, validate_splits(comm, send, send_splits))
        return self.forward(comm, send, plan), list(plan.recv_splits)


@dataclass(frozen=True)
class DispatchCombine:
    """A dispatch/combine pair over any exchange of ALGORITHMS (`inner`, by name).

    dispatch(comm, send[R, H], send_splits, inner) -> (recv[M, H], recv_splits, handle);
    combine(comm, processed_recv[M, H], handle) -> out[R, H] (row i answers send row i);
    schedule(inner: Algorithm, splits[P, P], row_bytes, topo) -> list[Phase]: dispatch + combine.
    dispatch also takes max_rows_per_rank (the most rows any rank sends, when the caller knows it): a pair
    with fixed-size buffers sizes them from it; the others ignore it. inners: the exchanges it runs over
    (None: any of ALGORITHMS). schedule also takes back_bytes, the combine's row bytes (default row_bytes), and
    max_rows_per_rank as dispatch does.

    How the rows look is the pair's too: codec (collectives/codec.py) writes each row's payload on the wire
    (RAW: its own bytes; fp8: e4m3 + scales) and names combine's dtype; unit names the MoE layer's row
    (bench/layer/units): "assignment", one row per kept (token, expert), or "token", one row per token and
    destination rank carrying its experts there (dedup).
    """

    name: str
    dispatch: Callable
    combine: Callable
    schedule: Callable
    inners: tuple[str, ...] | None = None
    codec: Codec = RAW
    unit: str = "assignment"

    def runs_over(self, inner: str) -> bool:
        return self.inners is None or inner in self.inners

    def wire_row_bytes(self, H: int, dtype: torch.dtype, header: int = 0) -> tuple[int, int]:
        """(dispatch, combine) bytes of one row of H elements of dtype, `header` bytes riding on each
        dispatched row."""
        return self.codec.payload_bytes(H, dtype.itemsize) + header, H * self.codec.combine_dtype(dtype).itemsize


def validate_splits(comm, send: torch.Tensor, send_splits) -> tuple[int, ...]:
    """Check send_splits against send ([R, ...]) and the world size; ValueError naming the problem."""
    splits = send_splits if type(send_splits) is tuple else tuple(map(int, send_splits))
    shape = send.shape  # one read: a 0-d send has none and fails below
    if len(splits) == comm.world.size and shape and sum(splits) == shape[0] and min(splits) >= 0:
        return splits  # the one line a valid call pays (the world has >= 1 member, so splits is not empty)
    if len(splits) != comm.world.size:
        raise ValueError(f"send_splits has {len(splits)} entries; the world has P={comm.world_size} ranks")
    if splits and min(splits) < 0:
        raise ValueError(f"send_splits has a negative count: {list(splits)}")
    raise ValueError(f"send_splits sum to {sum(splits)} but send has {send.shape[0] if send.dim() else 0} rows")


def offsets(splits) -> list[int]:
    """Start row of each chunk: [0, s0, s0+s1, ...] (len(splits) + 1 entries)."""
    return [0, *itertools.accumulate(map(int, splits))]


def transpose_chunks(x: torch.Tensor, sizes: np.ndarray) -> torch.Tensor:
    """Reorder row chunks laid out in row-major order of the grid `sizes[a, b]` into column-major order.

    x: [sizes.sum(), H] holding chunk (0,0), (0,1), ..., (a-1,b-1); returns the same rows ordered
    (0,0), (1,0), ..., (a-1,b-1). One copy (the "layout transform"), none when a or b is 1.
    """
    a, b = sizes.shape
    if a == 1 or b == 1:
        return x
    chunks = torch.split(x, sizes.reshape(-1).tolist())
    return torch.cat([chunks[i * b + j] for j in range(b) for i in range(a)])
