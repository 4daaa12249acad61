# P = ranks, n = timed iterations of a case, C = columns of one sample (phases then the total)
"""Timing: warmup, a barrier before every timed iteration, per-iteration samples, interleaved rounds.

Conventions (DESIGN.md §3): warmup iterations are excluded; each timed iteration starts after a barrier
(on CUDA, after a device synchronize and then the barrier); the headline is the median, with p20/p80/p99
beside it. Multi-rank: each rank keeps its own samples and they are gathered once after the loop, so no
collective runs inside a timed region; an iteration's time is the slowest rank's (the critical path), and
a phased case takes every phase of an iteration from that same rank, so phases add up to the total.
On CUDA, time with events; on CPU, perf_counter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

BAND_FRACTION = 0.2  # phases are means over at most this fraction of iterations, those nearest the median total
BAND_REACH = 0.01  # ... and within 1% of it


Z_95 = 1.959964  # the normal quantile of a two-sided 95% interval


def median_interval(samples_us) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median: order statistics j and k of the n sorted
    samples, j = floor((n - z sqrt(n)) / 2) and k = ceil(1 + (n + z sqrt(n)) / 2) (1-based; the number of samples
    below the median is binomial(n, 1/2)), clamped to the smallest and largest (a few samples: their whole range).
    Assumes nothing of the spread's shape, so a long tail widens p80 without widening this."""
    s = np.sort(np.asarray(samples_us, dtype=np.float64))
    n = s.size
    half = Z_95 * math.sqrt(n)
    j = max(math.floor((n - half) / 2), 1)
    k = min(math.ceil(1 + (n + half) / 2), n)
    return float(s[j - 1]), float(s[k - 1])


def stats(samples_us: np.ndarray) -> dict[str, float]:
    """Median, p20, p80, p99, min and mean of per-iteration samples (µs), and their count."""
    s = np.asarray(samples_us, dtype=np.float64)
    return {
        "time_us": float(np.median(s)),
        "p20_us": float(np.percentile(s, 20)),
        "p80_us": float(np.percentile(s, 80)),
        "p99_us": float(np.percentile(s, 99)),
        "min_us": float(s.min()),
        "mean_us": float(s.mean()),
        "samples": int(s.size),
    }


