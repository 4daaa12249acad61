"""Calibrate the cost model on this topology: a link profile per class, then predicted vs measured per algorithm.

P = world size, G = ranks per node, N = P / G nodes, L = TP degree, S = bytes each rank sends.

1. Sweep (`-b -e -f`): per link class, every rank exchanges S bytes with a partner of that class,
   all pairs at once (intra: local index g with g ^ 1; inter: node n with n ^ 1), as the
   algorithms' own steps do; plus a layout copy of S bytes on every rank. Time = slowest rank,
   median over iterations. Each class gets an alpha-beta fit on the model's effective bytes
   (the G ranks of a node share its uplink), printed with its fit error, and the link profile is
   written as JSON (`--profile-out`, and in the result's meta).
2. Validation (`--validate`): every algorithm over `--sizes`, each call checked as in
   `bench collectives`, timed, and predicted by bench/costmodel.py from its schedule; rows carry
   `measured_us`, `predicted_us` and the error; the median absolute error is printed, and where
   hierarchical wins or loses against flat, measured and predicted.
3. `--check-schedules`: no timing; every algorithm's bytes and messages per rank and link class,
   as counted by the communicator, against the model's schedule.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from moebench.bench import costmodel, report, timing
from moebench.bench.cli import add_launch_arguments, check_launch_arguments, open_comm, size_arg, str_list
from moebench.bench.collectives_bench import (
    count_wrong,
    expected_recv,
    parse_skew,
    rank_rows,
    row_shape,
    sizes_between,
    split_matrix,
)
from moebench.collectives.exchange import transpose_chunks

EXCHANGES = ("flat", "hierarchical", "native")
ALGO_CHOICES = (*EXCHANGES, "coordinated")
ELEM = 4  # float32 rows
TOLERANCE = 0.25  # the goal for the median absolute error


def add_arguments(p) -> None:
    p.add_argument("-b", "--minbytes", type=size_arg, default=size_arg("1K"), help="smallest sweep size S")
    p.add_argument("-e", "--maxbytes", type=size_arg, default=size_arg("4M"), help="largest sweep size S")
    p.add_argument("-f", "--stepfactor", type=float, default=4.0, help="sweep size factor")
    p.add_argument("-n", "--iters", type=int, default=20, help="timed iterations per point")
    p.add_argument("-w", "--warmup_iters", type=int, default=3, help="warmup iterations per point")
    p.add_argument("--rounds", type=int, default=5, help="spread each point's iterations over this many rounds")
    add_launch_arguments(p)
    p.add_argument("--validate", action="store_true", help="also measure every algorithm against the model")
    p.add_argument("--sizes", type=str_list, default=["4K", "32K", "256K", "1M", "4M"], help="validation sizes S")
    p.add_argument("--algos", type=str_list, default=list(ALGO_CHOICES), help="comma list of " + ",".join(ALGO_CHOICES))
    p.add_argument("--skew", default="uniform", help="uniform or zipf:S (validation split sizes)")
    p.add_argument("--hidden", type=int, default=1024, help="elements per row, at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default=None, help="validate with this link profile (JSON) instead of calibrating")
    p.add_argument("--profile-out", default=None, help="write the fitted link profile (JSON) here")
    p.add_argument("--name", default=None, help="profile name (default: calibrated-<machine>-<topology>)")
    p.add_argument("--check-schedules", action="store_true", help="only compare model schedules with real traffic")
    p.add_argument("--json", default=None, help="write {meta, rows} here")
    p.add_argument("--save", action="store_true", help="store JSON/CSV/Markdown under results/<machine>/")
    p.add_argument("--tag", default="", help="label in saved file names")


def validate_args(args) -> dict:
    """Checks that need no communication (identical on every rank); ValueError on bad input."""
    check_launch_arguments(args)
    if args.minbytes < ELEM or args.maxbytes < args.minbytes or args.stepfactor <= 1:
        raise ValueError(f"need {ELEM} <= -b <= -e and -f > 1 (got -b {args.minbytes} -e {args.maxbytes})")
    if args.iters < 3 or args.warmup_iters < 0 or args.rounds < 1:
        raise ValueError(
            f"need -n >= 3 (a median), -w >= 0, --rounds >= 1 (got -n {args.iters} -w {args.warmup_iters} "
            f"--rounds {args.rounds})"
        )
    unknown = [a for a in args.algos if a not in ALGO_CHOICES]
    if unknown or not args.algos:
        raise ValueError(f"unknown algorithm {', '.join(unknown) or '(none)'}; choose from {', '.join(ALGO_CHOICES)}")
    try:
        sizes = [size_arg(s) for s in args.sizes]
    except Exception:
        raise ValueError(f"--sizes: not a list of sizes: {','.join(args.sizes)}") from None
    profile = load_profile(args.profile) if args.profile else None
    return {"sizes": sizes, "skew": parse_skew(args.skew), "profile": profile}


def load_profile(path: str) -> costmodel.Profile:
    """A profile JSON (as --profile-out writes), or a calibrate result file with meta.profile."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--profile {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--profile {path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("meta"), dict) and "profile" in data["meta"]:
        data = data["meta"]["profile"]
    if not isinstance(data, dict):
        raise ValueError(f"--profile {path}: not a link profile")
    try:
        return costmodel.Profile.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"--profile {path}: {exc}") from None


