"""Projection: every registered algorithm and pair on clusters nobody here has, from its own schedule.

P = GPUs (ranks), G = GPUs per node, N = nodes, L = TP degree, S = bytes each rank sends (own chunk included),
H, E, k = the model's hidden size, experts and experts per token.
Every figure is predicted by the cost model (bench/topo/costmodel.py) on a uniform all-to-all, never measured.
A pair's round trip moves the model's rows: S / (2H) bf16 rows of (token, expert) assignments per rank, each
in the pair's own wire format (its codec's payload and its unit's header: fp8 sends H + 4 H/128 bytes, combine
bf16), and a token-unit pair (dedup) sends one row per token and destination rank: the assignment rows x its
dedup factor (the mean number of distinct destination ranks of a token's k experts / k, drawn from a skew).
"""

from __future__ import annotations

import torch

from moebench.bench.layer.presets import Preset
from moebench.bench.layer.skews import sample_topk
from moebench.bench.layer.units import UNITS
from moebench.bench.topo import costmodel
from moebench.bench.topo.costmodel import Profile
from moebench.bench.units import busbw_gbs
from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE
from moebench.collectives.topology import Topology

WIRE_DTYPE = torch.bfloat16  # the activations a GPU cluster dispatches
DEDUP_TOKENS = 4096  # tokens drawn to estimate a dedup factor

REFERENCE = "native"  # the library's own (flat) all-to-all: what every crossover is measured against


def size_label(n: int) -> str:
    """1048576 -> '1M'."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def exchange_time(profile: Profile, algo: str, N: int, S: int, tp: int = 1) -> float:
    """Predicted µs of one uniform all-to-all (plan + forward) of S bytes per rank on N nodes."""
    G = profile.ranks_per_node
    topo = Topology(N * G, G, tp)
    schedule = costmodel.exchange_schedule(algo, costmodel.uniform_splits(N * G, S), 1, topo)
    return costmodel.predict(schedule, topo, profile)


def dedup_factor(preset: Preset, P: int, skew="uniform", seed: int = 0) -> float | None:
    """Mean distinct destination ranks of a token's k experts / k, experts laid out contiguously over P ranks,
    routing drawn from `skew` (DEDUP_TOKENS tokens); None where P does not divide E (a rank holds no whole
    expert group)."""
    if P > preset.E or preset.E % P:
        return None
    ids_Tk = sample_topk(skew, DEDUP_TOKENS, preset.E, preset.k, seed=seed)[0]
    dest_Tk = (ids_Tk // (preset.E // P)).sort(dim=1).values
    distinct_T = 1 + (dest_Tk[:, 1:] != dest_Tk[:, :-1]).sum(dim=1)
    return float(distinct_T.double().mean()) / preset.k


def roundtrip_time(profile: Profile, pair: str, inner: str, N: int, S: int, tp: int, preset: Preset,
                   factor: float | None = 1.0) -> float | None:  # fmt: skip
    """Predicted µs of dispatch + combine of S bytes of (token, expert) rows per rank over `inner` on N nodes with
    TP degree tp, each row in the pair's wire format; a token-unit pair moves `factor` x the rows (None: no
    estimate, and no time)."""
    G, pair_def = profile.ranks_per_node, DISPATCH_COMBINE[pair]
    unit = UNITS[pair_def.unit]
    if unit.name == "token" and factor is None:
        return None
    topo = Topology(N * G, G, tp)
    out_bytes, back_bytes = pair_def.wire_row_bytes(preset.H, WIRE_DTYPE, unit.header_bytes(preset.k))
    rows = S // (preset.H * WIRE_DTYPE.itemsize)
    rows = round(rows * factor) if unit.name == "token" else rows
    splits = costmodel.uniform_splits(N * G, rows)
    schedule = pair_def.schedule(ALGORITHMS[inner], splits, out_bytes, topo, back_bytes)
    return costmodel.predict(schedule, topo, profile)


def projection_rows(profile: Profile, nodes: list[int], sizes: list[int]) -> list[dict]:
    """One row per (N, S): time and busbw of every algorithm, and which is fastest."""
    G = profile.ranks_per_node
    rows = []
    for N in nodes:
        for S in sizes:
            row = {"kind": "exchange", "profile": profile.name, "nodes": N, "gpus": N * G, "size": S}
            for algo in ALGORITHMS:
                row[f"{algo}_us"] = exchange_time(profile, algo, N, S)
                row[f"{algo}_busbw_gbs"] = busbw_gbs(S, row[f"{algo}_us"], N * G)
            row["best"] = min(ALGORITHMS, key=lambda a: row[f"{a}_us"])
            rows.append(row)
    return rows


def pair_rows(profile: Profile, nodes: list[int], sizes: list[int], tps: list[int], preset: Preset) -> list[dict]:
    """One row per (N, S): the plain round trip over the fastest exchange, and plain / <pair> per TP degree
    for every other pair (`<pair>_tp<L>_saving`; None where a TP group would not fit in a node, or a dedup
    factor has no estimate), the model's rows under uniform routing."""
    G = profile.ranks_per_node
    rows = []
    for N in nodes:
        P = N * G
        factor = dedup_factor(preset, P)
        for S in sizes:
            plain = {inner: roundtrip_time(profile, "plain", inner, N, S, 1, preset) for inner in ALGORITHMS}
            inner = min(plain, key=plain.get)
            row = {"kind": "pairs", "profile": profile.name, "nodes": N, "gpus": P, "size": S, "inner": inner,
                   "model": preset.name, "dedup_factor": factor}  # fmt: skip
            row["plain_rt_us"] = plain[inner]
            for pair in (p for p in DISPATCH_COMBINE if p != "plain"):
                for L in tps:
                    fits = L <= G and P % L == 0
                    t = roundtrip_time(profile, pair, inner, N, S, L, preset, factor) if fits else None
                    row[f"{pair}_tp{L}_us"] = t
                    row[f"{pair}_tp{L}_saving"] = plain[inner] / t if t else None
            rows.append(row)
    return rows


