"""Calibration: a link profile per class from a sweep of point-to-point, collective and copy cases.

P = world size, G = ranks per node, N = P / G nodes, S = bytes each rank sends.

Per link class, every rank exchanges S bytes with a partner of that class, all pairs at once (intra:
local index g with g ^ 1; inter: node n with n ^ 1), as the algorithms' own steps do; the library
all-to-all inside every group of the class; a world all-to-all fanned out to every peer of the class
(the per-message gap); a ring that mixes the classes (the overlap); a layout copy; and the library's
copy of a rank's own chunk. Each class gets an alpha-beta fit on the model's effective bytes (the G
ranks of a node share its uplink), with its fit error.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from moebench.bench.timing import Case
from moebench.bench.topo import costmodel
from moebench.collectives import schedule as sched
from moebench.collectives.exchange import transpose_chunks
from moebench.collectives.topology import Topology

ELEM = 4  # float32 rows


def pair_schedule(topo: Topology, cls: str, nbytes: int) -> tuple[list[sched.Phase], np.ndarray]:
    """Every rank with a partner in class `cls` exchanges nbytes with it, all pairs at once.

    intra: local index g pairs with g ^ 1 (G even; an odd last rank idles); inter: node n pairs
    with node n ^ 1 at the same local index. Returns ([phase], partner[P], -1 where idle).
    """
    P, G = topo.world_size, topo.ranks_per_node
    partner = np.full(P, -1)
    for r in range(P):
        n, g = divmod(r, G)
        q = n * G + (g ^ 1) if cls == "intra" else (n ^ 1) * G + g
        if 0 <= q < P and topo.node_of(q) == (n if cls == "intra" else n ^ 1) and q != r:
            partner[r] = q
    active = np.flatnonzero(partner >= 0)
    phase = sched.phase(f"pairs {cls}", P, active, partner[active], np.full(len(active), nbytes), blocking=True)
    return [phase], partner


def classes_present(topo) -> list[str]:
    """Link classes this topology has: intra needs G >= 2, inter needs N >= 2."""
    return [c for c, ok in (("intra", topo.ranks_per_node > 1), ("inter", topo.num_nodes > 1)) if ok]


def pair_exchange(comm, send: torch.Tensor, recv: torch.Tensor, partner: int):
    """One sendrecv with `partner` (nothing when partner < 0: this rank idles)."""
    if partner < 0:
        return lambda: None
    return lambda: comm.world.sendrecv(send, partner, recv, partner)


def pair_cases(comm, cls: str, sizes: list[int]) -> list[Case]:
    """Every rank exchanges S bytes with its class-`cls` partner, all pairs at once: one case per size."""
    topo, me = comm.topology, comm.rank
    cases = []
    for size in sizes:
        schedule, partner = pair_schedule(topo, cls, size)
        send = torch.ones(size // ELEM, dtype=torch.float32)
        fn = pair_exchange(comm, send, torch.empty_like(send), int(partner[me]))
        xbytes = costmodel.effective_bytes(schedule, topo, cls)
        cases.append(Case({"kind": "p2p", "class": cls, "size": size, "xbytes": xbytes}, fn, schedule))
    return cases


def group_cases(comm, cls: str, sizes: list[int]) -> list[Case]:
    """The library all-to-all inside every class-`cls` group at once (intra: the G ranks of a node;
    inter: the N ranks sharing a local index), S bytes to each member: one case per size."""
    topo = comm.topology
    group = comm.intra if cls == "intra" else comm.inter
    groups = (
        [topo.node_ranks(n) for n in range(topo.num_nodes)]
        if cls == "intra"
        else [topo.cross_ranks(g) for g in range(topo.ranks_per_node)]
    )
    cases = []
    for size in sizes:
        rows = size // ELEM
        splits = [0 if i == group.rank else rows for i in range(group.size)]  # nothing to itself: links only
        send = torch.ones(sum(splits), 1, dtype=torch.float32)
        fn = lambda send=send, splits=splits: group.alltoallv(send, splits, splits)
        schedule = [sched.group_exchange(f"{cls} a2a", groups, lambda a, b, size=size: size, topo.world_size)]
        xbytes = costmodel.effective_bytes(schedule, topo, cls)
        cases.append(Case({"kind": "p2p", "class": f"{cls}-coll", "size": size, "xbytes": xbytes}, fn, schedule))
    return cases


def ring_cases(comm, sizes: list[int]) -> list[Case]:
    """Rank r sends S bytes to r + 1 and receives from r - 1, all at once: with G >= 2 and N >= 2 some
    ranks send inside their node while receiving from another (the mix flat's steps have)."""
    P, me = comm.world_size, comm.rank
    ranks = np.arange(P)
    cases = []
    for size in sizes:
        send = torch.ones(size // ELEM, dtype=torch.float32)
        recv = torch.empty_like(send)
        fn = lambda send=send, recv=recv: comm.world.sendrecv(send, (me + 1) % P, recv, (me - 1) % P)
        schedule = [sched.phase("ring", P, ranks, (ranks + 1) % P, np.full(P, size), blocking=True)]
        cases.append(Case({"kind": "p2p", "class": "ring", "size": size, "xbytes": float(size)}, fn, schedule))
    return cases


def copy_cases(comm, sizes: list[int]) -> list[Case]:
    """Every rank reorders S bytes in 2P chunks at once (hierarchical's layout transform): one case per size."""
    P = comm.world_size
    cases = []
    for size in sizes:
        n = size // ELEM
        x = torch.ones(n, 1, dtype=torch.float32)
        grid = np.array([[n // P + (i < n % P) for i in range(P)], [0] * P])  # [2, P]: a real transpose
        fn = lambda x=x, grid=grid: transpose_chunks(x, grid).contiguous()
        cases.append(Case({"kind": "p2p", "class": "copy", "size": size, "xbytes": float(size)}, fn))
    return cases


def self_cases(comm, sizes: list[int]) -> list[Case]:
    """The library all-to-all over the world with only the rank's own chunk (S bytes to itself), every rank
    at once: how fast the library copies the chunk a rank keeps (native, hierarchical's levels, all-gathers)."""
    P, me = comm.world_size, comm.rank
    cases = []
    for size in sizes:
        rows = size // ELEM
        splits = [rows if p == me else 0 for p in range(P)]
        send = torch.ones(rows, 1, dtype=torch.float32)
        fn = lambda send=send, splits=splits: comm.world.alltoallv(send, splits, splits)
        cases.append(Case({"kind": "p2p", "class": "self-coll", "size": size, "xbytes": float(size)}, fn))
    return cases


def fan_messages(topo, cls: str) -> int:
    """Messages each rank sends in a world all-to-all restricted to class `cls` (G - 1 or P - G)."""
    return topo.ranks_per_node - 1 if cls == "intra" else topo.world_size - topo.ranks_per_node


def fan_cases(comm, cls: str, sizes: list[int]) -> list[Case]:
    """The library all-to-all over the world, S bytes to every class-`cls` peer and none to the others:
    several messages per rank in one call, which fits the class's per-message gap (LogGP g)."""
    topo, P, me = comm.topology, comm.world_size, comm.rank
    node = np.arange(P) // topo.ranks_per_node
    peers = (node == node[me]) if cls == "intra" else (node != node[me])
    peers[me] = False
    mask = (node[:, None] == node[None, :]) if cls == "intra" else (node[:, None] != node[None, :])
    np.fill_diagonal(mask, False)
    cases = []
    for size in sizes:
        rows = size // ELEM
        splits = [rows if p else 0 for p in peers]
        send = torch.ones(sum(splits), 1, dtype=torch.float32)
        fn = lambda send=send, splits=splits: comm.world.alltoallv(send, splits, splits)
        schedule = [sched.dense_exchange(f"{cls} fan", mask * float(size))]
        xbytes = costmodel.effective_bytes(schedule, topo, cls)
        row = {"kind": "p2p", "class": f"{cls}-fan", "size": size, "xbytes": xbytes, "msgs": fan_messages(topo, cls)}
        cases.append(Case(row, fn, schedule))
    return cases


def sweep_cases(comm, sizes: list[int]) -> list[Case]:
    """Everything the fit needs on this topology: pairs, group and fan-out all-to-alls per class, the ring, copies."""
    topo = comm.topology
    cases = []
    for cls in classes_present(topo):
        cases += pair_cases(comm, cls, sizes) + group_cases(comm, cls, sizes)
        if fan_messages(topo, cls) >= 2:
            cases += fan_cases(comm, cls, sizes)
    if len(classes_present(topo)) == 2:
        cases += ring_cases(comm, sizes)
    return cases + copy_cases(comm, sizes) + self_cases(comm, sizes)


FIT_CLASSES = ("intra", "inter", "intra-coll", "inter-coll", "copy", "self-coll")


def fit_gap(profile: costmodel.Profile, cls: str, fan: list[Case], topo, single: list[dict]) -> costmodel.Profile:
    """The per-message gap of class `cls`: the fan-out's time beyond the gap-free model, per further message.

    Fitted on the smaller half of the sizes (latency-bound), as a median, and only where the fan-out
    is clearly slower than one message per call (`single`: the class's group all-to-all rows) - its
    p20 above their p80 at most of those sizes. Otherwise the difference is within the scheduling
    noise of an oversubscribed host and the gap stays 0. Applies to both of the class's paths.
    """
    if not fan:
        return profile
    m = fan[0].row["msgs"]
    small = [c for c in fan if c.row["size"] <= np.median([c.row["size"] for c in fan])]
    by_size = {r["size"]: r for r in single}
    apart = [c.row["p20_us"] > by_size[c.row["size"]]["p80_us"] for c in small if c.row["size"] in by_size]
    extra = [(c.row["time_us"] - costmodel.predict(c.schedule, topo, profile)) / (m - 1) for c in small]
    gap = max(float(np.median(extra)), 0.0) if apart and sum(apart) > len(apart) / 2 else 0.0
    coll = profile.link(cls, coll=True)
    profile = replace(
        profile, **{cls: replace(profile.link(cls), gap_us=gap), f"{cls}_coll": replace(coll, gap_us=gap)}
    )
    errors = []
    for c in fan:
        c.row["fit_us"] = costmodel.predict(c.schedule, topo, profile)
        c.row["fit_err"] = (c.row["fit_us"] - c.row["time_us"]) / c.row["time_us"]
        errors.append(abs(c.row["fit_err"]))
    profile.fit[f"{cls}-fan"] = {
        "median_abs_err": float(np.median(errors)),
        "max_abs_err": float(max(errors)),
        "points": len(fan),
        "gap_us": gap,
        "messages": m,
        "separated_sizes": f"{sum(apart)}/{len(apart)}",
    }
    return profile


OVERLAPS = np.linspace(0.0, 1.0, 11)


def fit_profile(rows: list[dict], name: str, topo, source: str, cases: list[Case]) -> costmodel.Profile:
    """Fit alpha-beta per class from the sweep rows, then the overlap from the ring; absent classes borrow."""
    links, fits = {}, {}
    for cls in FIT_CLASSES:
        pts = [r for r in rows if r["class"] == cls]
        if not pts:
            continue
        fit = costmodel.fit_link([r["xbytes"] for r in pts], [r["time_us"] for r in pts])
        links[cls.replace("-", "_")] = fit.link
        fits[cls] = {"median_abs_err": fit.median_abs_err, "max_abs_err": fit.max_abs_err, "points": fit.points}
        for r in pts:
            r["fit_us"] = fit.link.time_us(r["xbytes"])
            r["fit_err"] = (r["fit_us"] - r["time_us"]) / r["time_us"]
    for cls, other in (("intra", "inter"), ("inter", "intra")):
        if cls not in links:
            links[cls] = links[other]
            links[f"{cls}_coll"] = links.get(f"{other}_coll")
            fits[cls] = {"not_measured": f"this topology has no {cls}-node pair; copied from {other}"}
    profile = costmodel.Profile(
        name=name, **links, ranks_per_node=topo.ranks_per_node, nics_per_node=1, source=source, fit=fits
    )
    for cls in ("intra", "inter"):
        fan = [c for c in cases if c.row["class"] == f"{cls}-fan"]
        profile = fit_gap(profile, cls, fan, topo, [r for r in rows if r["class"] == f"{cls}-coll"])
    ring = [c for c in cases if c.row["class"] == "ring"]
    if not ring:
        return profile

    def ring_errors(overlap: float) -> np.ndarray:
        trial = replace(profile, overlap=float(overlap))
        return np.array([costmodel.predict(c.schedule, topo, trial) / c.row["time_us"] - 1 for c in ring])

    best = min(OVERLAPS, key=lambda o: float(np.median(np.abs(ring_errors(o)))))
    profile = replace(profile, overlap=float(best))
    errors = ring_errors(best)
    for c, e in zip(ring, errors):
        c.row["fit_us"] = c.row["time_us"] * (1 + e)
        c.row["fit_err"] = float(e)
    fits["ring"] = {
        "median_abs_err": float(np.median(np.abs(errors))),
        "max_abs_err": float(np.abs(errors).max()),
        "points": len(ring),
        "overlap": float(best),
    }
    return profile