# ------------------------------------------------------------------------------ sweep


def classes_present(topo) -> list[str]:
    """Link classes this topology has: intra needs G >= 2, inter needs N >= 2."""
    return [c for c, ok in (("intra", topo.ranks_per_node > 1), ("inter", topo.num_nodes > 1)) if ok]


def pair_exchange(comm, send: torch.Tensor, recv: torch.Tensor, partner: int):
    """One sendrecv with `partner` (nothing when partner < 0: this rank idles)."""
    if partner < 0:
        return lambda: None
    return lambda: comm.world.sendrecv(send, partner, recv, partner)


@dataclass
class Case:
    """One thing to time: its result row (filled in), the timed call, and the samples of every round."""

    row: dict
    fn: Callable[[], object]
    schedule: list | None = None
    samples: list = field(default_factory=list)


def run_interleaved(comm, cases: list[Case], iters: int, warmup: int, rounds: int) -> None:
    """Time every case in `rounds` rounds of ceil(iters / rounds) iterations each, round-robin.

    On a shared host, load comes and goes over seconds: spreading each case over the whole run
    lets a slow spell hit every case alike (calibration points and validation rows included).
    Adds median/p20/p80/p99 of the pooled samples (slowest rank per iteration) to each row.
    """
    per_round = max(1, math.ceil(iters / rounds))
    for rnd in range(rounds):
        for case in cases:
            w = warmup if rnd == 0 else 1
            case.samples.extend(timing.measure(case.fn, iters=per_round, warmup=w, comm=comm, device=comm.device))
    for case in cases:
        case.row.update(timing.stats(np.asarray(case.samples)))


def pair_cases(comm, cls: str, sizes: list[int]) -> list[Case]:
    """Every rank exchanges S bytes with its class-`cls` partner, all pairs at once: one case per size."""
    topo, me = comm.topology, comm.rank
    cases = []
    for size in sizes:
        schedule, partner = costmodel.pair_schedule(topo, cls, size)
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
        schedule = [costmodel.group_exchange(f"{cls} a2a", groups, size, topo.world_size)]
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
        schedule = [costmodel._phase("ring", P, ranks, (ranks + 1) % P, np.full(P, size), blocking=True)]
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
        schedule = [costmodel._dense_exchange(f"{cls} fan", mask * float(size))]
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


# ------------------------------------------------------------------------------ validation


def model_traffic_max(schedule, topo) -> list[int]:
    """Busiest rank's [intra B, inter B, intra msgs, inter msgs] by the model (as measure_case reports)."""
    return [int(v) for v in costmodel.traffic(schedule, topo).max(axis=0)]


def checked_case(comm, row: dict, fn, check, schedule) -> Case:
    """Run `fn` once (collective: every rank, same order): count wrong elements and the busiest rank's traffic."""
    comm.traffic.reset()
    wrong = check(fn())
    busiest = comm.allreduce_max(comm.traffic.as_array())
    row.update(
        wire_intra_bytes=int(busiest[0]),
        wire_inter_bytes=int(busiest[1]),
        msgs_intra=int(busiest[2]),
        msgs_inter=int(busiest[3]),
        wrong=sum(comm.allgather_object(wrong)),
    )
    row["schedule_matches"] = [int(v) for v in busiest] == model_traffic_max(schedule, comm.topology)
    return Case(row, fn, schedule)


