# T = tokens per rank, C = chunks, Tc = tokens of chunk c, P = ranks, H = hidden, Rc = rows chunk c sends,
# Mc = rows chunk c receives
"""The chunked pipeline: dispatch and combine of C chunks in flight while other chunks' experts run.

The batch is cut into C chunks of consecutive tokens (fewer when T < C). Each chunk is gated, encoded and
permuted as the sequential layer does (its pair's codec and unit); one count exchange carries every chunk's
split counts ([P, C] integers); then, with the backend's non-blocking all-to-all-v (MPI Ialltoallv, torch
async_op=True):

    start dispatch 0; shared experts of the first half of the tokens (while dispatch 0 flies); wait dispatch 0
    for c in 0..C-1: start dispatch c+1; experts of chunk c; start combine c; (wait dispatch c+1 next round)
    shared experts of the other half (while the last combine flies); wait every combine; unpermute every chunk

The shared experts fill the pipeline's two ends, where no chunk's experts can hide the communication: the
first dispatch and the last combine (as DeepSeek's decode runs the shared expert beside the combine). Split by
tokens, half each (ceil(T/2) first): the dispatch and the combine of a chunk move the same rows.

Phases (forward.PHASES): gate, quantize and permute of every chunk; dispatch = the count exchange and the start
of chunk 0; shared = the first half's shared experts; dequantize = waiting for chunk 0 and decoding it;
experts = the pipelined body (every chunk's experts, the later dispatches' waits and decodes, the combines'
starts, and the second half's shared experts after the last combine starts); combine = waiting for the
combines still in flight; unpermute. The transport is the plain pair over the library's own
all-to-all (native), with the pair's rows: plain, dedup, fp8 and fp8-dedup pipeline, the others do not.
Drops are refused (each chunk would get its own capacity). Every rank must cut the same number of chunks (the
count exchange and the all-to-alls are collective): equal batches, or batches of at least C tokens everywhere.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from moebench.bench.layer import forward as layer
from moebench.bench.layer.units import UNITS
from moebench.collectives import plain
from moebench.collectives import schedule as sched
from moebench.collectives.coordinated import split_parts
from moebench.collectives.native import ALGORITHM as NATIVE
from moebench.kernels import KernelStats, routing_from_topk


def runs(pair, inner: str, capacity_factor) -> bool:
    """Whether the pipeline runs this DispatchCombine over `inner` at this capacity factor: the plain transport
    (plain, dedup, fp8, fp8-dedup) over the library's non-blocking all-to-all (native), dropless (each chunk
    would get its own capacity)."""
    return pair.dispatch is plain.dispatch and inner == "native" and capacity_factor is None


def chunk_bounds(T: int, C: int) -> list[tuple[int, int]]:
    """[(start, end)] of min(C, T) chunks of consecutive tokens, sizes differing by at most one (T = 0: one)."""
    n = max(min(C, T), 1)
    edges = [T * i // n for i in range(n + 1)]
    return list(itertools.pairwise(edges))


def _counter(comm, info):
    """counted(fn, into) -> fn(), appending the traffic fn adds (intra + inter bytes) to `into` when the caller
    asked for the forward's info; in a timed call plainly fn() (reading the traffic sums every meter)."""
    if info is None:
        return lambda fn, into: fn()

    def counted(fn, into: list):
        before = comm.traffic.as_array()
        out = fn()
        into.append(int((comm.traffic.as_array() - before)[:2].sum()))
        return out

    return counted


def forward_with(C: int):
    """The pipeline's forward for C chunks (forward.run_layer's signature)."""

    def run(comm, x_TH, weights, cfg, mark, forced=None, info=None, first_id=None):
        return forward(comm, x_TH, weights, cfg, mark, forced, info, first_id, C)

    return run


