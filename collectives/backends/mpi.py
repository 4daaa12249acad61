"""The mpi backend: mpi4py over any MPI (the embedded MPICH by default).

CPU tensors move through numpy views (2-byte floats as 16-bit integers); CUDA tensors move directly
when the MPI is CUDA-aware, else staged through host memory.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import torch

from moebench.collectives.comm import (
    Communicator,
    Group,
    Traffic,
    launched_by_mpi,
    launched_by_torchrun,
    row_bytes,
    row_numel,
)
from moebench.collectives.topology import from_hostnames


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

    def allreduce_max(self, values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values)
        self.mpi.Allreduce(values, out, op=self._MPI.MAX)
        return out

    def allgather_object(self, obj) -> list:
        return self.mpi.allgather(obj)


def bootstrap(ranks_per_node: int | None, tp: int, device: torch.device) -> Communicator:
    """Join MPI_COMM_WORLD (mpiexec/mpirun, or a single process without a launcher)."""
    if launched_by_torchrun() and not launched_by_mpi():
        raise ValueError("the mpi backend needs an MPI launcher (mpiexec/mpirun); under torchrun use --backend torch")
    from mpi4py import MPI

    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("MPI_LOCALRANKID", 0)) % torch.cuda.device_count())
    world_comm = MPI.COMM_WORLD
    rank, P = world_comm.Get_rank(), world_comm.Get_size()
    topology = from_hostnames(world_comm.allgather(socket.gethostname()), ranks_per_node, tp)
    cuda_aware = device.type == "cuda" and bool(MPI.Query_cuda_support())
    traffic = Traffic()

    def make_group(groups, mine):
        sub = world_comm.Split(color=mine, key=rank)
        return MpiGroup(sub, groups[mine], topology, traffic, cuda_aware)

    world = MpiGroup(world_comm, list(range(P)), topology, traffic, cuda_aware)
    info = {"cuda_aware_mpi": cuda_aware, "launcher": "mpi"}
    return Communicator("mpi", world, make_group, topology, device, info, teardown=lambda comm: None)
