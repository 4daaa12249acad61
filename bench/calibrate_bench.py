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
import sys
from pathlib import Path

import numpy as np
import torch

from bench import costmodel, report, timing
from bench.cli import add_launch_arguments, check_launch_arguments, open_comm, size_arg, str_list
from bench.cluster import cluster_meta
from bench.collectives_bench import (
    count_wrong,
    expected_recv,
    measure_case,
    parse_skew,
    rank_rows,
    row_shape,
    sizes_between,
    split_matrix,
)
from collectives.exchange import transpose_chunks

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
    if args.iters < 3 or args.warmup_iters < 0:
        raise ValueError(f"need -n >= 3 (a median) and -w >= 0 (got -n {args.iters} -w {args.warmup_iters})")
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


def pair_points(comm, cls: str, sizes: list[int], args) -> list[dict]:
    """Every rank exchanges S bytes with its class-`cls` partner, all pairs at once: one row per size."""
    topo, me = comm.topology, comm.rank
    rows = []
    for size in sizes:
        schedule, partner = costmodel.pair_schedule(topo, cls, size)
        send = torch.ones(size // ELEM, dtype=torch.float32)
        recv = torch.empty_like(send)
        mine = int(partner[me])
        fn = pair_exchange(comm, send, recv, mine)
        samples = timing.measure(fn, iters=args.iters, warmup=args.warmup_iters, comm=comm, device=comm.device)
        xbytes = costmodel.effective_bytes(schedule, topo, cls)
        rows.append({"kind": "p2p", "class": cls, "size": size, "xbytes": xbytes, **timing.stats(samples)})
    return rows


def copy_points(comm, sizes: list[int], args) -> list[dict]:
    """Every rank reorders S bytes in P chunks at once (hierarchical's layout transform): one row per size."""
    P = comm.world_size
    rows = []
    for size in sizes:
        n = size // ELEM
        x = torch.ones(n, 1, dtype=torch.float32)
        grid = np.array([[n // P + (i < n % P) for i in range(P)]])  # [1, P] chunks
        grid = np.concatenate([grid, np.zeros_like(grid)]) if P > 1 else grid  # [2, P]: a real transpose
        fn = lambda x=x, grid=grid: transpose_chunks(x, grid).contiguous()
        samples = timing.measure(fn, iters=args.iters, warmup=args.warmup_iters, comm=comm, device=comm.device)
        rows.append({"kind": "p2p", "class": "copy", "size": size, "xbytes": float(size), **timing.stats(samples)})
    return rows


def fit_profile(rows: list[dict], name: str, topo, source: str) -> costmodel.Profile:
    """Fit alpha-beta per class from the sweep rows; a class not present borrows another's link."""
    links, fits = {}, {}
    for cls in ("intra", "inter", "copy"):
        pts = [r for r in rows if r["class"] == cls]
        if not pts:
            continue
        fit = costmodel.fit_link([r["xbytes"] for r in pts], [r["time_us"] for r in pts])
        links[cls] = fit.link
        fits[cls] = {"median_abs_err": fit.median_abs_err, "max_abs_err": fit.max_abs_err, "points": fit.points}
        for r in pts:
            r["fit_us"] = fit.link.time_us(r["xbytes"])
            r["fit_err"] = (r["fit_us"] - r["time_us"]) / r["time_us"]
    for cls, other in (("intra", "inter"), ("inter", "intra")):
        if cls not in links:
            links[cls] = links[other]
            fits[cls] = {"not_measured": f"this topology has no {cls}-node pair; copied from {other}"}
    return costmodel.Profile(
        name=name, **links, ranks_per_node=topo.ranks_per_node, nics_per_node=1, source=source, fit=fits
    )


# ------------------------------------------------------------------------------ validation


def model_traffic_max(schedule, topo) -> list[int]:
    """Busiest rank's [intra B, inter B, intra msgs, inter msgs] by the model (as measure_case reports)."""
    return [int(v) for v in costmodel.traffic(schedule, topo).max(axis=0)]


def validation_rows(comm, args, size: int, profile, skew: float) -> list[dict]:
    """Every selected exchange and dispatch/combine pair at one size: checked, timed, predicted."""
    from collectives import ALGORITHMS, DISPATCH_COMBINE

    topo, P, me = comm.topology, comm.world_size, comm.rank
    N, H = row_shape(size, ELEM, P, args.hidden)
    splits = split_matrix(N, P, skew, args.seed)
    row_bytes = H * ELEM
    rows = []
    send = rank_rows(me, N, H, torch.float32, args.seed)
    want = expected_recv(me, splits, H, torch.float32, args.seed)
    for name in [a for a in args.algos if a in EXCHANGES]:
        algo = ALGORITHMS[name]
        fn = lambda algo=algo: algo(comm, send, splits[me])
        row = {"kind": "validate", "algo": name, "size": size}
        row.update(measure_case(comm, fn, lambda out: count_wrong(out[0], want), args.iters, args.warmup_iters))
        rows.append(_with_prediction(row, costmodel.exchange_schedule(name, splits, row_bytes, topo), topo, profile))
    if "coordinated" in args.algos:
        L = topo.tp
        leaders = np.arange(P) // L * L
        tp_splits = splits[leaders]  # every TP rank holds its group's first rank's rows
        tp_send = rank_rows(int(leaders[me]), N, H, torch.float32, args.seed)
        for inner in [a for a in args.algos if a in EXCHANGES] or ["flat"]:
            for pair_name, label in (("plain", "plain-rt"), ("coordinated", "coordinated")):
                pair = DISPATCH_COMBINE[pair_name]

                def roundtrip(pair=pair, inner=inner):
                    recv, _, handle = pair.dispatch(comm, tp_send, tp_splits[me], inner=inner)
                    return pair.combine(comm, recv, handle)

                row = {"kind": "validate", "algo": f"{label}:{inner}", "size": size}
                check = lambda out: count_wrong(out, tp_send)
                row.update(measure_case(comm, roundtrip, check, args.iters, args.warmup_iters))
                schedule = costmodel.roundtrip_schedule(pair_name, inner, tp_splits, row_bytes, topo)
                rows.append(_with_prediction(row, schedule, topo, profile))
    return rows


def _with_prediction(row: dict, schedule, topo, profile) -> dict:
    measured = [row["wire_intra_bytes"], row["wire_inter_bytes"], row["msgs_intra"], row["msgs_inter"]]
    predicted = costmodel.predict(schedule, topo, profile)
    row.update(
        measured_us=row["time_us"],
        predicted_us=predicted,
        err=(predicted - row["time_us"]) / row["time_us"],
        schedule_matches=measured == model_traffic_max(schedule, topo),
    )
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
    from collectives import ALGORITHMS, DISPATCH_COMBINE

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
    "All pairs of the class exchange S bytes at once (sendrecv); time = slowest rank, median (p20/p80) over "
    "iterations; eff bytes = the bytes that set the class's time in the model (a node's G ranks share its uplink); "
    "fit = alpha + eff bytes / bw; copy = a layout transform of S bytes in P chunks on every rank."
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
    lines = [f"link profile {profile.name} (G={profile.ranks_per_node}, {profile.nics_per_node} NIC per node):"]
    for cls in costmodel.CLASSES:
        link, fit = profile.link(cls), profile.fit.get(cls, {})
        err = (
            f"fit error median {fit['median_abs_err']:.1%}, max {fit['max_abs_err']:.1%} over {fit['points']} sizes"
            if "median_abs_err" in fit
            else fit.get("not_measured", "")
        )
        lines.append(f"  {cls:5s}: alpha {link.alpha_us:9.1f} µs, bw {link.bw_gbs:8.4f} GB/s   {err}")
    return lines


def run(args) -> int:
    cfg = validate_args(args)
    comm = open_comm(args.backend, args.ranks_per_node, args.tp)
    if args.check_schedules:
        return check_schedules(comm, args)
    meta = {**report.base_meta("calibrate", sys.argv), **report.comm_meta(comm), **cluster_meta()}
    meta.update(iters=args.iters, warmup=args.warmup_iters, skew=args.skew, tag=args.tag)
    topo, lead = comm.topology, comm.rank == 0
    if lead:
        report.print_header(meta)
        if meta.get("emulated_cluster"):
            report.console.print(meta["emulated_cluster"])
    rows = []
    profile = cfg["profile"]
    if profile is None:
        sizes = sizes_between(args.minbytes, args.maxbytes, args.stepfactor)
        for cls in classes_present(topo):
            rows += pair_points(comm, cls, sizes, args)
        rows += copy_points(comm, sizes, args)
        name = args.name or f"calibrated-{meta['machine']}-{topo.num_nodes}x{topo.ranks_per_node}-{comm.backend}"
        source = meta.get("emulated_cluster") or f"measured on {meta['host']} ({topo.describe()})"
        profile = fit_profile(rows, name, topo, source)
    meta["profile"] = profile.to_dict()
    if lead and rows:
        report.print_table("point-to-point sweep per link class", SWEEP_COLUMNS, sweep_table(rows), SWEEP_CAPTION)
    if lead:
        report.console.print("\n".join(profile_lines(profile)))
        if args.profile_out:
            report.atomic_write(Path(args.profile_out), json.dumps(profile.to_dict(), indent=1) + "\n")
            report.console.print(f"wrote {args.profile_out}")
    vrows = []
    if args.validate:
        for size in cfg["sizes"]:
            vrows += validation_rows(comm, args, size, profile, cfg["skew"])
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
    if meta.get("emulated_cluster"):
        parts.append(f"- {meta['emulated_cluster']}\n")
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
