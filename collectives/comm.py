"""Communicator: one small, backend-neutral interface over the backends in collectives/backends/.

P = world size, G = ranks per node, N = P / G nodes, L = TP degree, H = elements per row.

A `Communicator` holds the world and three sub-groups — `intra` (the G ranks of my node),
`inter` (the N ranks sharing my local index, one per node) and `tp` (my L-rank TP group) — each a
`Group` with the same few operations on row tensors `[rows, H]`:

    exchange_counts(counts[size, m]) -> counts[size, m]   alltoall of m integers per peer
    alltoallv(send, send_splits, recv_splits) -> recv      the library's own all-to-all-v
    sendrecv(send, dest, recv, source)                     one paired point-to-point step
    allgatherv(x, counts) -> rows of every member, in member order
    barrier()
    allreduce_max(values) / allgather_object(obj)          for the harness, after timing

Ranks passed to a Group are group-local. Every Group counts the bytes and messages it sends to
other ranks, split by link class (same node / other node) into `comm.traffic`: the wire bytes
that the benchmark reports and the cost model checks. A backend module (collectives/backends/)
subclasses Group and builds the Communicator; nothing here knows which backend runs.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from moebench.collectives.topology import Topology

MPI_LAUNCHER_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")


@dataclass
class Traffic:
    """Bytes and messages this rank sent to other ranks, per link class.

    inter_latency_s: emulated latency added (by busy-waiting) to every inter-node message this
    rank sends — for emulated clusters, whose kernels have no netem; 0 on real networks.
    """

    intra_bytes: int = 0
    inter_bytes: int = 0
    intra_msgs: int = 0
    inter_msgs: int = 0
    inter_latency_s: float = 0.0

    def reset(self) -> None:
        self.intra_bytes = self.inter_bytes = self.intra_msgs = self.inter_msgs = 0

    def as_array(self) -> np.ndarray:
        return np.array([self.intra_bytes, self.inter_bytes, self.intra_msgs, self.inter_msgs], dtype=np.float64)


@dataclass
class Group:
    """A set of ranks (global ids in `ranks`, in group order) and this rank's place in it.

    Backends subclass it and implement the operations listed in the module docstring.
    """

    ranks: list[int]
    rank: int
    topology: Topology
    traffic: Traffic
    me: int = field(init=False)

    def __post_init__(self):
        self.me = self.ranks[self.rank]

    @property
    def size(self) -> int:
        return len(self.ranks)

    def _record(self, peer: int, nbytes: int) -> None:
        peer_global = self.ranks[peer]
        if nbytes == 0 or peer_global == self.me:
            return
        if self.topology.same_node(peer_global, self.me):
            self.traffic.intra_bytes += nbytes
            self.traffic.intra_msgs += 1
        else:
            self.traffic.inter_bytes += nbytes
            self.traffic.inter_msgs += 1
            if self.traffic.inter_latency_s:
                _spin(self.traffic.inter_latency_s)

    def _record_splits(self, row_bytes: int, splits) -> None:
        for peer, rows in enumerate(splits):
            self._record(peer, int(rows) * row_bytes)

    def _record_allgather(self, nbytes: int) -> None:
        for peer in range(self.size):
            self._record(peer, nbytes)


def _spin(seconds: float) -> None:
    """Busy-wait (sleep is too coarse for microseconds)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def row_numel(x: torch.Tensor) -> int:
    """Elements in one row of `x` ([rows, ...]); valid for zero rows too."""
    return math.prod(x.shape[1:])


def row_bytes(x: torch.Tensor) -> int:
    """Bytes in one row of `x` ([rows, ...])."""
    return row_numel(x) * x.element_size()


class Communicator:
    """World + intra/inter/tp groups of one backend, the topology, and this rank's traffic.

    backend: the backend's name ("mpi", "torch"); make_group(groups, mine) builds this rank's Group
    from the partition `groups` (lists of global ranks, every rank passing the same list) where
    `mine` indexes its own; teardown: the backend's way of leaving the job.
    """

    def __init__(self, backend: str, world: Group, make_group, topology: Topology, device, info: dict, teardown):
        self.backend = backend
        self.world = world
        self.topology = topology
        self.device = device
        self.info = info
        self.traffic = world.traffic
        self._teardown = teardown
        me = world.me
        P, G, L = topology.world_size, topology.ranks_per_node, topology.tp
        # Every rank creates every group in the same order (torch.distributed requires it).
        self.intra = make_group([topology.node_ranks(n) for n in range(P // G)], topology.node_of(me))
        self.inter = make_group([topology.cross_ranks(g) for g in range(G)], topology.local_index(me))
        self.tp = make_group([topology.tp_ranks(t) for t in range(P // L)], me // L)

    @property
    def rank(self) -> int:
        return self.world.me

    @property
    def world_size(self) -> int:
        return self.world.size

    def barrier(self) -> None:
        self.world.barrier()

    def allreduce_max(self, values: np.ndarray) -> np.ndarray:
        """Element-wise max over ranks of a float64 array (used after timing, never inside)."""
        return self.world.allreduce_max(np.ascontiguousarray(values, dtype=np.float64))

    def allgather_object(self, obj) -> list:
        return self.world.allgather_object(obj)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (a rank failed mid-run)."""
        sys.stdout.flush()
        sys.stderr.flush()
        mpi = mpi_module_if_initialized()
        if mpi is not None:
            mpi.COMM_WORLD.Abort(code)
        os._exit(code)

    def close(self) -> None:
        """Leave the job cleanly (the backend's teardown)."""
        self._teardown(self)


def mpi_module_if_initialized():
    """mpi4py's MPI module where MPI is running in this process (an mpiexec launch), else None."""
    if "mpi4py.MPI" not in sys.modules:
        return None
    from mpi4py import MPI

    return MPI if MPI.Is_initialized() and not MPI.Is_finalized() else None


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in MPI_LAUNCHER_VARS)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)
