"""All-to-all benchmark, nccl-tests style: every algorithm side by side per size, each result checked.

P = world size, G = ranks per node, L = TP degree, S = bytes each rank sends (incl. its own chunk).

Rows per size: each exchange of --algos (the ALGORITHMS registry); a `<pair>:<inner>` dispatch+combine
round trip for each pair of --pairs (the DISPATCH_COMBINE registry) over each selected exchange, on
rows duplicated across each TP group; reference rows: `host-copy` (a plain memory copy of S bytes on every
rank at once, the ceiling on one host), `native-data` (the backend's all-to-all-v with counts known) and
`floor` (that library call on prebuilt arguments); and each exchange's count exchange timed alone (its
`counts µs` column). The rows of one size run interleaved, round-robin over --rounds rounds, at most -n
iterations and --budget seconds each. `#wrong` counts wrong elements over all ranks (a wrong row exits 1).
"""

from __future__ import annotations

import sys

import torch

from moebench.bench import cases, options, report, timing
from moebench.bench.cli import open_comm
from moebench.bench.layer.overlap import parse_overlap, pipeline
from moebench.bench.timing import Case
from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE

# the pairs an overlap mode's round trip pipelines (the plain transport: plain, fp8, dedup, fp8-dedup)
OVERLAP_PAIRS = [name for name, pair in DISPATCH_COMBINE.items() if pipeline.runs(pair, "native", None)]
BUFFERS_PER_SIZE = 8  # send, recv, expected and hierarchical's staging copies, per rank


def add_arguments(p) -> None:
    options.add_sizes(p, "1K", "16M", 2.0)
    options.add_iterations(p, iters=100, warmup=5)
    options.add_check(p)
    options.add_dtype(p, "float32")
    options.add_names(p, "--algos", ALGORITHMS, ALGORITHMS, "exchanges")
    options.add_pairs(p)
    p.add_argument("--overlap", type=options.str_list, default=["none"],
                   help="overlap modes (none, chunks:C, dual): each adds `<pair>:native (<mode>)` round trips of the "
                   "pipeline's communication alone for the pairs it runs (plain, fp8, dedup, fp8-dedup)")  # fmt: skip
    options.add_launch(p)
    options.add_skew(p, "uniform", gate=False)
    options.add_hidden(p)
    options.add_seed(p)
    options.add_output(p)


def validate(args) -> list[str]:
    """Every check that needs no communication, identical on every rank: ValueError on bad input.
    Returns the pairs to run."""
    P = options.launch_size()
    if args.dtype == "auto":
        args.dtype = "float32"
    options.check_names(args.algos, ALGORITHMS, "algorithm")
    pairs = options.selected_pairs(args)
    options.check_sizes(args)
    options.check_iterations(args)
    if args.hidden < 1:
        raise ValueError(f"--hidden must be >= 1 (got {args.hidden})")
    options.check_skews(args)
    options.check_launch(args)
    if not args.overlap:
        raise ValueError("--overlap needs at least one mode")
    args.overlaps = [o for o in map(parse_overlap, args.overlap) if o.name != "none"]
    if args.overlaps and ("native" not in args.algos or not any(p in OVERLAP_PAIRS for p in pairs)):
        raise ValueError("--overlap pipelines plain, fp8, dedup and fp8-dedup over native: select native (--algos) "
                         "and one of them (--pairs)")  # fmt: skip
    need = BUFFERS_PER_SIZE * args.maxbytes * P
    if need > options.available_memory_bytes():
        raise ValueError(
            f"-e {args.maxbytes} B is too large for memory: about {need / 1e9:.1f} GB needed "
            f"({BUFFERS_PER_SIZE} buffers x {P} ranks), {options.available_memory_bytes() / 1e9:.1f} GB available"
        )
    return pairs


def host_copy_case(send: torch.Tensor, size: int) -> Case:
    """Every rank copies its send buffer at once: the host's memory-copy ceiling for this size.

    algbw = bytes copied / time (each byte read once and written once); busbw is the same number."""
    dst = torch.empty_like(send)
    return Case({"algo": "host-copy", "size": size, "wrong": None}, lambda: dst.copy_(send))


def size_rows(comm, args, pairs, skew, size: int) -> list[dict]:
    """Every row of one size and skew, timed interleaved."""
    P, dtype = comm.world_size, options.DTYPES[args.dtype]
    check = bool(args.check)
    exchanges, logical, send = cases.exchange_cases(comm, args.algos, size, skew, args.hidden, dtype, args.seed, check)
    trips, trip_logical = cases.roundtrip_cases(
        comm, pairs, args.algos, size, skew, args.hidden, dtype, args.seed, check, args.overlaps
    )
    copy = host_copy_case(send, size)
    library = cases.library_cases(comm, send, size, skew, args.seed, check)
    counts = cases.count_cases(comm, args.algos, send, size, skew, args.seed)
    timed = [copy, *library, *exchanges, *trips, *counts]
    timing.run_interleaved(comm, timed, args.iters, args.warmup, args.rounds, comm.device, options.budget_seconds(args))
    cases.add_bandwidth(copy.row, send.numel() * send.element_size(), 2)
    copy.row["busbw_gbps"] = copy.row["algbw_gbps"]
    floor = library[1].row
    for case, count in zip(exchanges, counts):
        case.row["counts_us"] = count.row["time_us"]
    for case in [*library, *exchanges]:
        cases.add_bandwidth(case.row, logical, P)
        case.row["host_copy_frac"] = case.row["algbw_gbps"] / copy.row["algbw_gbps"] if copy.row["algbw_gbps"] else 0
        case.row["x_floor"] = case.row["time_us"] / floor["time_us"]
    native = next((c.row for c in exchanges if c.row["algo"] == "native"), None)
    for case in exchanges:
        case.row["vs_native"] = native["time_us"] / case.row["time_us"] if native else None
        case.row["tie_native"] = native is not None and case.row is not native and timing.ties(native, case.row)
    for case in trips:
        cases.add_bandwidth(case.row, trip_logical, P)
        plain = next((c.row for c in trips if c.row["pair"] == "plain" and c.row["inner"] == case.row["inner"]
                      and "overlap" not in c.row), None)  # fmt: skip
        if plain is not None and case.row is not plain:
            case.row["vs_plain"] = plain["time_us"] / case.row["time_us"]
            case.row["tie_plain"] = timing.ties(plain, case.row)
            if "dispatch_wire_bytes" in case.row:  # an overlap row's dispatch is interleaved with its combines
                plain_bytes = max(plain["dispatch_wire_bytes"], 1)
                case.row["dispatch_volume_frac"] = case.row["dispatch_wire_bytes"] / plain_bytes
    rows = [c.row for c in (copy, *library, *exchanges, *trips)]
    for row in rows:
        row["skew"] = str(skew)
    return rows


