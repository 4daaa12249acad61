"""Message schedules: what an algorithm sends, phase by phase, per rank and link class (no time).

P = world size, G = ranks per node, N = P / G nodes. splits[s, d] = rows rank s sends rank d ([P, P]).

A schedule is a list of phases that run one after another (each waits for the one before: a
blocking sendrecv step, a library all-to-all, a layout copy). Inside a phase all messages go at
once. Each algorithm and dispatch/combine pair builds its own schedule from these pieces, in its
own module; the cost model (bench/topo/costmodel.py) prices a schedule, and `traffic` counts it
the way collectives.comm.Traffic counts a real run, so the two can be checked against each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moebench.collectives.topology import Topology

COUNT_BYTES = 8  # one int64 split count


@dataclass
class Phase:
    """Messages sent at once (src[M] -> dst[M], nbytes[M], global ranks) and per-rank copies ([P] each).

    blocking: a pairwise sendrecv step (the point-to-point path) — a zero-byte message still
    costs a latency (it is still a round trip); otherwise a library collective, which skips empty
    messages.
    """

    name: str
    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray
    copy_bytes: np.ndarray | None = None
    copy_chunks: np.ndarray | None = None
    blocking: bool = False
    matrix: np.ndarray | None = None  # [P, P] bytes s -> d instead of src/dst/nbytes (world phases)
    self_bytes: np.ndarray | None = None  # [P] each rank's own chunk, copied locally (no latency)


def phase(name, P, src=(), dst=(), nbytes=(), copy_bytes=None, copy_chunks=None, blocking=False) -> Phase:
    """A phase of point-to-point messages src -> dst (a rank's chunk for itself never crosses a link)."""
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    nbytes = np.asarray(nbytes, dtype=np.float64)
    keep = src != dst
    return Phase(name, src[keep], dst[keep], nbytes[keep], copy_bytes, copy_chunks, blocking)


def copy_phase(name: str, copy_bytes: np.ndarray, chunks: int) -> Phase:
    """Every rank copies copy_bytes[r] bytes in `chunks` pieces (a layout transform), no messages."""
    P = len(copy_bytes)
    return phase(name, P, copy_bytes=np.asarray(copy_bytes, dtype=np.float64), copy_chunks=np.full(P, chunks))


def group_exchange(name: str, groups: list[list[int]], bytes_fn: Callable, P: int, blocking=False) -> Phase:
    """One all-to-all inside each group (equal sizes): member a sends bytes_fn(a, b) to member b.

    bytes_fn takes arrays of global ranks a[M], b[M] and returns bytes[M] (or one number for all)."""
    members = np.asarray(groups, dtype=np.int64)  # [groups, g]
    g = members.shape[1]
    a = np.repeat(members, g, axis=1).ravel()  # every (a, b) pair of each group
    b = np.tile(members, (1, g)).ravel()
    off = a != b
    a, b = a[off], b[off]
    nbytes = np.broadcast_to(np.asarray(bytes_fn(a, b), dtype=np.float64), a.shape)
    return phase(name, P, a, b, nbytes, blocking=blocking)


def dense_exchange(name: str, matrix: np.ndarray, self_bytes: np.ndarray | None = None) -> Phase:
    """A library all-to-all over the world: rank s sends matrix[s, d] bytes to d (the diagonal stays local)."""
    m = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(m, 0.0)
    empty = np.zeros(0, dtype=np.int64)
    return Phase(name, empty, empty, np.zeros(0), matrix=m, self_bytes=self_bytes)


def with_self(ph: Phase, self_bytes: np.ndarray) -> Phase:
    """The phase, with each rank's own chunk (self_bytes[r]) copied locally by the library."""
    ph.self_bytes = np.asarray(self_bytes, dtype=np.float64)
    return ph


def counts_exchange(name: str, groups: list[list[int]], per_peer: int, P: int) -> Phase:
    """The count exchange of a plan inside each group: per_peer int64 counts to every other member."""
    return group_exchange(name, groups, lambda a, b: per_peer * COUNT_BYTES, P)


def world_counts(P: int) -> Phase:
    """One alltoall of one count per peer over the world (flat's and native's plan)."""
    return dense_exchange("counts", np.full((P, P), COUNT_BYTES, dtype=np.float64))


def byte_matrix(splits: np.ndarray, row_bytes: int) -> np.ndarray:
    """[P, P] bytes s -> d of a split matrix."""
    return np.asarray(splits, dtype=np.float64) * row_bytes


def inter_mask(topo: Topology) -> np.ndarray:
    """[P, P] True where s and d sit on different nodes."""
    node = np.arange(topo.world_size) // topo.ranks_per_node
    return node[:, None] != node[None, :]


def traffic(schedule: list[Phase], topo: Topology) -> np.ndarray:
    """[P, 4] per rank: intra bytes, inter bytes, intra messages, inter messages it sends (nonzero ones),

    the same quantities (and convention) as collectives.comm.Traffic."""
    P = topo.world_size
    out = np.zeros((P, 4))
    inter = inter_mask(topo)
    for ph in schedule:
        if ph.matrix is not None:
            m = ph.matrix
            out[:, 0] += np.where(inter, 0, m).sum(axis=1)
            out[:, 1] += np.where(inter, m, 0).sum(axis=1)
            out[:, 2] += ((m > 0) & ~inter).sum(axis=1)
            out[:, 3] += ((m > 0) & inter).sum(axis=1)
            continue
        keep = ph.nbytes > 0
        src, dst, nb = ph.src[keep], ph.dst[keep], ph.nbytes[keep]
        crosses = (src // topo.ranks_per_node) != (dst // topo.ranks_per_node)
        out[:, 0] += np.bincount(src[~crosses], nb[~crosses], minlength=P)
        out[:, 1] += np.bincount(src[crosses], nb[crosses], minlength=P)
        out[:, 2] += np.bincount(src[~crosses], minlength=P)
        out[:, 3] += np.bincount(src[crosses], minlength=P)
    return out
