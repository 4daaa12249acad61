"""Calibrate the cost model on this topology: a link profile per class, then predicted vs measured per algorithm.

P = world size, G = ranks per node, N = P / G nodes, L = TP degree, S = bytes each rank sends.

1. Sweep (`-b -e -f`, bench/topo/calibration.py): per link class, pairs, group and fan-out all-to-alls, a
   ring, copies; each class gets an alpha-beta fit, printed with its fit error, and the link profile is
   written as JSON (`--profile-out`, and in the result's meta).
2. Validation (`--validate`): every exchange of --algos and every pair of --pairs over them, at `--sizes`,
   each call checked as in `moebench collectives`, timed, and predicted by the cost model from the
   algorithm's own schedule; rows carry `measured_us`, `predicted_us` and the error; the median absolute
   error is printed, and per size whether the model names the same fastest exchange.
3. `--check-schedules`: no timing; every algorithm's bytes and messages per rank and link class, as counted
   by the communicator, against its schedule.
Sweep points and validation rows run interleaved, round-robin over --rounds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from moebench.bench import cases, options, report, timing
from moebench.bench.cli import open_comm
from moebench.bench.topo import calibration, costmodel
from moebench.bench.topo.profiles import load_profile
from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE
from moebench.collectives.schedule import traffic

TOLERANCE = 0.25  # the goal for the median absolute error


def add_arguments(p) -> None:
    options.add_sizes(p, "1K", "4M", 4.0)
    options.add_iterations(p, iters=20, warmup=3, budget=None)
    options.add_launch(p)
    p.add_argument("--validate", action="store_true", help="also measure every algorithm against the model")
    p.add_argument("--sizes", type=options.size_list, default=options.size_list("4K,32K,256K,1M,4M"),
                   help="validation sizes S")  # fmt: skip
    options.add_names(p, "--algos", ALGORITHMS, ALGORITHMS, "exchanges")
    options.add_pairs(p)
    options.add_skew(p, "uniform", gate=False)
    options.add_hidden(p)
    options.add_seed(p)
    p.add_argument("--profile", default=None, help="validate with this link profile (JSON) instead of calibrating")
    p.add_argument("--profile-out", default=None, help="write the fitted link profile (JSON) here")
    p.add_argument("--name", default=None, help="profile name (default: calibrated-<machine>-<topology>)")
    p.add_argument("--check-schedules", action="store_true", help="only compare model schedules with real traffic")
    options.add_output(p)


def validate_args(args) -> dict:
    """Checks that need no communication (identical on every rank); ValueError on bad input."""
    options.check_launch(args)
    options.check_sizes(args, smallest=calibration.ELEM)
    options.check_iterations(args, min_iters=3)
    options.check_names(args.algos, ALGORITHMS, "algorithm")
    pairs = options.selected_pairs(args)
    options.check_skews(args)
    if len(args.skew) != 1:
        raise ValueError("--skew: calibrate validates one skew at a time")
    profile = load_profile(args.profile) if args.profile else None
    return {"pairs": pairs, "profile": profile}


# ------------------------------------------------------------------------------ validation


def validation_cases(comm, args, pairs, size: int) -> list[timing.Case]:
    """Every selected exchange and dispatch/combine pair at one size, each checked once; timed later."""
    common = (size, args.skew[0], args.hidden, torch.float32, args.seed)
    exchanges, _, _ = cases.exchange_cases(comm, args.algos, *common)
    trips, _ = cases.roundtrip_cases(comm, pairs, args.algos, *common)
    for case in exchanges + trips:
        case.row["kind"] = "validate"
    return exchanges + trips


def add_prediction(case: timing.Case, profile: costmodel.Profile, topo) -> dict:
    """Fill measured_us, predicted_us and err into the case's row."""
    row = case.row
    predicted = costmodel.predict(case.schedule, topo, profile)
    row.update(measured_us=row["time_us"], predicted_us=predicted, err=(predicted - row["time_us"]) / row["time_us"])
    return row


def winner_verdicts(rows: list[dict]) -> list[str]:
    """Per size: the fastest exchange measured and predicted, and every exchange's time relative to it."""
    lines = []
    for size in sorted({r["size"] for r in rows}):
        by = {r["algo"]: r for r in rows if r["size"] == size and r["algo"] in ALGORITHMS}
        if len(by) < 2:
            continue
        measured = min(by, key=lambda a: by[a]["measured_us"])
        predicted = min(by, key=lambda a: by[a]["predicted_us"])
        ratios = ", ".join(
            f"{a} {by[a]['measured_us'] / by[measured]['measured_us']:.2f}x "
            f"(predicted {by[a]['predicted_us'] / by[measured]['predicted_us']:.2f}x)"
            for a in by
            if a != measured
        )
        agree = "model agrees" if measured == predicted else f"MODEL DISAGREES (predicts {predicted})"
        lines.append(f"S={size}: fastest {measured} measured; {agree}; time vs {measured}: {ratios}")
    return lines