# ------------------------------------------------------------------------------ output

COLUMNS = [
    "size", "skew", "algo", "time_us", "p99_us", "algbw GB/s", "busbw GB/s", "wire intra B", "wire inter B",
    "sched", "#wrong", "counts µs", "x floor", "vs native", "host-copy frac", "vs plain", "dispatch vol",
]  # fmt: skip


def table_rows(rows: list[dict]) -> list[list]:
    def opt(row, key, fmt="{:.2f}"):
        return fmt.format(row[key]) if row.get(key) is not None else ""

    def ratio(row, key, tie):
        return "tie" if row.get(tie) else opt(row, key, "{:.2f}x")

    def sched(row):
        return "" if "schedule_matches" not in row else ("ok" if row["schedule_matches"] else "DIFF")

    return [
        [
            r["size"],
            r.get("skew", ""),
            r["algo"],
            r["time_us"],
            r["p99_us"],
            r["algbw_gbps"],
            r["busbw_gbps"],
            r.get("wire_intra_bytes", ""),
            r.get("wire_inter_bytes", ""),
            sched(r),
            "-" if r["wrong"] is None else r["wrong"],
            opt(r, "counts_us", "{:.1f}"),
            opt(r, "x_floor", "{:.2f}x"),
            ratio(r, "vs_native", "tie_native"),
            opt(r, "host_copy_frac"),
            ratio(r, "vs_plain", "tie_plain"),
            opt(r, "dispatch_volume_frac"),
        ]
        for r in rows
    ]


CAPTION = (
    "size = S bytes each rank sends (own chunk included); time = slowest rank per iteration, median and p99, rows "
    "of a size interleaved over rounds; algbw = busiest rank's logical bytes / time; busbw = algbw x (P-1)/P; wire "
    "B = bytes the busiest rank sent to other ranks per call (intra / inter node); sched = those bytes and messages "
    "equal the algorithm's own schedule (the cost model's input); #wrong: wrong elements over all ranks (- = not "
    "checked); counts µs = the algorithm's count exchange (its plan) timed alone beside it; native-data = the "
    "backend's all-to-all-v with counts known (what OSU's osu_alltoallv measures); floor = the library call on "
    "arguments built once (what Python can reach); x floor = time / floor time; vs native = native time / time, "
    "`tie` when the difference is inside the spread (p20-p80 intervals overlap, and neither row won every "
    "round); host-copy frac = algbw / host-copy algbw (a memcpy of S bytes on "
    "every rank at once); <pair>:<inner> = dispatch + combine round trip (its bytes count both directions); "
    "vs plain = plain:<inner> time / time; "
    "dispatch vol = its dispatch wire bytes / plain's; fp8 rows include their quantize and dequantize; dedup and "
    "fp8-dedup move the same (token, expert) rows as S / (2 x row) tokens with 2 experts each, one row per token "
    "and destination rank (grouped before the timed call)."
)


def title(meta: dict) -> str:
    return f"all-to-all, {meta['dtype']}, skew {meta['skew']}, P={meta['P']} G={meta['G']} L={meta['L']}"


def render(data: dict, path) -> None:
    report.print_table(report.stored_title(data, path), COLUMNS, table_rows(data["rows"]))


def plot(rows: list[dict], base) -> list:
    from moebench.bench import plots

    labels = {"xlabel": "bytes per rank (S)", "ylabel": "busbw (GB/s)", "title": "all-to-all busbw"}
    return plots.series(rows, base, "busbw", x="size", y="busbw_gbps", label=lambda r: r["algo"], **labels)


def run(args) -> int:
    pairs = validate(args)
    comm = open_comm(args.backend, args.ranks_per_node, args.tp)
    meta = {**report.base_meta("collectives", sys.argv), **report.comm_meta(comm)}
    meta.update(dtype=args.dtype, skew=",".join(map(str, args.skew)), iters=args.iters, warmup=args.warmup,
                rounds=args.rounds, budget_s=args.budget, tag=args.tag)  # fmt: skip
    if comm.rank == 0:
        report.print_header(meta)
    rows = []
    for skew in args.skew:
        for size in cases.sizes_between(args.minbytes, args.maxbytes, args.stepfactor):
            rows += size_rows(comm, args, pairs, skew, size)
    if comm.rank == 0:
        caption = report.CONVENTIONS + ". " + CAPTION
        table = table_rows(rows)
        report.print_table(title(meta), COLUMNS, table, caption)
        markdown = f"# {title(meta)}\n\n{report.header_markdown(meta)}\n" + report.rows_to_markdown(
            COLUMNS, table, caption
        )
        report.emit(args, meta, rows, markdown)
    return report.exit_status(rows, say=comm.rank == 0)
