"""Communicator: one small interface over mpi4py and torch.distributed.

P = world size, G = ranks per node, N = P / G nodes, L = TP degree, H = elements per row.

A `Communicator` holds the world and three sub-groups — `intra` (the G ranks of my node),
`inter` (the N ranks sharing my local index, one per node) and `tp` (my L-rank TP group) — each a
`Group` with the same few operations on row tensors `[rows, H]`:

    exchange_counts(counts[size, m]) -> counts[size, m]   alltoall of m integers per peer
    alltoallv(send, send_splits, recv_splits) -> recv      the library's own all-to-all-v
    sendrecv(send, dest, recv, source)                     one paired point-to-point step
    allgatherv(x, counts) -> rows of every member, in member order

Ranks passed to a Group are group-local. Every Group counts the bytes and messages it sends to
other ranks, split by link class (same node / other node) into `comm.traffic`: the wire bytes
that the benchmark reports and the cost model checks.

Backends: `mpi` moves CPU tensors through numpy views (2-byte floats as 16-bit integers) and CUDA
tensors directly when the MPI is CUDA-aware (else staged through host memory); `torch` uses
torch.distributed (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from moebench.collectives.topology import Topology, from_hostnames

BACKENDS = ("mpi", "torch")
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
    """A set of ranks (global ids in `ranks`, in group order) and this rank's place in it."""

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


# --------------------------------------------------------------------------------------- mpi


def _mpi_view(x: torch.Tensor, cuda_aware: bool):
    """A buffer MPI can read/write in place: numpy for CPU (2-byte floats as int16), the tensor on CUDA."""
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.view(torch.int16)
    elif x.dtype == torch.bool:
        x = x.view(torch.uint8)
    if x.is_cuda:
        assert cuda_aware, "CUDA tensors reach MPI only through a CUDA-aware MPI"
        return x
    return x.numpy()


class MpiGroup(Group):
    def __init__(self, mpi_comm, ranks, topology, traffic, cuda_aware):
        super().__init__(ranks, mpi_comm.Get_rank(), topology, traffic)
        self.mpi = mpi_comm
        self.cuda_aware = cuda_aware
        from mpi4py import MPI

        self._MPI = MPI

    def _staged(self, x: torch.Tensor) -> bool:
        return x.is_cuda and not self.cuda_aware

    def exchange_counts(self, counts: np.ndarray) -> np.ndarray:
        send = np.ascontiguousarray(counts, dtype=np.int64).reshape(self.size, -1)
        recv = np.empty_like(send)
        self.mpi.Alltoall(send, recv)
        self._record_splits(send.shape[1] * 8, [1] * self.size)
        return recv

    def alltoallv(self, send, send_splits, recv_splits):
        if self._staged(send):
            return self.alltoallv(send.cpu(), send_splits, recv_splits).to(send.device)
        recv = send.new_empty((int(sum(recv_splits)), *send.shape[1:]))
        row = row_numel(send)
        scounts = np.asarray(send_splits, dtype=np.int64) * row
        rcounts = np.asarray(recv_splits, dtype=np.int64) * row
        sdispl = np.concatenate(([0], np.cumsum(scounts)[:-1]))
        rdispl = np.concatenate(([0], np.cumsum(rcounts)[:-1]))
        self.mpi.Alltoallv(
            [_mpi_view(send, self.cuda_aware), (scounts, sdispl)],
            [_mpi_view(recv, self.cuda_aware), (rcounts, rdispl)],
        )
        self._record_splits(row_bytes(send), send_splits)
        return recv

    def sendrecv(self, send, dest, recv, source):
        if dest == self.rank:
            assert source == self.rank
            recv.copy_(send)
            return
        if self._staged(send):
            host_recv = recv.cpu()
            self.sendrecv(send.cpu(), dest, host_recv, source)
            recv.copy_(host_recv)
            return
        self.mpi.Sendrecv(_mpi_view(send, self.cuda_aware), dest, 0, _mpi_view(recv, self.cuda_aware), source, 0)
        self._record(dest, send.numel() * send.element_size())

    def allgatherv(self, x, counts):
        if self._staged(x):
            return self.allgatherv(x.cpu(), counts).to(x.device)
        out = x.new_empty((int(sum(counts)), *x.shape[1:]))
        row = row_numel(x)
        rcounts = np.asarray(counts, dtype=np.int64) * row
        displs = np.concatenate(([0], np.cumsum(rcounts)[:-1]))
        self.mpi.Allgatherv(_mpi_view(x, self.cuda_aware), [_mpi_view(out, self.cuda_aware), (rcounts, displs)])
        self._record_allgather(x.numel() * x.element_size())
        return out

    def barrier(self):
        self.mpi.Barrier()


# ------------------------------------------------------------------------------------- torch


def _torch_view(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.uint8) if x.dtype == torch.bool else x


