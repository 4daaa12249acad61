"""Communicator: one small, backend-neutral interface over the backends in collectives/backends/.

P = world size, G = ranks per node, N = P / G nodes, L = TP degree, H = elements per row.

A `Communicator` holds the world and three sub-groups — `intra` (the G ranks of my node),
`inter` (the N ranks sharing my local index, one per node) and `tp` (my L-rank TP group) — each a
`Group` with the same few operations on row tensors `[rows, H]`:

    exchange_counts(counts[size, m]) -> counts[size, m]   alltoall of m integers per peer
    alltoallv(send, send_splits, recv_splits) -> recv      the library's own all-to-all-v
    sendrecv(send, dest, recv, source)                     one paired point-to-point step
    allgatherv(x, counts) -> rows of every member, in member order
    barrier()                                              MPI's busy-polling barrier
    idle_barrier()                                         the same, sleeping while it waits (frees the core)
    allreduce_max(values) / allgather_object(obj)          for the harness, after timing

Ranks passed to a Group are group-local. Every Group counts the bytes and messages it sends to
other ranks, split by link class (same node / other node) into `comm.traffic`: the wire bytes
that the benchmark reports and the cost model checks. A backend module (collectives/backends/)
subclasses Group and builds the Communicator; nothing here knows which backend runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moebench.collectives.topology import Topology

IDLE_POLL_S = 1e-4  # how often a sleeping barrier looks whether the others have arrived
MPI_LAUNCHER_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")


class Meter:
    """The traffic of one cached call layout: its [4] delta, how many calls used it since the last reset, and
    whether each call pays the emulated inter-node latency."""

    __slots__ = ("calls", "delta", "spin_s")

    def __init__(self, delta: np.ndarray, spin_s: float):
        self.delta, self.spin_s, self.calls = delta, spin_s, 0

    def count(self) -> None:
        """One call done: count it and pay the emulated inter-node latency (the hottest paths inline this)."""
        self.calls += 1
        if self.spin_s:
            spin(self.spin_s)


class Traffic:
    """Bytes and messages this rank sent to other ranks, per link class: [intra B, inter B, intra msgs, inter
    msgs] (float64). A cached call layout counts its calls on a Meter (one increment per call); the totals
    are vector arithmetic over the meters when read.

    inter_latency_s: emulated latency (busy-waited) of every collective call that crosses nodes, once per call
    and level (its messages are in flight together), and of every blocking point-to-point message between
    nodes — for emulated clusters, whose kernels have no netem; 0 on real networks.
    """

    def __init__(self) -> None:
        self.totals = np.zeros(4)
        self.inter_latency_s = 0.0
        self._meters: list[Meter] = []

    def meter(self, delta: np.ndarray, crosses_nodes: bool) -> Meter:
        """A Meter for a call layout that will be reused (a backend counts `meter.calls += 1` per call)."""
        m = Meter(delta, self.inter_latency_s if crosses_nodes else 0.0)
        self._meters.append(m)
        return m

    def retire(self, meters) -> None:
        """Fold meters whose layouts are dropped from a cache into the totals."""
        gone = {id(m) for m in meters}
        for m in meters:
            self.totals += m.calls * m.delta
        self._meters = [m for m in self._meters if id(m) not in gone]

    def reset(self) -> None:
        self.totals[:] = 0
        for m in self._meters:
            m.calls = 0

    def as_array(self) -> np.ndarray:
        return self.totals + sum((m.calls * m.delta for m in self._meters), np.zeros(4))

    def add(self, delta: np.ndarray, crosses_nodes: bool) -> None:
        """Count one uncached call's messages (delta as `totals`); pay the emulated latency once if any crossed."""
        self.totals += delta
        if crosses_nodes and self.inter_latency_s:
            spin(self.inter_latency_s)

    def add_message(self, nbytes: int, inter: bool) -> None:
        """One point-to-point message of nbytes, inside the node or across nodes (then it pays the latency)."""
        totals = self.totals
        totals[1 if inter else 0] += nbytes
        totals[3 if inter else 2] += 1
        if inter and self.inter_latency_s:
            spin(self.inter_latency_s)

    @property
    def intra_bytes(self) -> int:
        return int(self.as_array()[0])

    @property
    def inter_bytes(self) -> int:
        return int(self.as_array()[1])

    @property
    def intra_msgs(self) -> int:
        return int(self.as_array()[2])

    @property
    def inter_msgs(self) -> int:
        return int(self.as_array()[3])