def median_band(total_n: np.ndarray) -> np.ndarray:
    """Indices of the iterations whose phases stand for the median one: the median iteration itself (the two
    middle ones for an even n, whose mean total is the median exactly), then the others nearest the median by
    value while they lie within BAND_REACH of it, BAND_FRACTION of the iterations at most. Their mean total is
    within BAND_REACH of the median whatever the spread's shape: a band chosen by count alone reached into
    the other mode of a two-mode spread (4 ranks time-sliced on 2 cores: centred by rank 5.3% below the
    median, nearest by value 14.5% below)."""
    n = len(total_n)
    median = np.median(total_n)
    middle = np.argsort(total_n, kind="stable")[(n - 1) // 2 : n // 2 + 1]
    nearest = np.argsort(np.abs(total_n - median), kind="stable")
    near = nearest[np.abs(total_n[nearest] - median) <= BAND_REACH * abs(median)]
    extra = [i for i in near if i not in middle][: max(math.ceil(n * BAND_FRACTION) - len(middle), 0)]
    return np.concatenate([middle, np.asarray(extra, dtype=middle.dtype)])


def critical_path(per_rank_PnC: np.ndarray, phases: tuple[str, ...]) -> dict:
    """Fields of a phased case from every rank's samples [P, n, len(phases) + 1] (total last).

    For each iteration the critical rank is the one with the largest total; the phases come from it.
    `<phase>_us` is the mean over the iterations nearest the median total (median_band), so the phases sum to it
    within BAND_REACH
    (`phase_sum_us` says by how much); `<phase>_max_us` is the median over iterations of the per-phase
    max over ranks (what the slowest rank spent in that phase, ranks taken separately); `<phase>_share`
    divides by the total."""
    n = per_rank_PnC.shape[1]
    critical_n = per_rank_PnC[per_rank_PnC[:, :, -1].argmax(0), np.arange(n)]  # [n, C]
    out = stats(critical_n[:, -1])
    band = median_band(critical_n[:, -1])
    for i, phase in enumerate(phases):
        out[f"{phase}_us"] = float(critical_n[band, i].mean())
        out[f"{phase}_max_us"] = float(np.median(per_rank_PnC[:, :, i].max(0)))
        out[f"{phase}_share"] = out[f"{phase}_us"] / out["time_us"] if out["time_us"] else 0.0
    out["phase_sum_us"] = float(sum(out[f"{phase}_us"] for phase in phases))
    return out


@dataclass
class Case:
    """One configuration to time: its result row (filled in), the timed call, its message schedule (for
    the cost model, where it has one), and this rank's samples. With `phases`, `fn(mark)` calls `mark()`
    after each phase; without, `fn()` is timed whole."""

    row: dict
    fn: Callable
    schedule: list | None = None
    phases: tuple[str, ...] | None = None
    samples: list = field(default_factory=list)  # this rank's timed iterations, each [C] µs
    sample_rounds: list = field(default_factory=list)  # the round of each timed iteration
    # () -> a tuple of arguments for fn, made before the clock starts: the harness's own choices for the call
    # (which cold weight copy it reads), which are not the timed work
    prepare: Callable | None = None
    calls: int = 1  # calls of the timed work one fn() makes (a CUDA graph of several): times are per call

    @property
    def columns(self) -> int:
        return len(self.phases) + 1 if self.phases else 1


class Clock:
    """Time one iteration: perf_counter on the host, events on CUDA (synchronized before returning)."""

    def __init__(self, device="cpu"):
        self.cuda = torch.device(device).type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, case: Case) -> list[float]:
        """µs per phase and the total [C] (case.prepare's arguments made before the first stamp)."""
        args = case.prepare() if case.prepare is not None else ()
        if self.cuda:
            events = [torch.cuda.Event(enable_timing=True)]
            events[0].record()

            def mark():
                events.append(torch.cuda.Event(enable_timing=True))
                events[-1].record()

            case.fn(mark, *args) if case.phases else (case.fn(*args), mark())
            torch.cuda.synchronize()
            stamps = [events[0].elapsed_time(e) * 1e3 for e in events]
        else:
            now = time.perf_counter
            stamps = [now()]
            if case.phases:
                append = stamps.append  # a mark: one bound call and one clock read, nothing looked up
                case.fn(lambda: append(now()), *args)
            else:
                case.fn(*args)
                stamps.append(now())
            stamps = [(t - stamps[0]) * 1e6 for t in stamps]
        marked = len(stamps) - 1
        if case.phases and marked != len(case.phases):
            raise RuntimeError(f"{case.row}: fn marked {marked} phases, expected {len(case.phases)}")
        times = [*np.diff(stamps), stamps[-1]] if case.phases else [stamps[-1]]
        return times if case.calls == 1 else [t / case.calls for t in times]


def iterations_per_case(estimates_us: np.ndarray, iters: int, budget_s: float | None, least: int = 1) -> list[int]:
    """Timed iterations of each case: `iters`, fewer where that would take longer than `budget_s`, but at least
    `least` (run_interleaved: one per round, so every row has a sample in every round and the paired round
    test; a row of one sample, ranked by its p20-p80 of one value, called a 391 ms outlier the slowest)."""
    if budget_s is None:
        return [iters] * len(estimates_us)
    return [max(least, min(iters, int(budget_s * 1e6 / max(t, 1e-3)))) for t in estimates_us]


