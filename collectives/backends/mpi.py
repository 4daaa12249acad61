"""The mpi backend: mpi4py over any MPI (the embedded MPICH by default).

CPU tensors move through numpy views (2-byte floats as 16-bit integers); CUDA tensors move directly
when the MPI is CUDA-aware, else staged through host memory.
"""

from __future__ import annotations

import ctypes
import math
import os
import socket
import time
from functools import partial
from struct import Struct
from sys import getrefcount

import numpy as np
import torch

from moebench.collectives.comm import (
    IDLE_POLL_S,
    Communicator,
    Group,
    SpecCache,
    Traffic,
    from_numpy,
    launched_by_mpi,
    launched_by_torchrun,
    release_mpi_segments,
    row_numel,
    spin,
    storage_uses,
)
from moebench.collectives.topology import from_hostnames

_AS_INTEGERS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.bool: torch.uint8}


def _mpi_view(x: torch.Tensor, cuda_aware: bool):
    """A buffer MPI can read/write in place: numpy for CPU (2-byte floats as int16), the tensor on CUDA."""
    x = x.view(_AS_INTEGERS[x.dtype]) if x.dtype in _AS_INTEGERS else x
    if x.is_cuda:
        assert cuda_aware, "CUDA tensors reach MPI only through a CUDA-aware MPI"
        return x
    return x.numpy()


def _as_bytes(x: torch.Tensor) -> torch.Tensor:
    """The contiguous tensor's bytes as a flat uint8 tensor (any dtype, zero rows included)."""
    return x.contiguous().reshape(-1).view(torch.uint8)


class _VectorSpec:
    """A cached all-to-all-v layout for one split pattern (at decode the same few patterns repeat): byte
    counts and displacements (the payload moves as MPI.BYTE, whatever its dtype), the receive buffer's shape,
    and the call's traffic meter."""

    __slots__ = ("byte", "meter", "np_dtype", "recv", "recv_args", "recv_shape", "send", "send_args", "send_nbytes",
                 "view")  # fmt: skip

    def __init__(self, group, send_splits, recv_splits, send: torch.Tensor):
        row = row_numel(send) * send.element_size()
        scounts = np.asarray(send_splits, dtype=np.int64) * row
        rcounts = np.asarray(recv_splits, dtype=np.int64) * row
        self.send_args = (scounts, np.cumsum(scounts) - scounts)
        self.recv_args = (rcounts, np.cumsum(rcounts) - rcounts)
        self.send_nbytes = int(scounts.sum())
        self.recv_shape = (int(sum(recv_splits)), *send.shape[1:])
        # the receive buffer is a numpy array (cheaper to make than a tensor): bf16 as int16, viewed back
        self.view = _AS_INTEGERS.get(send.dtype) if send.dtype == torch.bfloat16 else None
        self.np_dtype = torch.empty(0, dtype=self.view or send.dtype).numpy().dtype
        self.meter = group.traffic.meter(*group.call_traffic(scounts))
        self.byte = group._byte
        self.recv = None  # (numpy buffer, the tensor over it) of the last call, reused once nothing else holds it
        self.send = (None, None)  # (address, MPI send arguments) of the last call: reused for the same address

    def new_recv(self, dtype: torch.dtype):
        """(MPI receive arguments [numpy buffer, counts and displacements, BYTE], the tensor over the buffer): a
        fresh receive buffer, kept as the last call's. MpiGroup.alltoallv hands the last one out again once no
        one holds its tensor (neither it nor a view of its memory: at decode this saves ~1 µs of allocation a
        call)."""
        recv = np.empty(self.recv_shape, self.np_dtype)
        self.recv = (
            [recv, self.recv_args, self.byte],
            (torch.from_numpy(recv) if self.view is None and self.recv_shape[0] else from_numpy(recv, dtype)),
        )
        return self.recv