def dedup_rows(profile: Profile, nodes: list[int], S: int, skews: list, preset: Preset) -> list[dict]:
    """Per routing skew and N: the dedup factor and the round-trip saving of each token-unit pair over plain
    (TP 1, the fastest inner exchange for plain) at S bytes of assignment rows per rank."""
    G, rows = profile.ranks_per_node, []
    token_pairs = [p for p, d in DISPATCH_COMBINE.items() if d.unit == "token"]
    for skew in skews:
        for N in nodes:
            factor = dedup_factor(preset, N * G, skew)
            plain = {inner: roundtrip_time(profile, "plain", inner, N, S, 1, preset) for inner in ALGORITHMS}
            inner = min(plain, key=plain.get)
            row = {"kind": "dedup", "profile": profile.name, "skew": str(skew), "nodes": N, "gpus": N * G,
                   "size": S, "inner": inner, "model": preset.name, "k": preset.k, "dedup_factor": factor}  # fmt: skip
            for pair in token_pairs:
                t = roundtrip_time(profile, pair, inner, N, S, 1, preset, factor)
                row[f"{pair}_saving"] = plain[inner] / t if t else None
            rows.append(row)
    return rows


def overlap_rows(profile: Profile, nodes: list[int], sizes: list[int], preset: Preset, overlaps: list,
                 compute_ratio: float) -> list[dict]:  # fmt: skip
    """One row per (N, S): the plain round trip over native (the transport every overlap mode pipelines) of the
    model's S / (2H) bf16 rows per rank, TP 1, and per overlap mode its own schedule's communication (C
    dispatches and combines after one count exchange of C counts) and the layer it predicts
    (pipeline.predicted_layer_us) when the experts take compute_ratio x the sequential round trip, split evenly
    over the chunks; efficiency = (t_comm + t_comp - t_layer) / min(t_comm, t_comp), the moe benchmark's."""
    from moebench.bench.layer.overlap import pipeline  # the layer package imports the topo package back

    G, pair = profile.ranks_per_node, DISPATCH_COMBINE["plain"]
    out_bytes, back_bytes = pair.wire_row_bytes(preset.H, WIRE_DTYPE)
    rows = []
    for N in nodes:
        topo = Topology(N * G, G, 1)
        for S in sizes:
            splits = costmodel.uniform_splits(N * G, S // (preset.H * WIRE_DTYPE.itemsize))
            comm = costmodel.predict(pair.schedule(ALGORITHMS["native"], splits, out_bytes, topo, back_bytes), topo,
                                     profile)  # fmt: skip
            compute = compute_ratio * comm
            row = {"kind": "overlap", "profile": profile.name, "nodes": N, "gpus": N * G, "size": S,
                   "model": preset.name, "comm_us": comm, "compute_us": compute,
                   "sequential_us": comm + compute}  # fmt: skip
            for overlap in overlaps:
                C = overlap.chunks
                schedule = overlap.schedule(pair, "native", pipeline.chunk_schedules(splits, C), out_bytes, back_bytes,
                                            topo)  # fmt: skip
                phases = costmodel.phase_times(schedule, topo, profile)
                layer = pipeline.predicted_layer_us(phases, [compute / C] * C)
                row[f"{overlap.name}_comm_us"] = sum(phases)
                row[f"{overlap.name}_layer_us"] = layer
                hidden = min(comm, compute)
                row[f"{overlap.name}_efficiency"] = (comm + compute - layer) / hidden if hidden > 0 else None
            rows.append(row)
    return rows


def crossovers(rows: list[dict], algo: str, rival: str = REFERENCE) -> list[dict]:
    """Per size: the smallest node count from which `algo` beats `rival` at every larger count listed."""
    out = []
    for S in sorted({r["size"] for r in rows}):
        pts = sorted((r for r in rows if r["size"] == S), key=lambda r: r["nodes"])
        wins = [r[f"{algo}_us"] < r[f"{rival}_us"] for r in pts]
        start = next((pts[i] for i in range(len(pts)) if all(wins[i:])), None)
        out.append(
            {
                "size": S,
                "algo": algo,
                "rival": rival,
                "from_nodes": start["nodes"] if start else None,
                "from_gpus": start["gpus"] if start else None,
                "wins_at": [r["nodes"] for r, w in zip(pts, wins) if w],
            }
        )
    return out


def all_crossovers(rows: list[dict]) -> list[dict]:
    """Every registered algorithm against the reference (the library's own all-to-all)."""
    return [c for algo in ALGORITHMS if algo != REFERENCE for c in crossovers(rows, algo)]


def crossover_lines(profile: Profile, cross: list[dict], nodes: list[int], builtin: bool) -> list[str]:
    unit = "GPUs" if builtin else "ranks"
    lines = []
    for c in cross:
        head = f"{profile.name} S={size_label(c['size'])}: {c['algo']}"
        rival = f"{c['rival']} (the library's all-to-all)" if c["rival"] == REFERENCE else c["rival"]
        if c["from_nodes"] is None:
            tail = f" (wins only at N = {c['wins_at']})" if c["wins_at"] else ""
            lines.append(f"{head} never overtakes {rival} up to {max(nodes)} nodes{tail}")
        elif c["from_nodes"] == min(nodes):
            lines.append(f"{head} beats {rival} at every size listed (from {c['from_nodes']} node(s))")
        else:
            lines.append(
                f"{head}: CROSSOVER - overtakes {rival} from {c['from_nodes']} nodes ({c['from_gpus']} {unit}) on"
            )
    return lines