def validation_cases(comm, args, size: int, skew: float) -> list[Case]:
    """Every selected exchange and dispatch/combine pair at one size, each checked once; timed later."""
    from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE

    topo, P, me = comm.topology, comm.world_size, comm.rank
    N, H = row_shape(size, ELEM, P, args.hidden)
    splits = split_matrix(N, P, skew, args.seed)
    row_bytes = H * ELEM
    cases = []
    send = rank_rows(me, N, H, torch.float32, args.seed)
    want = expected_recv(me, splits, H, torch.float32, args.seed)
    for name in [a for a in args.algos if a in EXCHANGES]:
        algo = ALGORITHMS[name]
        fn = lambda algo=algo: algo(comm, send, splits[me])
        schedule = costmodel.exchange_schedule(name, splits, row_bytes, topo)
        row = {"kind": "validate", "algo": name, "size": size}
        cases.append(checked_case(comm, row, fn, lambda out: count_wrong(out[0], want), schedule))
    if "coordinated" in args.algos:
        leaders = np.arange(P) // topo.tp * topo.tp
        tp_splits = splits[leaders]  # every TP rank holds its group's first rank's rows
        tp_send = rank_rows(int(leaders[me]), N, H, torch.float32, args.seed)
        for inner in [a for a in args.algos if a in EXCHANGES] or ["flat"]:
            for pair_name, label in (("plain", "plain-rt"), ("coordinated", "coordinated")):
                pair = DISPATCH_COMBINE[pair_name]

                def roundtrip(pair=pair, inner=inner):
                    recv, _, handle = pair.dispatch(comm, tp_send, tp_splits[me], inner=inner)
                    return pair.combine(comm, recv, handle)

                schedule = costmodel.roundtrip_schedule(pair_name, inner, tp_splits, row_bytes, topo)
                row = {"kind": "validate", "algo": f"{label}:{inner}", "size": size}
                cases.append(checked_case(comm, row, roundtrip, lambda out: count_wrong(out, tp_send), schedule))
    return cases


def add_prediction(case: Case, profile: costmodel.Profile, topo) -> dict:
    """Fill measured_us, predicted_us and err into the case's row."""
    row = case.row
    predicted = costmodel.predict(case.schedule, topo, profile)
    row.update(measured_us=row["time_us"], predicted_us=predicted, err=(predicted - row["time_us"]) / row["time_us"])
    return row


def hierarchical_verdicts(rows: list[dict]) -> list[str]:
    """Per size: flat / hierarchical time ratio, measured and predicted, and whether they agree on the winner."""
    lines = []
    for size in sorted({r["size"] for r in rows}):
        by = {r["algo"]: r for r in rows if r["size"] == size}
        if "flat" not in by or "hierarchical" not in by:
            continue
        m = by["flat"]["measured_us"] / by["hierarchical"]["measured_us"]
        p = by["flat"]["predicted_us"] / by["hierarchical"]["predicted_us"]
        verdict = "wins" if m > 1 else "loses"
        agree = "model agrees" if (m > 1) == (p > 1) else "MODEL DISAGREES"
        lines.append(
            f"S={size}: hierarchical {verdict} vs flat (flat/hier measured {m:.2f}x, predicted {p:.2f}x; {agree})"
        )
    return lines


# ------------------------------------------------------------------------------ schedule check


def check_schedules(comm, args) -> int:
    """Every algorithm on a skewed split matrix with empty chunks: model traffic per rank == counted traffic."""
    from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE

    topo, P, me, L = comm.topology, comm.world_size, comm.rank, comm.tp.size
    rng = np.random.default_rng(args.seed)
    splits = rng.integers(0, 7, size=(P, P)) * (rng.random((P, P)) < 0.75)
    H = 3
    leaders = np.arange(P) // L * L
    cases = []
    for name, algo in ALGORITHMS.items():
        send = torch.zeros(int(splits[me].sum()), H)
        cases.append((name, lambda algo=algo, send=send: algo(comm, send, splits[me]), splits, None))
    for inner in ALGORITHMS:
        for pair_name, pair in DISPATCH_COMBINE.items():
            tp_send = torch.zeros(int(splits[leaders[me]].sum()), H)

            def roundtrip(pair=pair, inner=inner, tp_send=tp_send):
                recv, _, handle = pair.dispatch(comm, tp_send, splits[leaders[me]], inner=inner)
                return pair.combine(comm, recv, handle)

            cases.append((f"{pair_name}:{inner}", roundtrip, splits[leaders], (pair_name, inner)))
    failures = 0
    for label, fn, case_splits, pair in cases:
        comm.traffic.reset()
        fn()
        counted = np.array(comm.allgather_object(comm.traffic.as_array().tolist()))
        if pair is None:
            schedule = costmodel.exchange_schedule(label, case_splits, H * 4, topo)
        else:
            schedule = costmodel.roundtrip_schedule(pair[0], pair[1], case_splits, H * 4, topo)
        model = costmodel.traffic(schedule, topo)
        if not np.array_equal(counted, model):
            failures += 1
            if me == 0:
                print(f"schedule mismatch {label}: counted {counted.tolist()} model {model.tolist()}", flush=True)
    if me == 0:
        print(f"schedules checked P={P} G={topo.ranks_per_node} L={L} {comm.backend}: {len(cases)} cases, "
              f"{failures} mismatches", flush=True)  # fmt: skip
    return 1 if failures else 0


