"""The machine's ceilings, measured in the same run as the rows they judge, and cold-weight rotation.

roofline_us = max(useful FLOPs / dense GEMM rate, bytes read / memory read bandwidth). The read bandwidth
is a read-only pass (a sum) over a buffer larger than both the bytes in question and 3x the last-level
cache, with the same threads as the rows: a copy moves fewer bytes per second than a read, so it is not
the ceiling. The GEMM rate is a 1024^3 matmul in the run's dtype. On CUDA the cache is the L2.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GEMM_SIZE = 1024
SYNCS_PER_REP = 2  # measure_roofline calls `sync` once per repetition of the read and of the GEMM
CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
FALLBACK_LLC_BYTES = 32 * 2**20


def _size_bytes(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def last_level_cache_bytes(device: torch.device) -> int:
    """The largest cache in front of memory: the CPU's L3 from sysfs (the largest level found), or the GPU's L2."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    sizes = [_size_bytes((d / "size").read_text()) for d in CPU_CACHES.glob("index*") if (d / "size").exists()]
    return max(sizes, default=FALLBACK_LLC_BYTES)


def _best_us(fn, device: torch.device, reps: int, sync=None) -> float:
    fn()
    best = math.inf
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) * 1e6)
    return best


@dataclass(frozen=True)
class Roofline:
    read_gbps: float  # GB/s of a read-only pass over memory (1e9 B/s)
    gemm_tflops: float  # dense GEMM rate in the run's dtype
    llc_bytes: int

    def time_us(self, flops: float, read_bytes: float) -> float:
        """The least time the work can take: the larger of its compute and its memory time (µs)."""
        return max(flops / (self.gemm_tflops * 1e12), read_bytes / (self.read_gbps * 1e9)) * 1e6

    def fields(self) -> dict:
        return {"read_gbps": self.read_gbps, "gemm_tflops": self.gemm_tflops, "llc_bytes": self.llc_bytes}


def measure_roofline(
    dtype: torch.dtype, device: torch.device, min_bytes: int = 0, reps: int = 20, sync=None
) -> Roofline:
    """Time a sum over max(min_bytes, 3 x LLC) bytes and a GEMM_SIZE^3 matmul (best of `reps`).

    sync: called before every repetition (the ranks' barrier), so that where several ranks share the memory
    and cores, as the layer's ranks do, every repetition reads while the other ranks read (not while one is
    still allocating or already multiplying). A ceiling is the best the machine gives, hence the best of
    many repetitions: on this shared VM the same 2-rank measurement gave 28.9-29.5 GB/s per rank in one
    trial and 48.0-49.7 in the next two, a minute apart (the memory's other tenants)."""
    llc = last_level_cache_bytes(device)
    nbytes = max(int(min_bytes), 3 * llc)
    buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    a = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    read_us = _best_us(buf.sum, device, reps, sync)  # SYNCS_PER_REP: this and the GEMM's, one sync per repetition
    gemm_us = _best_us(lambda: a @ a, device, reps, sync)
    return Roofline(buf.numel() * 4 / (read_us * 1e-6) / 1e9, 2 * GEMM_SIZE**3 / (gemm_us * 1e-6) / 1e12, llc)


def measure_roofline_ranks(comm, dtype: torch.dtype, reps: int = 20) -> Roofline:
    """The ceilings of a multi-rank run, the same on every rank: ranks of a host read together, as the layer's
    ranks run, but at most one per core at a time (with more ranks than cores, waves of `cores` ranks: a rank
    time-sliced with another would measure the scheduler, not the memory, and its roofline would exceed what
    the rank itself reaches); the best over ranks is the machine's. Every rank passes the same sleeping barriers
    (one per repetition: SYNCS_PER_REP), so the ranks outside a wave leave it the cores (MPI's own barrier
    busy-polls: waiting in it, they took the cores and a 4-rank run on 2 cores read half the bandwidth)."""
    hosts = comm.allgather_object(socket.gethostname())
    cores = (os.cpu_count() or 1) if comm.device.type == "cpu" else len(hosts)  # a GPU each: one wave
    local_index = hosts[: comm.rank].count(hosts[comm.rank])
    waves = -(-max(hosts.count(h) for h in hosts) // cores)
    mine = None
    for wave in range(waves):
        if local_index // cores == wave:
            mine = measure_roofline(dtype, comm.device, reps=reps, sync=comm.idle_barrier)
        else:
            for _ in range(SYNCS_PER_REP * reps):
                comm.idle_barrier()
    best = comm.allreduce_max(np.array([mine.read_gbps, mine.gemm_tflops]))
    return Roofline(float(best[0]), float(best[1]), mine.llc_bytes)


def cold_copies(active_bytes: int, llc_bytes: int, total_bytes: int, budget_bytes: int) -> int:
    """How many copies of the weights to rotate through so one pass over the copies' active parts exceeds 3x
    the last-level cache: each timed call then reads its weights from memory, as one layer of a deep model
    does. At most what `budget_bytes` holds (at least 1: warm, said in the row)."""
    if active_bytes <= 0:
        return 1
    want = math.ceil(3 * llc_bytes / active_bytes) + 1
    return max(1, min(want, budget_bytes // max(total_bytes, 1)))


class Rotation:
    """Cold weights: every timed call takes the next of n weight copies, one counter shared by every case of a
    comparison, so the copy a call reads was last touched n - 1 calls ago (and is out of the cache)."""

    def __init__(self, n: int):
        self.n, self.next = n, 1

    def __call__(self, copies: list, calls: int = 1):
        """The copy this call starts at; a call that reads `calls` successive copies (a CUDA graph of several
        calls) moves the counter past all of them, so the next call starts on one it did not read."""
        start, self.next = self.next, self.next + calls
        return copies[start % len(copies)]
