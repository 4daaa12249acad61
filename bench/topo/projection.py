"""Projection: every registered algorithm and pair on clusters nobody here has, from its own schedule.

P = GPUs (ranks), G = GPUs per node, N = nodes, L = TP degree, S = bytes each rank sends (own chunk included).
Every figure is predicted by the cost model (bench/topo/costmodel.py) on a uniform all-to-all, never measured.
"""

from __future__ import annotations

from moebench.bench.topo import costmodel
from moebench.bench.topo.costmodel import Profile
from moebench.bench.units import busbw_gbs
from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE
from moebench.collectives.topology import Topology

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


def roundtrip_time(profile: Profile, pair: str, inner: str, N: int, S: int, tp: int) -> float:
    """Predicted µs of dispatch + combine of S bytes per rank over `inner` on N nodes with TP degree tp."""
    G = profile.ranks_per_node
    topo = Topology(N * G, G, tp)
    schedule = costmodel.roundtrip_schedule(pair, inner, costmodel.uniform_splits(N * G, S), 1, topo)
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


def pair_rows(profile: Profile, nodes: list[int], sizes: list[int], tps: list[int]) -> list[dict]:
    """One row per (N, S): the plain round trip over the fastest exchange, and plain / <pair> per TP degree
    for every other pair (`<pair>_tp<L>_saving`; None where a TP group would not fit in a node)."""
    G = profile.ranks_per_node
    rows = []
    for N in nodes:
        P = N * G
        for S in sizes:
            plain = {inner: roundtrip_time(profile, "plain", inner, N, S, 1) for inner in ALGORITHMS}
            inner = min(plain, key=plain.get)
            row = {"kind": "pairs", "profile": profile.name, "nodes": N, "gpus": P, "size": S, "inner": inner}
            row["plain_rt_us"] = plain[inner]
            for pair in (p for p in DISPATCH_COMBINE if p != "plain"):
                for L in tps:
                    fits = L <= G and P % L == 0
                    t = roundtrip_time(profile, pair, inner, N, S, L) if fits else None
                    row[f"{pair}_tp{L}_us"] = t
                    row[f"{pair}_tp{L}_saving"] = plain[inner] / t if fits else None
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