@dataclass
class Group:
    """A set of ranks (global ids in `ranks`, in group order) and this rank's place in it.

    Backends subclass it and implement the operations listed in the module docstring; this base holds
    what they share: the link class of each peer, the traffic of one call (cached per split pattern by
    the backends) and the local step of a sendrecv.
    """

    ranks: list[int]
    rank: int
    topology: Topology
    traffic: Traffic
    me: int = field(init=False)
    size: int = field(init=False)  # members (an attribute, not a property: every call of a collective reads it)

    def __post_init__(self):
        self.me, self.size = self.ranks[self.rank], len(self.ranks)
        nodes = np.asarray(self.ranks) // self.topology.ranks_per_node
        here = nodes == self.topology.node_of(self.me)
        others = np.arange(self.size) != self.rank
        self._intra_peer = here & others  # [size] bool: a peer on my node
        self._inter_peer = ~here  # [size] bool: a peer on another node

    def call_traffic(self, nbytes_per_peer) -> tuple[np.ndarray, bool]:
        """One call sending nbytes_per_peer[i] to member i: (its [4] traffic delta, whether it crosses nodes)."""
        b = np.asarray(nbytes_per_peer, dtype=np.float64)
        sent = b > 0
        delta = np.array([b[self._intra_peer].sum(), b[self._inter_peer].sum(),
                          (sent & self._intra_peer).sum(), (sent & self._inter_peer).sum()])  # fmt: skip
        return delta, bool(delta[3])

    def _record_message(self, peer: int, nbytes: int) -> None:
        """A blocking point-to-point message to `peer` (group-local): it pays the emulated latency on its own."""
        if nbytes and peer != self.rank:
            self.traffic.add_message(nbytes, bool(self._inter_peer[peer]))

    def sendrecv(self, send: torch.Tensor, dest: int, recv: torch.Tensor, source: int) -> None:
        """One paired step: send to `dest`, receive from `source` (group-local); to myself it is a copy."""
        if dest == self.rank:
            assert source == self.rank
            recv.copy_(send)
            return
        self._sendrecv_peer(send, dest, recv, source)
        self._record_message(dest, send.numel() * send.element_size())

    def rows_sendrecv(self, send: torch.Tensor, recv: torch.Tensor):
        """step(s0, s1, dest, r0, r1, source) -> None: sendrecv of rows send[s0:s1] to `dest` into recv[r0:r1] from
        `source` (group-local; to myself a copy), bound once to two row buffers [R, ...] and [M, ...] of one dtype:
        the P steps of a pairwise exchange over the same buffers. Here each step slices and calls sendrecv; a
        backend may address the rows directly."""

        def step(s0: int, s1: int, dest: int, r0: int, r1: int, source: int) -> None:
            self.sendrecv(send[s0:s1], dest, recv[r0:r1], source)

        return step


def spin(seconds: float) -> None:
    """Busy-wait (sleep is too coarse for microseconds)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class SpecCache(dict):
    """Per-split-pattern call layouts (each with a `meter`) a backend builds once and reuses; bounded (cleared
    when full, their counts folded into the traffic totals), since under real routing the patterns of a long
    run need not repeat."""

    MAX_ENTRIES = 256

    def __init__(self, traffic: Traffic):
        super().__init__()
        self.traffic = traffic

    def __setitem__(self, key, value) -> None:
        if len(self) >= self.MAX_ENTRIES:
            self.traffic.retire([spec.meter for spec in self.values()])
            self.clear()
        super().__setitem__(key, value)


def from_numpy(a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A numpy buffer as a tensor (viewed as `dtype`: bf16 travels as int16), sharing its memory; an empty one
    gets ordinary strides (numpy gives empty arrays zero strides, which later views reject)."""
    if a.size == 0:
        return torch.empty(a.shape, dtype=dtype or torch.from_numpy(np.empty(0, a.dtype)).dtype)
    out = torch.from_numpy(a)
    return out if dtype is None or out.dtype == dtype else out.view(dtype)