class _CountsSpec:
    """The count exchange of one width m as an MPI-4 persistent collective (Alltoall_init): buffers, request and
    meter built once; each call is a copy in, Start, Wait and a copy out."""

    __slots__ = ("meter", "pack", "recv", "request", "send", "start", "unpack", "wait")

    def __init__(self, group, shape):
        self.send, self.recv = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
        # the split counts go in and out with struct, not numpy's conversions; every call's methods bound once:
        # pack(*counts) fills send, unpack() -> the tuple received
        layout = Struct(f"={self.send.size}q")
        self.pack, self.unpack = partial(layout.pack_into, self.send, 0), partial(layout.unpack_from, self.recv)
        self.request = group.mpi.Alltoall_init(self.send, self.recv)
        self.start, self.wait = self.request.Start, self.request.Wait
        m = 1 if len(shape) == 1 else shape[1]
        self.meter = group.traffic.meter(*group.call_traffic(np.full(group.size, m * 8)))


class MpiGroup(Group):
    def __init__(self, mpi_comm, ranks, topology, traffic, cuda_aware):
        super().__init__(ranks, mpi_comm.Get_rank(), topology, traffic)
        self.mpi = mpi_comm
        self.cuda_aware = cuda_aware
        from mpi4py import MPI

        self._MPI = MPI
        self._address, self._byte, self._alltoallv = MPI.buffer.fromaddress, MPI.BYTE, mpi_comm.Alltoallv
        self._specs = SpecCache(traffic)
        self._counts: dict[tuple, _CountsSpec] = {}
        self._split_counts: _CountsSpec | None = None  # the [size] count exchange every plan makes
        self._persistent: list = []  # persistent_alltoall's requests, freed with the group

    def exchange_counts(self, counts):
        """counts: a tuple of one count per member (the split counts: the fast path, returned as a tuple) or
        [size, m] integers (returned as a [size, m] array), row i from member i."""
        if type(counts) is tuple:  # the split counts: every plan's, so the shortest path
            spec = self._split_counts or self._counts_spec((self.size,))
            spec.pack(*counts)
            spec.start()
            spec.wait()
            meter = spec.meter
            meter.calls += 1
            if meter.spin_s:
                spin(meter.spin_s)
            return spec.unpack()
        counts = np.asarray(counts)
        spec = self._counts.get(counts.shape) or self._counts_spec(counts.shape)
        spec.send[...] = counts
        spec.start()
        spec.wait()
        spec.meter.count()
        return spec.recv.copy()

    def _counts_spec(self, shape) -> _CountsSpec:
        spec = self._counts[shape] = _CountsSpec(self, shape)
        if shape == (self.size,):
            self._split_counts = spec
        return spec

    def alltoallv(self, send, send_splits, recv_splits):
        """The lean path on CPU: a cached layout, a numpy receive buffer, the send tensor passed by address."""
        if type(send_splits) is not tuple or type(recv_splits) is not tuple:
            send_splits, recv_splits = tuple(map(int, send_splits)), tuple(map(int, recv_splits))
        if send.is_cuda:
            return self._alltoallv_cuda(send, send_splits, recv_splits)
        assert send.is_contiguous()
        key = (send_splits, recv_splits, send.shape, send.dtype)
        spec = self._specs.get(key) or self._new_spec(key, send)
        last = spec.recv  # the last receive buffer, if nothing but the spec holds it (the hottest call at decode)
        if last is not None and getrefcount(last[1]) == 2 and storage_uses(last[1].untyped_storage()._cdata) == 2:
            recv_args, out = last
        else:
            recv_args, out = spec.new_recv(send.dtype)
        address = send.data_ptr()
        sent = spec.send  # MPI's send arguments wrap (address, bytes): the same address, the same arguments
        if sent[0] != address:
            sent = spec.send = (address, [self._address(address, spec.send_nbytes), spec.send_args, self._byte])
        self._alltoallv(sent[1], recv_args)
        meter = spec.meter
        meter.calls += 1
        if meter.spin_s:
            spin(meter.spin_s)
        return out

    def ialltoallv(self, send, send_splits, recv_splits):
        """Non-blocking all-to-all-v (MPI Ialltoallv): (recv, wait); recv holds the rows once wait() returns.
        A fresh receive buffer per call (several may be in flight); the send tensor stays alive until wait."""
        if type(send_splits) is not tuple or type(recv_splits) is not tuple:
            send_splits, recv_splits = tuple(map(int, send_splits)), tuple(map(int, recv_splits))
        if send.is_cuda and not self.cuda_aware:  # staged through host memory: blocking
            recv = self.alltoallv(send, send_splits, recv_splits)
            return recv, lambda: None
        send = send if send.is_contiguous() else send.contiguous()
        spec = self._spec(send, send_splits, recv_splits)
        byte = self._byte
        if send.is_cuda:
            recv = send.new_empty(spec.recv_shape)
            request = self.mpi.Ialltoallv([_mpi_view(_as_bytes(send), True), spec.send_args, byte],
                                          [_mpi_view(_as_bytes(recv), True), spec.recv_args, byte])  # fmt: skip
        else:  # the lean path, as alltoallv's: send by address, a fresh numpy receive buffer
            buffer = np.empty(spec.recv_shape, spec.np_dtype)
            recv = from_numpy(buffer, send.dtype)
            request = self.mpi.Ialltoallv([self._address(send.data_ptr(), spec.send_nbytes), spec.send_args, byte],
                                          [buffer, spec.recv_args, byte])  # fmt: skip
        meter = spec.meter

        def wait(request=request, send=send):
            request.Wait()
            meter.count()

        return recv, wait

    def _new_spec(self, key, send) -> _VectorSpec:
        spec = self._specs[key] = _VectorSpec(self, key[0], key[1], send)
        return spec

    def _spec(self, send, send_splits, recv_splits) -> _VectorSpec:
        key = (send_splits, recv_splits, send.shape, send.dtype)
        return self._specs.get(key) or self._new_spec(key, send)

    def _alltoallv_cuda(self, send, send_splits, recv_splits):
        if not self.cuda_aware:  # staged through host memory
            return self.alltoallv(send.cpu(), send_splits, recv_splits).to(send.device)
        spec = self._spec(send, send_splits, recv_splits)
        recv = send.new_empty(spec.recv_shape)
        byte = self._MPI.BYTE
        self.mpi.Alltoallv(
            [send.view(torch.uint8), spec.send_args, byte], [recv.view(torch.uint8), spec.recv_args, byte]
        )
        spec.meter.calls += 1
        if spec.meter.spin_s:
            spin(spec.meter.spin_s)
        return recv

    def persistent_alltoall(self, send: np.ndarray, recv: np.ndarray):
        """A fixed-size all-to-all on two host buffers ([size, block] uint8, block d to / from member d) as an
        MPI-4 persistent collective (Alltoallv_init): (run, release); run() = Start + Wait and the traffic meter,
        release() frees the request (and with it MPI's hold on the buffers); the group frees what is left. My
        own block is not copied (the caller has it in send: at P=2 half of what a fixed-size Alltoall moves)."""
        counts = np.full(self.size, send.shape[1], dtype=np.int64)
        counts[self.rank] = 0
        layout = (counts, np.arange(self.size, dtype=np.int64) * send.shape[1])
        byte = self._MPI.BYTE
        request = self.mpi.Alltoallv_init([send, layout, byte], [recv, layout, byte])
        self._persistent.append(request)

        def release():
            if request in self._persistent:
                self._persistent.remove(request)
                request.Free()

        meter = self.traffic.meter(*self.call_traffic(counts))

        def run(send=send, recv=recv):
            request.Start()
            request.Wait()
            meter.count()

        return run, release

    def prepared_alltoallv(self, send, send_splits, recv_splits):
        """The library call alone, every argument built beforehand: a () -> None closure (the `floor` row)."""
        spec = _VectorSpec(self, send_splits, recv_splits, send)
        recv = send.new_empty(spec.recv_shape)
        byte = self._MPI.BYTE
        sargs = [_mpi_view(_as_bytes(send), self.cuda_aware), spec.send_args, byte]
        rargs = [_mpi_view(_as_bytes(recv), self.cuda_aware), spec.recv_args, byte]
        alltoallv = self.mpi.Alltoallv
        return lambda: alltoallv(sargs, rargs)

    def free(self) -> None:
        """Release the persistent requests (before MPI finalizes)."""
        for spec in self._counts.values():
            spec.request.Free()
        self._counts.clear()
        for request in self._persistent:
            request.Free()
        self._persistent.clear()
        self._split_counts = None

    def rows_sendrecv(self, send, recv):
        """Host rows addressed directly: each step is one Sendrecv on row addresses, and the step to myself a
        memmove (slicing two tensors and copying one cost ~5 us a step more at 1 KiB: pairwise 12.4 -> 7.5 us at
        P = 2, against 4.6 for the library's Alltoallv). CUDA or strided buffers: the sliced steps."""
        if send.is_cuda or not (send.is_contiguous() and recv.is_contiguous()):
            return super().rows_sendrecv(send, recv)
        row = math.prod(send.shape[1:]) * send.element_size()  # bytes per row (send and recv share the row shape)
        send_at, recv_at, me = send.data_ptr(), recv.data_ptr(), self.rank
        sendrecv, address, byte, record = self.mpi.Sendrecv, self._address, self._byte, self._record_message

        def step(s0: int, s1: int, dest: int, r0: int, r1: int, source: int) -> None:
            nbytes = (s1 - s0) * row
            if dest == me:
                if nbytes:
                    ctypes.memmove(recv_at + r0 * row, send_at + s0 * row, nbytes)
                return
            sendrecv([address(send_at + s0 * row, nbytes), byte], dest, 0,
                     [address(recv_at + r0 * row, (r1 - r0) * row), byte], source, 0)  # fmt: skip
            record(dest, nbytes)

        return step

    def _sendrecv_peer(self, send, dest, recv, source):
        if send.is_cuda and not self.cuda_aware:
            host_recv = recv.cpu()
            self._sendrecv_peer(send.cpu(), dest, host_recv, source)
            recv.copy_(host_recv)
            return
        if send.is_cuda:
            self.mpi.Sendrecv(_mpi_view(send, True), dest, 0, _mpi_view(recv, True), source, 0)
            return
        address, byte = self._address, self._byte
        sbuf = [address(send.data_ptr(), send.numel() * send.element_size()), byte]
        rbuf = [address(recv.data_ptr(), recv.numel() * recv.element_size()), byte]
        self.mpi.Sendrecv(sbuf, dest, 0, rbuf, source, 0)

    def allgatherv(self, x, counts):
        if x.is_cuda and not self.cuda_aware:
            return self.allgatherv(x.cpu(), counts).to(x.device)
        counts = tuple(map(int, counts))
        spec = self._spec(x, counts, counts)
        nbytes, byte = x.numel() * x.element_size(), self._byte
        if x.is_cuda:
            out = x.new_empty(spec.recv_shape)
            self.mpi.Allgatherv([_as_bytes(x), nbytes, byte], [_as_bytes(out), spec.recv_args, byte])
        else:
            recv, mine = np.empty(spec.recv_shape, spec.np_dtype), x.contiguous()  # `mine` outlives the call
            self.mpi.Allgatherv([self._address(mine.data_ptr(), nbytes), nbytes, byte],
                                [recv, spec.recv_args, byte])  # fmt: skip
            out = from_numpy(recv, x.dtype)
        self.traffic.add(*self.call_traffic(np.full(self.size, nbytes)))
        return out

    def barrier(self):
        self.mpi.Barrier()

    def idle_barrier(self):
        request = self.mpi.Ibarrier()
        while not request.Test():
            time.sleep(IDLE_POLL_S)

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
    hostnames = world_comm.allgather(socket.gethostname())
    release_mpi_segments()  # every rank has left MPI_Init (all took part in the allgather): the names can go
    topology = from_hostnames(hostnames, ranks_per_node, tp)
    cuda_aware = device.type == "cuda" and bool(MPI.Query_cuda_support())
    traffic = Traffic()

    def make_group(groups, mine):
        sub = world_comm.Split(color=mine, key=rank)
        return MpiGroup(sub, groups[mine], topology, traffic, cuda_aware)

    world = MpiGroup(world_comm, list(range(P)), topology, traffic, cuda_aware)
    info = {"cuda_aware_mpi": cuda_aware, "launcher": "mpi"}
    return Communicator("mpi", world, make_group, topology, device, info, teardown=close)


def close(comm: Communicator) -> None:
    """Free every group's persistent requests; MPI itself finalizes at exit."""
    for group in (comm.world, comm.intra, comm.inter, comm.tp):
        group.free()