# ------------------------------------------------------------------------------ output

SWEEP_COLUMNS = ["class", "size", "eff bytes", "time_us", "p20_us", "p80_us", "fit_us", "fit err"]
VALIDATE_COLUMNS = [
    "size",
    "algo",
    "measured_us",
    "p20_us",
    "p80_us",
    "predicted_us",
    "err",
    "wire intra B",
    "wire inter B",
    "sched",
    "#wrong",
]
SWEEP_CAPTION = (
    "intra/inter: all pairs of the class exchange S bytes at once (blocking sendrecv); intra-coll/inter-coll: the "
    "library all-to-all inside every node / every cross-node group at once, S bytes per peer; intra-fan/inter-fan: "
    "one world all-to-all with S bytes to every peer of the class (fits the per-message gap); ring: r sends S to "
    "r+1 (mixes the classes; fits the overlap); copy: a layout transform of S bytes on every rank; self-coll: the "
    "library all-to-all with only the rank's own S bytes (its local copy, bandwidth only). time = slowest "
    "rank, median (p20/p80) over iterations; eff bytes = the bytes that set the class's time in the model (a node's "
    "G ranks share its uplink); fit = alpha + eff bytes / bw."
)
VALIDATE_CAPTION = (
    "measured = slowest rank per iteration, median (p20/p80); predicted = bench/costmodel.py on the calibrated "
    "profile from the algorithm's schedule; err = (predicted - measured) / measured; sched = the model's bytes and "
    "messages per link class equal what the busiest rank counted; exchanges include their count exchange (plan); "
    "plain-rt/coordinated = dispatch + combine round trips."
)


def sweep_table(rows):
    return [
        [
            r["class"],
            r["size"],
            r["xbytes"],
            r["time_us"],
            r["p20_us"],
            r["p80_us"],
            r["fit_us"],
            f"{r['fit_err']:+.0%}",
        ]
        for r in rows
    ]


def validate_table(rows):
    return [
        [
            r["size"],
            r["algo"],
            r["measured_us"],
            r["p20_us"],
            r["p80_us"],
            r["predicted_us"],
            f"{r['err']:+.0%}",
            r["wire_intra_bytes"],
            r["wire_inter_bytes"],
            "ok" if r["schedule_matches"] else "DIFF",
            r["wrong"],
        ]
        for r in rows
    ]


def profile_lines(profile: costmodel.Profile) -> list[str]:
    lines = [
        f"link profile {profile.name} (G={profile.ranks_per_node}, {profile.nics_per_node} NIC(s) per node, "
        f"overlap of intra and inter {profile.overlap:g})"
    ]
    for cls in FIT_CLASSES:
        link = getattr(profile, cls.replace("-", "_"))
        if link is None:
            continue
        fit = profile.fit.get(cls, {})
        err = (
            f"fit error median {fit['median_abs_err']:.1%}, max {fit['max_abs_err']:.1%} over {fit['points']} sizes"
            if "median_abs_err" in fit
            else fit.get("not_measured", "")
        )
        gap = f", gap {link.gap_us:g} µs" if link.gap_us else ""
        lines.append(f"  {cls:10s}: alpha {link.alpha_us:9.1f} µs, bw {link.bw_gbs:9.4f} GB/s{gap}   {err}")
    for cls in ("intra", "inter"):
        fit = profile.fit.get(f"{cls}-fan")
        if fit:
            lines.append(
                f"  {cls}-fan ({fit['messages']} messages per rank in one call): gap {fit['gap_us']:.1f} µs per "
                f"further message (slower than one message beyond the noise at {fit['separated_sizes']} small sizes), "
                f"error median {fit['median_abs_err']:.1%}, max {fit['max_abs_err']:.1%}"
            )
    if "ring" in profile.fit:
        fit = profile.fit["ring"]
        lines.append(
            f"  ring (mixed intra/inter steps): overlap {fit['overlap']:g} fitted, error median "
            f"{fit['median_abs_err']:.1%}, max {fit['max_abs_err']:.1%} over {fit['points']} sizes"
        )
    return lines