# tensors sharing a storage, +1 for the handle it is asked with (storage_uses(x.untyped_storage()._cdata)): the
# hottest reuse tests call it directly, without storage_use_count's frame
storage_uses = torch._C._storage_Use_Count


def storage_use_count(x: torch.Tensor) -> int:
    """How many tensors share x's memory (x and its views), not counting the storage handle asked for here:
    with sys.getrefcount, how a reused receive buffer knows that no caller still holds it."""
    return storage_uses(x.untyped_storage()._cdata) - 1


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

    def idle_barrier(self) -> None:
        """A barrier that sleeps while it waits: ranks that only wait leave the cores to the ranks that work."""
        self.world.idle_barrier()

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


MPI_SEGMENT_PREFIX = "/dev/shm/mpich_"  # MPICH's shared memory (mpich_shm_*, mpich_vci_*): files per node and job


def mapped_mpi_segments(maps_files: Iterable[Path] = (Path("/proc/self/maps"),)) -> set[str]:
    """Paths under MPI_SEGMENT_PREFIX that the processes of `maps_files` (/proc/<pid>/maps; default this process)
    map, a name already unlinked ending in " (deleted)"; unreadable files (a process gone, no /proc) add none."""
    mapped: set[str] = set()
    for maps in maps_files:
        with contextlib.suppress(OSError):
            text = maps.read_bytes().decode(errors="replace")
            mapped.update(line.split(None, 5)[5].strip() for line in text.splitlines() if MPI_SEGMENT_PREFIX in line)
    return mapped


def unmapped_mpi_segments(since: float = 0.0) -> dict[str, os.stat_result]:
    """{path: its stat} of the files under MPI_SEGMENT_PREFIX made since `since` (time.time()) that no live process
    maps: what ended jobs left. The directory is listed before the processes' maps are read, so a file made in
    between (a job starting) is never among them."""
    prefix, found = Path(MPI_SEGMENT_PREFIX), {}
    for path in prefix.parent.glob(prefix.name + "*"):
        with contextlib.suppress(OSError):  # gone since the listing
            info = path.stat()
            if info.st_mtime >= since:
                found[str(path)] = info
    mapped = mapped_mpi_segments(Path("/proc").glob("[0-9]*/maps"))
    return {path: info for path, info in found.items() if path not in mapped}


def release_mpi_segments() -> list[str]:
    """Unlink the MPICH shared-memory files (/dev/shm/mpich_*) this process maps; returns their paths. Only MPICH's
    teardown at MPI_Finalize unlinks them, so a job that ends otherwise (MPI_Abort, a killed rank, a test's timeout)
    left its nodes' files in /dev/shm, a tmpfs, so in RAM: 1,288 files, 2.3 GB on this machine after a day of runs
    and test suites. The backends call this once every rank has attached (after MPI_Init and a collective), as UCX
    unlinks its own segments once mapped. Unlinking is safe while ranks still map a file: their mappings stay valid,
    only the name goes (the collectives, sub-communicators and MPI_Finalize run as before). Linux only
    (/proc/self/maps); elsewhere nothing is released."""
    released = []
    for path in sorted(mapped_mpi_segments()):
        if path.startswith(MPI_SEGMENT_PREFIX) and not path.endswith("(deleted)"):
            with contextlib.suppress(OSError):
                os.unlink(path)
                released.append(path)
    return released


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