# ------------------------------------------------------------------------------ schedule check


def check_schedules(comm, args) -> int:
    """Every algorithm on a skewed split matrix with empty chunks: model traffic per rank == counted traffic."""
    topo, P, me, L = comm.topology, comm.world_size, comm.rank, comm.tp.size
    rng = np.random.default_rng(args.seed)
    splits = rng.integers(0, 7, size=(P, P)) * (rng.random((P, P)) < 0.75)
    H = 3
    leaders = np.arange(P) // L * L
    to_check = []
    for name, algo in ALGORITHMS.items():
        send = torch.zeros(int(splits[me].sum()), H)
        to_check.append((name, lambda algo=algo, send=send: algo(comm, send, splits[me]), splits, None))
    max_rows = int(splits[leaders].sum(axis=1).max())
    for inner in ALGORITHMS:
        for pair_name, pair in DISPATCH_COMBINE.items():
            if not pair.runs_over(inner) or pair.unit != "assignment":  # token rows need a routing: moe checks them
                continue
            tp_send = torch.zeros(int(splits[leaders[me]].sum()), H)
            fn = cases.roundtrip(comm, pair, inner, tp_send, splits[leaders[me]], max_rows)
            to_check.append((f"{pair_name}:{inner}", fn, splits[leaders], (pair_name, inner)))
    failures = 0
    for label, fn, case_splits, pair in to_check:
        comm.traffic.reset()
        fn()
        counted = np.array(comm.allgather_object(comm.traffic.as_array().tolist()))
        if pair is None:
            schedule = costmodel.exchange_schedule(label, case_splits, H * 4, topo)
        else:
            out_bytes, back_bytes = DISPATCH_COMBINE[pair[0]].wire_row_bytes(H, torch.float32)
            schedule = costmodel.roundtrip_schedule(pair[0], pair[1], case_splits, out_bytes, topo, back_bytes)
        model = traffic(schedule, topo)
        if not np.array_equal(counted, model):
            failures += 1
            if me == 0:
                print(f"schedule mismatch {label}: counted {counted.tolist()} model {model.tolist()}", flush=True)
    if me == 0:
        print(f"schedules checked P={P} G={topo.ranks_per_node} L={L} {comm.backend}: {len(to_check)} cases, "
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
    "measured = slowest rank per iteration, median (p20/p80); predicted = the cost model on the calibrated "
    "profile from the algorithm's own schedule; err = (predicted - measured) / measured; sched = the schedule's "
    "bytes and messages per link class equal what the busiest rank counted; exchanges include their count exchange "
    "(plan); <pair>:<inner> = dispatch + combine round trips."
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
    for cls in calibration.FIT_CLASSES:
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
    meta.update(iters=args.iters, warmup=args.warmup, rounds=args.rounds, skew=str(args.skew[0]), tag=args.tag)
    topo, lead = comm.topology, comm.rank == 0
    if lead:
        report.print_header(meta)  # names the emulated cluster, where there is one
    profile = cfg["profile"]
    sweep = []
    if profile is None:
        sweep = calibration.sweep_cases(comm, cases.sizes_between(args.minbytes, args.maxbytes, args.stepfactor))
    checks = []
    if args.validate:
        for size in args.sizes:
            checks += validation_cases(comm, args, cfg["pairs"], size)
    timing.run_interleaved(comm, sweep + checks, args.iters, args.warmup, args.rounds, comm.device)
    rows = [c.row for c in sweep]
    if profile is None:
        lat = meta.get("emulated_inter_latency_us") or 0
        name = args.name or (
            f"calibrated-{meta['machine']}-{topo.num_nodes}x{topo.ranks_per_node}-{comm.backend}"
            + (f"-lat{lat:g}us" if lat else "")
        )
        source = meta.get("emulated_cluster") or f"measured on {meta['host']} ({topo.describe()})"
        profile = calibration.fit_profile(rows, name, topo, source, sweep)
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
            *winner_verdicts(vrows),
        ]
        meta["summary"] = summary
    if lead:
        if vrows:
            title = f"predicted vs measured, P={topo.world_size} G={topo.ranks_per_node} L={topo.tp} {comm.backend}"
            report.print_table(title, VALIDATE_COLUMNS, validate_table(vrows), VALIDATE_CAPTION)
            report.console.print("\n".join(summary))
        report.emit(args, meta, rows + vrows, markdown(meta, rows, vrows, profile, summary))
    return report.exit_status(vrows, say=lead)


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
