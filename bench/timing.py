"""Timing: warmup, a barrier before every timed iteration, per-iteration samples, statistics.

Conventions (DESIGN.md §3): warmup iterations are excluded; each timed iteration starts after
a barrier; the headline is the median, with p20/p80/p99 beside it; for multi-rank work each
iteration's time is the slowest rank's (max over ranks, taken once after the loop so no
collective runs inside the timed region). On CUDA, time with events; on CPU, perf_counter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch


def _cuda_samples(fn: Callable[[], object], iters: int, barrier: Callable[[], None] | None) -> np.ndarray:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        if barrier is not None:
            barrier()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return np.array([s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)])


def _host_samples(fn: Callable[[], object], iters: int, barrier: Callable[[], None] | None) -> np.ndarray:
    samples = np.empty(iters)
    for i in range(iters):
        if barrier is not None:
            barrier()
        t0 = time.perf_counter()
        fn()
        samples[i] = (time.perf_counter() - t0) * 1e6
    return samples


def measure(
    fn: Callable[[], object],
    *,
    iters: int,
    warmup: int,
    comm=None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Run `fn` `warmup` times untimed, then `iters` times timed; return per-iteration µs [iters].

    With `comm` (a collectives Communicator), a barrier precedes every iteration and the
    returned samples are the max over ranks of each iteration (the slowest rank).
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iterations must be >= 1 and warmup >= 0, got -n {iters} -w {warmup}")
    barrier = comm.barrier if comm is not None else None
    for _ in range(warmup):
        fn()
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
    samples = _cuda_samples(fn, iters, barrier) if on_cuda else _host_samples(fn, iters, barrier)
    if comm is not None:
        samples = comm.allreduce_max(samples)
    return samples


def stats(samples_us: np.ndarray) -> dict[str, float]:
    """Median, p20, p80, p99, min and mean of per-iteration samples (µs)."""
    s = np.asarray(samples_us, dtype=np.float64)
    return {
        "time_us": float(np.median(s)),
        "p20_us": float(np.percentile(s, 20)),
        "p80_us": float(np.percentile(s, 80)),
        "p99_us": float(np.percentile(s, 99)),
        "min_us": float(s.min()),
        "mean_us": float(s.mean()),
    }


def _cuda_phase_times(fn) -> list[float]:
    events = [torch.cuda.Event(enable_timing=True)]
    events[0].record()

    def mark():
        events.append(torch.cuda.Event(enable_timing=True))
        events[-1].record()

    fn(mark)
    torch.cuda.synchronize()
    return [0.0] + [events[0].elapsed_time(e) * 1e3 for e in events[1:]]


def _host_phase_times(fn) -> list[float]:
    stamps = [time.perf_counter()]
    fn(lambda: stamps.append(time.perf_counter()))
    return [(t - stamps[0]) * 1e6 for t in stamps]


def measure_phases(
    fn: Callable[[Callable[[], None]], object],
    *,
    num_phases: int,
    iters: int,
    warmup: int,
    comm=None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Time `fn(mark)`, which calls `mark()` after each of its `num_phases` phases.

    Returns µs samples [iters, num_phases + 1]: one column per phase and the total last. With
    `comm`, a barrier precedes each iteration and every entry is the max over ranks.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iterations must be >= 1 and warmup >= 0, got -n {iters} -w {warmup}")
    on_cuda = torch.device(device).type == "cuda"
    samples = np.empty((iters, num_phases + 1))
    for i in range(warmup + iters):
        if comm is not None:
            comm.barrier()
        times = _cuda_phase_times(fn) if on_cuda else _host_phase_times(fn)
        assert len(times) == num_phases + 1, f"fn marked {len(times) - 1} phases, expected {num_phases}"
        if i >= warmup:
            samples[i - warmup, :num_phases] = np.diff(times)
            samples[i - warmup, num_phases] = times[-1]
    if comm is not None:
        samples = comm.allreduce_max(samples)
    return samples


@dataclass
class Case:
    """One configuration to time: its result row (filled in), the timed call, its message schedule (for
    the cost model, where it has one), and the samples of every round."""

    row: dict
    fn: Callable[[], object]
    schedule: list | None = None
    samples: list = field(default_factory=list)


def run_interleaved(comm, cases: list[Case], iters: int, warmup: int, rounds: int, device="cpu") -> None:
    """Time every case in `rounds` rounds of ceil(iters / rounds) iterations each, round-robin.

    On a shared host, load comes and goes over seconds: spreading each case over the whole run lets a
    slow spell hit every case alike. Adds median/p20/p80/p99 of the pooled samples (slowest rank per
    iteration, with `comm`) to each row.
    """
    per_round = max(1, math.ceil(iters / rounds))
    for rnd in range(rounds):
        for case in cases:
            w = warmup if rnd == 0 else 1
            case.samples.extend(measure(case.fn, iters=per_round, warmup=w, comm=comm, device=device))
    for case in cases:
        case.row.update(stats(np.asarray(case.samples)))