class TorchGroup(Group):
    def __init__(self, pg, ranks, my_global_rank, topology, traffic, device):
        super().__init__(ranks, ranks.index(my_global_rank), topology, traffic)
        self.pg = pg
        self.device = device
        import torch.distributed as dist

        self._dist = dist

    def exchange_counts(self, counts: np.ndarray) -> np.ndarray:
        # On NCCL the counts travel on the GPU and come back to the host: the sync that any
        # all-to-all-v needs before it can size its receive buffer.
        send = torch.as_tensor(np.ascontiguousarray(counts, dtype=np.int64).reshape(self.size, -1), device=self.device)
        recv = torch.empty_like(send)
        self._dist.all_to_all_single(recv, send, group=self.pg)
        self._record_splits(send.shape[1] * 8, [1] * self.size)
        return recv.cpu().numpy()

    def alltoallv(self, send, send_splits, recv_splits):
        recv = send.new_empty((int(sum(recv_splits)), *send.shape[1:]))
        self._dist.all_to_all_single(
            _torch_view(recv),
            _torch_view(send),
            output_split_sizes=[int(c) for c in recv_splits],
            input_split_sizes=[int(c) for c in send_splits],
            group=self.pg,
        )
        self._record_splits(row_bytes(send), send_splits)
        return recv

    def sendrecv(self, send, dest, recv, source):
        if dest == self.rank:
            assert source == self.rank
            recv.copy_(send)
            return
        ops = []
        if send.numel():
            ops.append(self._dist.P2POp(self._dist.isend, _torch_view(send), self.ranks[dest], self.pg))
        if recv.numel():
            ops.append(self._dist.P2POp(self._dist.irecv, _torch_view(recv), self.ranks[source], self.pg))
        if ops:
            for req in self._dist.batch_isend_irecv(ops):
                req.wait()
        self._record(dest, send.numel() * send.element_size())

    def allgatherv(self, x, counts):
        # all_gather needs equal sizes on gloo and NCCL: pad to the largest count, then trim.
        most = int(max(counts))
        padded = x.new_zeros((most, *x.shape[1:]))
        padded[: x.shape[0]] = x
        gathered = x.new_empty((self.size * most, *x.shape[1:]))
        gather = getattr(self._dist, "all_gather_single", None) or self._dist.all_gather_into_tensor
        gather(_torch_view(gathered), _torch_view(padded), group=self.pg)
        self._record_allgather(x.numel() * x.element_size())  # real rows; gloo also moves the padding
        return torch.cat([gathered[i * most : i * most + int(c)] for i, c in enumerate(counts)])

    def barrier(self):
        self._dist.barrier(group=self.pg)


# ------------------------------------------------------------------------------ communicator