def run(args) -> int:
    cfg = validate_args(args)
    comm = open_comm(args.backend, args.ranks_per_node, args.tp)
    if args.check_schedules:
        return check_schedules(comm, args)
    meta = {**report.base_meta("calibrate", sys.argv), **report.comm_meta(comm)}  # comm_meta names the cluster
    meta.update(iters=args.iters, warmup=args.warmup_iters, rounds=args.rounds, skew=args.skew, tag=args.tag)
    topo, lead = comm.topology, comm.rank == 0
    if lead:
        report.print_header(meta)  # names the emulated cluster, where there is one
    profile = cfg["profile"]
    sweep = []
    if profile is None:
        sweep = sweep_cases(comm, sizes_between(args.minbytes, args.maxbytes, args.stepfactor))
    checks = []
    if args.validate:
        for size in cfg["sizes"]:
            checks += validation_cases(comm, args, size, cfg["skew"])
    run_interleaved(comm, sweep + checks, args.iters, args.warmup_iters, args.rounds)
    rows = [c.row for c in sweep]
    if profile is None:
        lat = meta.get("emulated_inter_latency_us") or 0
        name = args.name or (
            f"calibrated-{meta['machine']}-{topo.num_nodes}x{topo.ranks_per_node}-{comm.backend}"
            + (f"-lat{lat:g}us" if lat else "")
        )
        source = meta.get("emulated_cluster") or f"measured on {meta['host']} ({topo.describe()})"
        profile = fit_profile(rows, name, topo, source, sweep)
    meta["profile"] = profile.to_dict()
    if lead and rows:
        report.print_table("point-to-point sweep per link class", SWEEP_COLUMNS, sweep_table(rows), SWEEP_CAPTION)
    if lead:
        report.console.print("\n".join(profile_lines(profile)))
        if args.profile_out:
            report.atomic_write(Path(args.profile_out), json.dumps(profile.to_dict(), indent=1) + "\n")
            report.console.print(f"wrote {args.profile_out}")
    vrows = [add_prediction(c, profile, topo) for c in checks]
    summary = []
    if vrows:
        errors = np.abs([r["err"] for r in vrows])
        meta["median_abs_err"] = float(np.median(errors))
        summary = [
            f"median |error| {np.median(errors):.1%} over {len(vrows)} rows (goal <= {TOLERANCE:.0%}); "
            f"within 25%: {np.mean(errors <= 0.25):.0%} of rows; worst {errors.max():.0%}",
            *hierarchical_verdicts(vrows),
        ]
        meta["summary"] = summary
    if lead:
        if vrows:
            title = f"predicted vs measured, P={topo.world_size} G={topo.ranks_per_node} L={topo.tp} {comm.backend}"
            report.print_table(title, VALIDATE_COLUMNS, validate_table(vrows), VALIDATE_CAPTION)
            report.console.print("\n".join(summary))
        all_rows = rows + vrows
        if args.json:
            report.write_json(args.json, meta, all_rows)
        if args.save:
            report.save_run(meta, all_rows, markdown(meta, rows, vrows, profile, summary))
    wrong = sum(r["wrong"] for r in vrows)
    return 1 if wrong else 0


def markdown(meta, rows, vrows, profile, summary) -> str:
    parts = [f"# calibrate: {profile.name}\n", report.header_markdown(meta)]
    parts.append("\n```\n" + "\n".join(profile_lines(profile)) + "\n```\n")
    if rows:
        parts.append(
            "\n## Point-to-point sweep\n\n" + report.rows_to_markdown(SWEEP_COLUMNS, sweep_table(rows), SWEEP_CAPTION)
        )
    if vrows:
        parts.append(
            "\n## Predicted vs measured\n\n"
            + report.rows_to_markdown(VALIDATE_COLUMNS, validate_table(vrows), VALIDATE_CAPTION)
            + "\n"
            + "\n".join(f"- {line}" for line in summary)
            + "\n"
        )
    return "".join(parts)
