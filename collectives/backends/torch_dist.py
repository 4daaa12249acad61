"""The torch backend: torch.distributed (gloo on CPU, NCCL on GPU), under torchrun or mpiexec.

Under mpiexec the rendezvous is automatic: rank 0 opens a TCPStore on a port the OS picks and MPI
tells the others where it is.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import torch
import torch.distributed as dist

from moebench.collectives.comm import (
    IDLE_POLL_S,
    Communicator,
    Group,
    SpecCache,
    Traffic,
    launched_by_mpi,
    launched_by_torchrun,
    mpi_module_if_initialized,
    release_mpi_segments,
    row_bytes,
    spin,
)
from moebench.collectives.topology import from_hostnames

# torch >= 2.13 names the equal-size all-gather all_gather_single (all_gather_into_tensor warns on every call)
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _torch_view(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.uint8) if x.dtype == torch.bool else x


class _Spec:
    """A cached all-to-all-v layout for one split pattern: split lists, rows received, the traffic meter."""

    __slots__ = ("in_splits", "meter", "out_splits", "recv_rows")

    def __init__(self, group, send_splits, recv_splits, row_bytes_: int):
        self.in_splits, self.out_splits = list(send_splits), list(recv_splits)
        self.recv_rows = sum(recv_splits)
        self.meter = group.traffic.meter(*group.call_traffic(np.asarray(send_splits) * row_bytes_))


class TorchGroup(Group):
    def __init__(self, pg, ranks, my_global_rank, topology, traffic, device):
        super().__init__(ranks, ranks.index(my_global_rank), topology, traffic)
        self.pg = pg
        self.device = device
        self._specs = SpecCache(traffic)  # (send_splits, recv_splits, row bytes) -> _Spec
        self._counts = {}  # m -> (send [size, m], recv [size, m] on the device, traffic, crosses)

    def exchange_counts(self, counts):
        """counts: [size] (a tuple of split counts, returned as a tuple) or [size, m] integers -> the same shape.
        On NCCL the counts travel on the GPU and come back to the host: the sync that any all-to-all-v needs
        before it can size its receive buffer. Buffers and traffic are built once per shape."""
        as_tuple = type(counts) is tuple
        shape = (self.size,) if as_tuple else np.shape(counts)
        entry = self._counts.get(shape)
        if entry is None:
            buffers = [torch.zeros(shape, dtype=torch.int64, device=self.device) for _ in range(2)]
            m = 1 if len(shape) == 1 else shape[1]
            entry = self._counts[shape] = (*buffers, self.traffic.meter(*self.call_traffic(np.full(self.size, m * 8))))
        send, recv, meter = entry
        send.copy_(torch.as_tensor(counts))
        dist.all_to_all_single(recv, send, group=self.pg)
        meter.calls += 1
        if meter.spin_s:
            spin(meter.spin_s)
        return tuple(recv.tolist()) if as_tuple else recv.cpu().numpy().copy()

    def _spec(self, send_splits, recv_splits, row_bytes_: int) -> _Spec:
        if type(send_splits) is not tuple or type(recv_splits) is not tuple:
            send_splits, recv_splits = tuple(map(int, send_splits)), tuple(map(int, recv_splits))
        key = (send_splits, recv_splits, row_bytes_)
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = _Spec(self, send_splits, recv_splits, row_bytes_)
        return spec

    def alltoallv(self, send, send_splits, recv_splits):
        spec = self._spec(send_splits, recv_splits, row_bytes(send))
        recv = send.new_empty((spec.recv_rows, *send.shape[1:]))
        dist.all_to_all_single(_torch_view(recv), _torch_view(send), output_split_sizes=spec.out_splits,
                               input_split_sizes=spec.in_splits, group=self.pg)  # fmt: skip
        spec.meter.calls += 1
        if spec.meter.spin_s:
            spin(spec.meter.spin_s)
        return recv

    def ialltoallv(self, send, send_splits, recv_splits):
        """Non-blocking all-to-all-v (async_op=True): (recv, wait); recv holds the rows once wait() returns."""
        spec = self._spec(send_splits, recv_splits, row_bytes(send))
        recv = send.new_empty((spec.recv_rows, *send.shape[1:]))
        send = send.contiguous()
        work = dist.all_to_all_single(_torch_view(recv), _torch_view(send), output_split_sizes=spec.out_splits,
                                      input_split_sizes=spec.in_splits, group=self.pg, async_op=True)  # fmt: skip
        meter = spec.meter

        def wait(work=work, send=send):
            work.wait()
            meter.count()

        return recv, wait

    def persistent_alltoall(self, send: np.ndarray, recv: np.ndarray):
        """A fixed-size all-to-all on two host buffers ([size, block] uint8): (run, release) (torch has no
        persistent collective: each run is an all_to_all_single on the same tensors, my own block copied too,
        which the caller need not read: it has it in send; release has nothing to do)."""
        send_t, recv_t = torch.from_numpy(send).view(-1), torch.from_numpy(recv).view(-1)
        meter = self.traffic.meter(*self.call_traffic(np.full(self.size, send.shape[1])))
        pg = self.pg

        def run():
            dist.all_to_all_single(recv_t, send_t, group=pg)
            meter.count()

        return run, lambda: None

    def prepared_alltoallv(self, send, send_splits, recv_splits):
        """The library call alone, every argument built beforehand: a () -> None closure (the `floor` row)."""
        spec = self._spec(send_splits, recv_splits, row_bytes(send))
        recv = _torch_view(send.new_empty((spec.recv_rows, *send.shape[1:])))
        send, pg, out_splits, in_splits = _torch_view(send), self.pg, spec.out_splits, spec.in_splits
        return lambda: dist.all_to_all_single(recv, send, output_split_sizes=out_splits, input_split_sizes=in_splits,
                                              group=pg)  # fmt: skip

    def _sendrecv_peer(self, send, dest, recv, source):
        ops = []
        if send.numel():
            ops.append(dist.P2POp(dist.isend, _torch_view(send), self.ranks[dest], self.pg))
        if recv.numel():
            ops.append(dist.P2POp(dist.irecv, _torch_view(recv), self.ranks[source], self.pg))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()

    def allgatherv(self, x, counts):
        # all_gather needs equal sizes on gloo and NCCL: pad to the largest count, then trim.
        most = int(max(counts))
        padded = x.new_zeros((most, *x.shape[1:]))
        padded[: x.shape[0]] = x
        gathered = x.new_empty((self.size * most, *x.shape[1:]))
        _all_gather_single(_torch_view(gathered), _torch_view(padded), group=self.pg)
        # real rows; gloo also moves the padding
        self.traffic.add(*self.call_traffic(np.full(self.size, x.numel() * x.element_size())))
        return torch.cat([gathered[i * most : i * most + int(c)] for i, c in enumerate(counts)])

    def barrier(self):
        dist.barrier(group=self.pg)

    def idle_barrier(self):
        work = dist.barrier(group=self.pg, async_op=True)
        while not work.is_completed():
            time.sleep(IDLE_POLL_S)

    def allreduce_max(self, values: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(values, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.pg)
        return t.cpu().numpy()

    def allgather_object(self, obj) -> list:
        out = [None] * self.size
        dist.all_gather_object(out, obj, group=self.pg)
        return out


def _store_from_mpi(rank: int, P: int):
    """Rank 0 opens a TCPStore on a port the OS picks (no race for a free port); MPI tells the others."""
    from mpi4py import MPI

    host = socket.gethostname()
    store = dist.TCPStore(host, 0, P, is_master=True, wait_for_workers=False) if rank == 0 else None
    host, port = MPI.COMM_WORLD.bcast((host, store.port) if rank == 0 else None, root=0)
    MPI.COMM_WORLD.Barrier()  # every rank has left MPI_Init: MPICH's shared-memory names can go
    release_mpi_segments()
    return store if rank == 0 else dist.TCPStore(host, port, P, is_master=False)


def bootstrap(ranks_per_node: int | None, tp: int, device: torch.device) -> Communicator:
    """Join the job: launched by mpiexec (store over MPI), torchrun (env://) or alone (one rank)."""
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
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        torch.cuda.set_device(local % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group(backend, init_method=init_method, store=store, rank=rank, world_size=P)
    hostnames = [None] * P
    dist.all_gather_object(hostnames, socket.gethostname())
    topology = from_hostnames(hostnames, ranks_per_node, tp)
    traffic = Traffic()

    def make_group(groups, mine):
        pgs = [dist.new_group(ranks) for ranks in groups]
        return TorchGroup(pgs[mine], groups[mine], rank, topology, traffic, device)

    world = TorchGroup(dist.group.WORLD, list(range(P)), rank, topology, traffic, device)
    info = {"launcher": launcher, "process_group": backend, "store": store}
    return Communicator("torch", world, make_group, topology, device, info, teardown=close)


def close(comm: Communicator) -> None:
    """Leave the job cleanly. Under mpiexec the TCPStore lives on rank 0: every rank drops its process
    group first, clients drop the store next, rank 0's server goes last."""
    mpi = mpi_module_if_initialized()
    store = comm.info.pop("store", None)
    if mpi is not None:
        mpi.COMM_WORLD.Barrier()
    if dist.is_initialized():
        dist.destroy_process_group()
    if mpi is not None:
        mpi.COMM_WORLD.Barrier()
        if comm.rank != 0:
            store = None
        mpi.COMM_WORLD.Barrier()
    del store