class Communicator:
    """World + intra/inter/tp groups of one backend, the topology, and this rank's traffic."""

    def __init__(self, backend: str, world: Group, make_group, topology: Topology, device: torch.device, info: dict):
        self.backend = backend
        self.world = world
        self.topology = topology
        self.device = device
        self.info = info
        self.traffic = world.traffic
        me = world.me
        P, G, L = topology.world_size, topology.ranks_per_node, topology.tp
        # Every rank creates every group in the same order (torch.distributed requires it).
        self.intra = make_group("intra", [topology.node_ranks(n) for n in range(P // G)], topology.node_of(me))
        self.inter = make_group("inter", [topology.cross_ranks(g) for g in range(G)], topology.local_index(me))
        self.tp = make_group("tp", [topology.tp_ranks(t) for t in range(P // L)], me // L)

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
        values = np.ascontiguousarray(values, dtype=np.float64)
        if self.backend == "mpi":
            out = np.empty_like(values)
            self.info["mpi_world"].Allreduce(values, out, op=self.info["MPI"].MAX)
            return out
        import torch.distributed as dist

        t = torch.as_tensor(values, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.cpu().numpy()

    def allgather_object(self, obj) -> list:
        if self.backend == "mpi":
            return self.info["mpi_world"].allgather(obj)
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (a rank failed mid-run)."""
        sys.stdout.flush()
        sys.stderr.flush()
        mpi = _mpi_module_if_initialized()
        if mpi is not None:
            mpi.COMM_WORLD.Abort(code)
        os._exit(code)

    def close(self) -> None:
        """Leave the job cleanly. Under mpiexec the torch backend's TCPStore lives on rank 0: every rank
        drops its process group first, clients drop the store next, rank 0's server goes last."""
        if self.backend != "torch":
            return
        import torch.distributed as dist

        mpi = _mpi_module_if_initialized()
        store = self.info.pop("store", None)
        if mpi is not None:
            mpi.COMM_WORLD.Barrier()
        if dist.is_initialized():
            dist.destroy_process_group()
        if mpi is not None:
            mpi.COMM_WORLD.Barrier()
            if self.rank != 0:
                store = None
            mpi.COMM_WORLD.Barrier()
        del store


def _mpi_module_if_initialized():
    if "mpi4py.MPI" not in sys.modules:
        return None
    from mpi4py import MPI

    return MPI if MPI.Is_initialized() and not MPI.Is_finalized() else None


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in MPI_LAUNCHER_VARS)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def _cuda_aware(MPI) -> bool:
    try:
        return bool(MPI.Query_cuda_support())
    except (AttributeError, NotImplementedError):
        return False


def _init_mpi(ranks_per_node, tp, device):
    if launched_by_torchrun() and not launched_by_mpi():
        raise ValueError("the mpi backend needs an MPI launcher (mpiexec/mpirun); under torchrun use --backend torch")
    from mpi4py import MPI

    world_comm = MPI.COMM_WORLD
    rank, P = world_comm.Get_rank(), world_comm.Get_size()
    topology = from_hostnames(world_comm.allgather(socket.gethostname()), ranks_per_node, tp)
    cuda_aware = device.type == "cuda" and _cuda_aware(MPI)
    traffic = Traffic()

    def make_group(kind, groups, mine):
        sub = world_comm.Split(color=mine, key=rank)
        return MpiGroup(sub, groups[mine], topology, traffic, cuda_aware)

    world = MpiGroup(world_comm, list(range(P)), topology, traffic, cuda_aware)
    info = {"mpi_world": world_comm, "MPI": MPI, "cuda_aware_mpi": cuda_aware, "launcher": "mpi"}
    return world, make_group, topology, info


def _store_from_mpi(rank: int, P: int):
    """Rank 0 opens a TCPStore on a port the OS picks (no race for a free port); MPI tells the others."""
    import torch.distributed as dist
    from mpi4py import MPI

    host = socket.gethostname()
    store = dist.TCPStore(host, 0, P, is_master=True, wait_for_workers=False) if rank == 0 else None
    host, port = MPI.COMM_WORLD.bcast((host, store.port) if rank == 0 else None, root=0)
    return store if rank == 0 else dist.TCPStore(host, port, P, is_master=False)


def _init_torch(ranks_per_node, tp, device):
    import torch.distributed as dist

    store, init_method = None, None
    if launched_by_mpi():
        from mpi4py import MPI

        rank, P, launcher = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size(), "mpi"
        store = _store_from_mpi(rank, P)
    elif launched_by_torchrun():
        rank, P, init_method, launcher = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", "torchrun"
    else:
        rank, P, launcher = 0, 1, "none"
        store = dist.HashStore()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group(backend, init_method=init_method, store=store, rank=rank, world_size=P)
    hostnames = [None] * P
    dist.all_gather_object(hostnames, socket.gethostname())
    topology = from_hostnames(hostnames, ranks_per_node, tp)
    traffic = Traffic()

    def make_group(kind, groups, mine):
        pgs = [dist.new_group(ranks) for ranks in groups]
        return TorchGroup(pgs[mine], groups[mine], rank, topology, traffic, device)

    world = TorchGroup(dist.group.WORLD, list(range(P)), rank, topology, traffic, device)
    info = {"launcher": launcher, "process_group": backend, "store": store}
    return world, make_group, topology, info, device


def init_comm(
    backend: str = "mpi",
    ranks_per_node: int | None = None,
    tp: int = 1,
    device: str | None = None,
    inter_latency_us: float | None = None,
) -> Communicator:
    """Join the job: `backend` "mpi" (mpi4py) or "torch" (torch.distributed: gloo on CPU, NCCL on GPU).

    ranks_per_node: G, to emulate G ranks per node on one host (default: group by hostname).
    tp: L, the TP degree (groups of L consecutive ranks). device: "cpu" or "cuda" (default: cuda
    when available). inter_latency_us: emulated latency per inter-node message (default: the
    MOEBENCH_INTER_LATENCY_US environment variable, else 0). Raises ValueError (a TopologyError)
    when G or L does not divide P.
    """
    if inter_latency_us is None:
        inter_latency_us = float(os.environ.get("MOEBENCH_INTER_LATENCY_US", "0"))
    if inter_latency_us < 0:
        raise ValueError(f"inter-node latency must be >= 0 µs, got {inter_latency_us}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and backend == "mpi" and torch.cuda.device_count():
        torch.cuda.set_device(int(os.environ.get("MPI_LOCALRANKID", 0)) % torch.cuda.device_count())
    if backend == "mpi":
        world, make_group, topology, info = _init_mpi(ranks_per_node, tp, dev)
    else:
        world, make_group, topology, info, dev = _init_torch(ranks_per_node, tp, dev)
    world.traffic.inter_latency_s = inter_latency_us * 1e-6
    return Communicator(backend, world, make_group, topology, dev, info)