def forward(comm, x_TH, weights, cfg, mark, forced=None, info=None, first_id=None, C: int = 2):
    """y_TH = MoE(x_TH) across all ranks, C chunks pipelined; `mark()` after each phase of forward.PHASES."""
    P, pair, T, dtype = comm.world_size, cfg.pair, x_TH.shape[0], x_TH.dtype
    codec, unit, world, k = pair.codec, UNITS[pair.unit], comm.world, cfg.preset.k
    first_id = layer.first_token(comm, T) if first_id is None else first_id
    bounds = chunk_bounds(T, C)
    part = layer.rank_part(comm)
    routings = [layer.gate(x_TH[a:b], weights, cfg, None if forced is None else tuple(f[a:b] for f in forced),
                           first_id + a, part) for a, b in bounds]  # fmt: skip
    mark()
    payload_TW = codec.encode(x_TH)
    mark()
    permuted = [unit.permute(payload_TW[a:b], routing, P, cfg.preset.E // P, cfg.placement, comm.rank)
                for (a, b), routing in zip(bounds, routings)]  # fmt: skip
    mark()
    sent, back, counted = [], [], _counter(comm, info)  # traffic of each dispatch call / combine call
    send_PC = np.array([p.send_splits for p in permuted], dtype=np.int64).T  # [P, C]: rows to rank d in chunk c
    recv_PC = counted(lambda: world.exchange_counts(send_PC), sent)  # [P, C]: rows from rank s in chunk c
    splits = [(tuple(map(int, send_PC[:, c])), tuple(map(int, recv_PC[:, c]))) for c in range(len(bounds))]

    def start_dispatch(c):  # counted too: a backend without non-blocking calls moves (and meters) at the start
        return counted(lambda: world.ialltoallv(permuted[c].send_AW, *splits[c]), sent)

    in_flight = start_dispatch(0)
    mark()
    lead = (T + 1) // 2  # tokens whose shared experts run while dispatch 0 flies; the rest beside the last combine
    shared_lead = layer.shared_forward(x_TH[:lead], weights)
    mark()

    def arrive(flight):
        recv, wait = flight
        counted(wait, sent)
        payload_MW, meta = unit.unpack(recv, k)
        return codec.decode(payload_MW, dtype, cfg.preset.H), meta

    ready = arrive(in_flight)
    mark()
    combines, rows, active, stats = [], 0, 0, []
    for c in range(len(bounds)):
        nxt = start_dispatch(c + 1) if c + 1 < len(bounds) else None
        x_MH, meta = ready
        y_MH, chunk_stats, n_active = unit.run_experts(x_MH, meta, weights, cfg)
        stats.append(chunk_stats)
        rows, active = rows + x_MH.shape[0], max(active, n_active)
        back_rows = y_MH.to(codec.combine_dtype(dtype)).contiguous()
        combines.append(counted(lambda rows=back_rows, c=c: world.ialltoallv(rows, *reversed(splits[c])), back))
        if nxt is not None:
            ready = arrive(nxt)
    shared_tail = layer.shared_forward(x_TH[lead:], weights) if lead < T else None
    mark()
    for _, wait in combines:
        counted(wait, back)
    mark()
    parts = [unit.unpermute(out, p, b - a, dtype) for (out, _), p, (a, b) in zip(combines, permuted, bounds)]
    y_TH = parts[0] if len(parts) == 1 else torch.cat(parts)
    layer.add_shared(y_TH[:lead], shared_lead)
    layer.add_shared(y_TH[lead:], shared_tail)
    mark()
    if info is not None:
        info.dispatch_wire_bytes, info.combine_wire_bytes = sum(sent), sum(back)
        info.recv_rows, info.stats, info.routing, info.permuted = rows, _summed(stats), _whole(routings), permuted[0]
        info.active_experts = active  # the most of one chunk: a lower bound, chunks may use different experts
        info.chunk_splits = [p.send_splits for p in permuted]
    return y_TH


def chunk_rows(send_splits, C: int) -> tuple[np.ndarray, list[torch.Tensor]]:
    """A rank's rows (send_splits[d] to rank d, in destination order) cut into C chunks for a communication-only
    pipeline: parts [P, C] (each destination's rows cut into C parts, sizes differing by at most one) and, per
    chunk, the indices of its rows (destination 0's part first)."""
    parts = split_parts(send_splits, C)
    starts = np.concatenate([[0], np.cumsum(parts.reshape(-1))]).reshape(-1)
    index = [torch.cat([torch.arange(starts[d * C + c], starts[d * C + c + 1]) for d in range(parts.shape[0])])
             for c in range(C)]  # fmt: skip
    return parts, index


def roundtrip(comm, parts_PC: np.ndarray, make_send, process):
    """The pipeline's communication alone, as a collectives round trip: fn() -> the combined rows of every
    chunk, chunk 0 first. One count exchange of C counts per peer; dispatch of chunk c + 1 starts before
    chunk c is processed and its combine started; the combines are waited for last (forward's order with the
    experts replaced by `process`). parts_PC [P, C]: rows to rank d in chunk c; make_send(c) -> chunk c's rows
    [Rc, ...] (its encoding timed with it); process(recv [Mc, ...]) -> the rows sent back [Mc, ...]."""
    world, C = comm.world, parts_PC.shape[1]
    send_PC = np.ascontiguousarray(parts_PC, dtype=np.int64)
    send_splits = [tuple(map(int, send_PC[:, c])) for c in range(C)]

    def fn():
        recv_PC = world.exchange_counts(send_PC)
        splits = [(send_splits[c], tuple(map(int, recv_PC[:, c]))) for c in range(C)]
        flight, combines = world.ialltoallv(make_send(0), *splits[0]), []
        for c in range(C):
            nxt = world.ialltoallv(make_send(c + 1), *splits[c + 1]) if c + 1 < C else None
            recv, wait = flight
            wait()
            combines.append(world.ialltoallv(process(recv).contiguous(), *reversed(splits[c])))
            flight = nxt
        outs = []
        for recv, wait in combines:
            wait()
            outs.append(recv)
        return torch.cat(outs)

    return fn


def chunk_schedules(splits_PP: np.ndarray, C: int) -> list[np.ndarray]:
    """[C] of [P, P]: every rank's rows to every rank cut as chunk_rows cuts them (what schedule takes)."""
    splits = np.asarray(splits_PP, dtype=np.int64)
    return [splits // C + (c < splits % C) for c in range(C)]


def predicted_layer_us(phase_us: list[float], compute_us: list[float], lead_us: float = 0.0,
                       tail_us: float = 0.0) -> float:  # fmt: skip
    """The pipelined layer's time from its schedule's phase times ([counts, C dispatches, C combines], as
    schedule lists them) and each chunk's expert time: communication runs one call at a time in the order the
    forward issues them, compute one chunk at a time once its rows have arrived (dispatch c + 1 is issued
    before chunk c's experts, combine c after them); lead_us of compute (shared experts) runs while chunk 0's
    dispatch flies, tail_us after the last combine is issued; the layer ends when both are done. One chunk and
    no lead or tail: counts + dispatch + experts + combine, the sequential layer."""
    C = len(compute_us)
    counts, out, back = phase_us[0], phase_us[1 : 1 + C], phase_us[1 + C : 1 + 2 * C]
    link = arrived = counts + out[0]  # the count exchange blocks; chunk 0's dispatch follows
    cpu = max(counts + lead_us, arrived)
    for c in range(C):
        if c + 1 < C:
            link = arrived = max(cpu, link) + out[c + 1]
        cpu += compute_us[c]
        link = max(cpu, link) + back[c]
        if c + 1 < C:
            cpu = max(cpu, arrived)
    return max(cpu + tail_us, link)


def _summed(stats: list) -> KernelStats:
    """One KernelStats for every chunk's kernel call: rows added up, the largest peak."""
    first = stats[0]
    total = {f: sum(int(getattr(s, f)) for s in stats) for f in ("num_useful_rows", "num_executed_rows",
                                                                  "num_dropped", "num_padded_rows")}  # fmt: skip
    return KernelStats(first.hidden, first.ffn, **total, peak_extra_bytes=max(s.peak_extra_bytes for s in stats))


def _whole(routings):
    """The routing of the whole batch, for the row's load figures: the first chunk's when there is one chunk,
    else a Routing rebuilt from every chunk's ids and weights (dropless)."""
    if len(routings) == 1:
        return routings[0]
    ids = torch.cat([r.topk_ids_Tk for r in routings])
    weights = torch.cat([r.topk_weights_Tk for r in routings])
    return routing_from_topk(ids, weights, routings[0].num_experts, None, validate=False)


def schedule(pair, inner, chunk_splits, out_bytes: int, back_bytes: int, topo, cap=None) -> list:
    """One count exchange of C counts per peer, then each chunk's rows out and back through the library's
    all-to-all-v (chunk_splits[c][s, d]: rows s sends d in chunk c); `inner` and `cap` play no part."""
    P, C = topo.world_size, len(chunk_splits)
    counts = sched.dense_exchange("chunk counts", np.full((P, P), C * sched.COUNT_BYTES, dtype=np.float64))
    out = [ph for s in chunk_splits for ph in NATIVE.schedule(np.asarray(s), out_bytes, topo, plan=False)]
    home = [ph for s in chunk_splits for ph in NATIVE.schedule(np.asarray(s), back_bytes, topo, backward=True)]
    return [counts, *out, *home]