def round_plan(counts: list[int], rounds: int) -> list[list[int]]:
    """Case indices to run in each round, round-robin: case c runs counts[c] iterations spread evenly over
    the rounds; the starting case rotates each round so no case always runs right after the same one."""
    plan = []
    num_cases = len(counts)
    for rnd in range(rounds):
        order = [(rnd + j) % num_cases for j in range(num_cases)] if num_cases else []
        plan.append([c for c in order for _ in range(counts[c] // rounds + (rnd < counts[c] % rounds))])
    return plan


def run_interleaved(comm, cases: list[Case], iters: int, warmup: int, rounds: int, device="cpu",
                    budget_s: float | None = None, clock: Clock | None = None) -> None:  # fmt: skip
    """Time every case round-robin over `rounds` rounds and add its statistics to its row.

    On a shared host, load comes and goes over seconds: spreading each case over the whole run lets a
    slow spell hit every case alike. Each case first runs `warmup` times (at least once: that run's time,
    the slowest rank's, is the estimate `budget_s` uses), then `iters` timed iterations, fewer if they
    would take longer than `budget_s` seconds but at least one per round; each later round re-warms a case
    with one untimed call.
    Rows get the statistics of the slowest rank per iteration, and `critical_path` fields for phased cases.
    """
    if iters < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"need -n >= 1, -w >= 0 and --rounds >= 1 (got -n {iters} -w {warmup} --rounds {rounds})")
    clock = clock or Clock(device)
    barrier = comm.barrier if comm is not None else (lambda: None)
    estimates = np.empty(len(cases))
    for c, case in enumerate(cases):
        for _ in range(max(warmup, 1)):
            clock.sync()
            barrier()
            estimates[c] = clock.run(case)[-1] * case.calls  # one fn() (the clock gives per-call times)
    if comm is not None:
        estimates = comm.allreduce_max(estimates)
    counts = iterations_per_case(estimates, iters, budget_s, least=min(iters, rounds))
    for rnd, order in enumerate(round_plan(counts, rounds)):
        warmed = set() if rnd else set(range(len(cases)))
        for c in order:
            case = cases[c]
            if c not in warmed:
                warmed.add(c)
                clock.sync()
                barrier()
                clock.run(case)
            clock.sync()
            barrier()
            case.samples.append(clock.run(case))
            case.sample_rounds.append(rnd)
    mine = [np.asarray(case.samples, dtype=np.float64).reshape(-1, case.columns) for case in cases]
    everyone = comm.allgather_object(mine) if comm is not None else [mine]
    for c, case in enumerate(cases):
        per_rank_PnC = np.stack([rank[c] for rank in everyone])
        if case.phases:
            case.row.update(critical_path(per_rank_PnC, case.phases))
        else:
            case.row.update(stats(per_rank_PnC[:, :, 0].max(0)))
        case.row.update(round_medians(per_rank_PnC[:, :, -1].max(0), case.sample_rounds, rounds))


def round_medians(total_n: np.ndarray, rounds_n: list[int], rounds: int) -> dict:
    """{"round_medians_us": [median of the iterations of round r, r = 0..rounds-1]} (the slowest rank's totals),
    or {} when a round has none (a budget cut the case below one iteration a round): what `ties` pairs across two
    cases, round by round, since round r of every case runs at the same time."""
    rounds_n = np.asarray(rounds_n)
    if rounds < 2 or any(not (rounds_n == r).any() for r in range(rounds)):
        return {}
    return {"round_medians_us": [float(np.median(total_n[rounds_n == r])) for r in range(rounds)]}


def measure(fn: Callable[[], object], *, iters: int, warmup: int, comm=None, device="cpu") -> dict:
    """Statistics of one call timed alone (no interleaving): run_interleaved over a single case."""
    case = Case({}, fn)
    run_interleaved(comm, [case], iters, warmup, 1, device)
    return case.row


def ties(a: dict, b: dict) -> bool:
    """Two timed rows are a tie when the difference is inside the spread: their p20-p80 intervals overlap, and the
    ratio of their medians round by round (round r of both rows ran at the same time, so drift between rounds
    hits both alike) has a 95% interval (median_interval over the rounds' ratios) that holds 1. With up to 10
    rounds that interval is the rounds' whole range: one row is faster only if it won every round, which two rows
    of equal speed do 2 / 2^R of the time: 1 in 16 at 5 rounds (the interval's real coverage 93.75%, and across
    the ~10 rows a summary's best is compared with, one-way verdicts between two runs), 1 in 128 at the default
    8 (options.ROUNDS).
    Rows without round medians (older results, budget-cut rows): the p20-p80 test alone.

    A long tail on a shared machine widens p80 without moving the medians, and 300 samples of a 1.2x faster row
    win every round; a 5% drift inside a run (two rows doing the same work) does not win every round. An interval
    over one run's pooled samples would not do: drift makes them dependent, and the interval too narrow."""
    if not (a["p20_us"] <= b["p80_us"] and b["p20_us"] <= a["p80_us"]):
        return False
    ra, rb = a.get("round_medians_us"), b.get("round_medians_us")
    if not ra or not rb or len(ra) != len(rb):
        return True
    lo, hi = median_interval([x / y for x, y in zip(ra, rb)])
    return lo <= 1.0 <= hi
