"""All-to-all benchmark, nccl-tests style: every algorithm side by side per size, each result checked.

P = world size, G = ranks per node, L = TP degree, S = bytes each rank sends (incl. its own chunk),
N = rows each rank sends, H = elements per row.

Rows: each exchange (flat, hierarchical, native) per size; with `coordinated` in --algos, a
dispatch+combine round trip for each selected exchange — `plain-rt:<inner>` (every TP rank sends
all its rows) and `coordinated:<inner>` (each sends 1/L) — on the same TP-duplicated rows; and a
`host-copy` row: a plain memory copy of S bytes on every rank at once, the ceiling on one host.

Data are deterministic per rank (seeded by rank), so every rank rebuilds what it must receive and
checks its own output with no extra communication. `#wrong` counts wrong elements over all ranks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from moebench.bench import report, timing
from moebench.bench.cli import add_launch_arguments, check_launch_arguments, launch_size, open_comm, size_arg, str_list

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXCHANGES = ("flat", "hierarchical", "native")
ALGO_CHOICES = (*EXCHANGES, "coordinated")
EXPERTS_PER_RANK = 8  # for --skew: split sizes come from routing over P * 8 experts
BUFFERS_PER_SIZE = 8  # send, recv, expected and hierarchical's staging copies, per rank


def add_arguments(p) -> None:
    p.add_argument("-b", "--minbytes", type=size_arg, default=size_arg("1K"), help="smallest S (bytes per rank)")
    p.add_argument("-e", "--maxbytes", type=size_arg, default=size_arg("16M"), help="largest S")
    p.add_argument("-f", "--stepfactor", type=float, default=2.0, help="size multiplication factor")
    p.add_argument("-n", "--iters", type=int, default=20, help="timed iterations")
    p.add_argument("-w", "--warmup_iters", type=int, default=5, help="warmup iterations")
    p.add_argument("-c", "--check", type=int, choices=(0, 1), default=1, help="check results")
    p.add_argument("-d", "--datatype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--algos", type=str_list, default=list(ALGO_CHOICES), help="comma list of " + ",".join(ALGO_CHOICES))
    add_launch_arguments(p)
    p.add_argument("--skew", default="uniform", help="uniform or zipf:S (split sizes from MoE routing)")
    p.add_argument("--hidden", type=int, default=1024, help="elements per row (a token), at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write {meta, rows} here")
    p.add_argument("--save", action="store_true", help="store JSON/CSV/Markdown under results/<machine>/")
    p.add_argument("--tag", default="", help="label in saved file names, e.g. p2")


@dataclass(frozen=True)
class Config:
    sizes: list[int]
    dtype: torch.dtype
    exchanges: list[str]
    coordinated: bool
    skew: float  # 0 = uniform, else the zipf exponent


def parse_skew(text: str) -> float:
    if text == "uniform":
        return 0.0
    if text.startswith("zipf:"):
        try:
            s = float(text[5:])
        except ValueError:
            s = -1.0
        if s > 0:
            return s
    raise ValueError(f"unknown --skew {text!r}; use uniform or zipf:S with S > 0")


def sizes_between(lo: int, hi: int, factor: float) -> list[int]:
    sizes, s = [], lo
    while s <= hi:
        sizes.append(s)
        s = max(int(s * factor), s + 1)
    return sizes


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def validate(args) -> Config:
    """Every check that needs no communication, identical on every rank: ValueError on bad input."""
    P = launch_size()
    if args.datatype not in DTYPES:
        raise ValueError(f"unknown dtype {args.datatype!r}; choose from {', '.join(DTYPES)}")
    unknown = [a for a in args.algos if a not in ALGO_CHOICES]
    if unknown or not args.algos:
        raise ValueError(f"unknown algorithm {', '.join(unknown) or '(none)'}; choose from {', '.join(ALGO_CHOICES)}")
    if args.minbytes < 1 or args.maxbytes < args.minbytes:
        raise ValueError(f"need 1 <= -b <= -e (got -b {args.minbytes} -e {args.maxbytes})")
    if args.stepfactor <= 1:
        raise ValueError(f"-f must be > 1 (got {args.stepfactor})")
    if args.iters < 1 or args.warmup_iters < 0:
        raise ValueError(f"need -n >= 1 and -w >= 0 (got -n {args.iters} -w {args.warmup_iters})")
    if args.hidden < 1:
        raise ValueError(f"--hidden must be >= 1 (got {args.hidden})")
    check_launch_arguments(args)
    need = BUFFERS_PER_SIZE * args.maxbytes * P
    if need > available_memory_bytes():
        raise ValueError(
            f"-e {args.maxbytes} B is too large for memory: about {need / 1e9:.1f} GB needed "
            f"({BUFFERS_PER_SIZE} buffers x {P} ranks), {available_memory_bytes() / 1e9:.1f} GB available"
        )
    exchanges = [a for a in args.algos if a in EXCHANGES]
    return Config(
        sizes=sizes_between(args.minbytes, args.maxbytes, args.stepfactor),
        dtype=DTYPES[args.datatype],
        exchanges=exchanges,
        coordinated="coordinated" in args.algos,
        skew=parse_skew(args.skew),
    )


# ------------------------------------------------------------------------------ workload


def row_shape(size_bytes: int, elem_bytes: int, P: int, hidden: int) -> tuple[int, int]:
    """(N, H): N rows of H elements per rank, N * H * elem_bytes <= S, at least one row per peer if S allows."""
    elems = max(size_bytes // elem_bytes, 1)
    H = max(1, min(hidden, elems // P))
    return elems // H, H


def split_matrix(N: int, P: int, skew: float, seed: int) -> np.ndarray:
    """[P, P]: row s = rank s's send_splits. Uniform: N rows spread evenly. zipf:S: each row's
    destination is the rank owning an expert drawn with probability ~ 1/rank^S over P*8 experts."""
    if skew == 0:
        base = np.full((P, P), N // P, dtype=np.int64)
        base[:, : N % P] += 1
        return base
    E = P * EXPERTS_PER_RANK
    popularity = 1.0 / np.arange(1, E + 1) ** skew
    per_rank = (popularity / popularity.sum()).reshape(P, EXPERTS_PER_RANK).sum(axis=1)
    return np.stack([np.random.default_rng(seed * 1000 + s).multinomial(N, per_rank) for s in range(P)])


def rank_rows(src: int, N: int, H: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rank src's send buffer [N, H]: deterministic in (seed, src)."""
    g = torch.Generator().manual_seed(seed * 100_003 + src)
    return torch.randn(N, H, generator=g).to(dtype)


def expected_recv(me: int, splits: np.ndarray, H: int, dtype, seed: int) -> torch.Tensor:
    """What rank `me` must receive: chunk `me` of every rank's buffer, rank 0's first."""
    chunks = []
    for src in range(splits.shape[0]):
        start = int(splits[src, :me].sum())
        chunks.append(rank_rows(src, int(splits[src].sum()), H, dtype, seed)[start : start + int(splits[src, me])])
    return torch.cat(chunks)


# ------------------------------------------------------------------------------ measuring


def count_wrong(got: torch.Tensor, want: torch.Tensor) -> int:
    if got.shape != want.shape:
        return max(got.numel(), want.numel(), 1)
    return int((got != want).sum())


def measure_case(comm, fn, check, iters: int, warmup: int) -> dict:
    """One checked, traffic-counted call, then the timed loop. Returns stats + busiest-rank traffic."""
    comm.traffic.reset()
    wrong = check(fn()) if check else 0
    traffic = comm.traffic.as_array()
    samples = timing.measure(fn, iters=iters, warmup=warmup, comm=comm, device=comm.device)
    busiest = comm.allreduce_max(traffic)
    total_wrong = sum(comm.allgather_object(wrong))
    return {
        **timing.stats(samples),
        "wire_intra_bytes": int(busiest[0]),
        "wire_inter_bytes": int(busiest[1]),
        "msgs_intra": int(busiest[2]),
        "msgs_inter": int(busiest[3]),
        "wrong": total_wrong,
    }


def bandwidth(logical_bytes: int, time_us: float, P: int) -> dict:
    algbw = logical_bytes / (time_us * 1e-6) / 1e9 if time_us > 0 else 0.0
    return {"bytes": logical_bytes, "algbw_gbps": algbw, "busbw_gbps": algbw * (P - 1) / P if P > 1 else algbw}


def exchange_rows(comm, cfg: Config, args, size: int) -> list[dict]:
    from moebench.collectives import ALGORITHMS

    P, me, dt = comm.world_size, comm.rank, cfg.dtype
    N, H = row_shape(size, torch.finfo(dt).bits // 8, P, args.hidden)
    splits = split_matrix(N, P, cfg.skew, args.seed)
    send = rank_rows(me, N, H, dt, args.seed).to(comm.device)
    want = expected_recv(me, splits, H, dt, args.seed).to(comm.device) if args.check else None
    row_bytes = H * send.element_size()
    # Logical bytes (nccl-tests): what the busiest rank sends or receives, its own chunk included.
    logical = int(max(splits.sum(axis=1).max(), splits.sum(axis=0).max())) * row_bytes
    rows = []
    host_copy = host_copy_row(comm, send, args, size)
    for name in cfg.exchanges:
        algo = ALGORITHMS[name]
        fn = lambda algo=algo: algo(comm, send, splits[me])
        check = lambda out: count_wrong(out[0], want)
        rows.append(
            {"algo": name, "size": size, **measure_case(comm, fn, args.check and check, args.iters, args.warmup_iters)}
        )
    for row in rows:
        row.update(bandwidth(logical, row["time_us"], P))
        row["host_copy_frac"] = row["algbw_gbps"] / host_copy["algbw_gbps"] if host_copy["algbw_gbps"] else 0.0
    native = next((r for r in rows if r["algo"] == "native"), None)
    for row in rows:
        row["vs_native"] = native["time_us"] / row["time_us"] if native else None
    return [host_copy, *rows]


def host_copy_row(comm, send: torch.Tensor, args, size: int) -> dict:
    """Every rank copies its send buffer at once: the host's memory-copy ceiling for this size.

    algbw = bytes copied / time (each byte read once and written once); busbw is the same number."""
    dst = torch.empty_like(send)
    row = {
        "algo": "host-copy",
        "size": size,
        **measure_case(comm, lambda: dst.copy_(send), None, args.iters, args.warmup_iters),
    }
    row.update(bandwidth(send.numel() * send.element_size(), row["time_us"], 2))
    row["busbw_gbps"] = row["algbw_gbps"]
    return row


def roundtrip_rows(comm, cfg: Config, args, size: int) -> list[dict]:
    """plain-rt:<inner> vs coordinated:<inner> on rows duplicated across each TP group."""
    from moebench.collectives import DISPATCH_COMBINE

    P, me, dt, L = comm.world_size, comm.rank, cfg.dtype, comm.tp.size
    N, H = row_shape(size, torch.finfo(dt).bits // 8, P, args.hidden)
    splits = split_matrix(N, P, cfg.skew, args.seed)
    leader = me // L * L  # the TP group's rows: its first rank's buffer, on every member
    send = rank_rows(leader, N, H, dt, args.seed).to(comm.device)
    send_splits = splits[leader]
    logical = int(splits.sum(axis=1).max()) * H * send.element_size()
    rows = []
    for inner in cfg.exchanges or ["flat"]:
        outs = {}
        for pair_name in ("plain", "coordinated"):
            pair = DISPATCH_COMBINE[pair_name]

            def roundtrip(pair=pair, inner=inner):
                recv, _, handle = pair.dispatch(comm, send, send_splits, inner=inner)
                return pair.combine(comm, recv, handle)

            def check(out, pair_name=pair_name, outs=outs):
                outs[pair_name] = out
                return count_wrong(out, send)

            comm.traffic.reset()
            pair.dispatch(comm, send, send_splits, inner=inner)
            dispatch_bytes = comm.allreduce_max(comm.traffic.as_array())
            label = "plain-rt" if pair_name == "plain" else "coordinated"
            row = {"algo": f"{label}:{inner}", "size": size}
            row.update(measure_case(comm, roundtrip, args.check and check, args.iters, args.warmup_iters))
            row["dispatch_wire_bytes"] = int(dispatch_bytes[0] + dispatch_bytes[1])
            row.update(bandwidth(logical, row["time_us"], P))
            rows.append(row)
        if args.check:  # coordinated's out must equal the plain round trip's, element for element
            rows[-1]["wrong"] += sum(comm.allgather_object(count_wrong(outs["coordinated"], outs["plain"])))
        rows[-1]["vs_plain_rt"] = rows[-2]["time_us"] / rows[-1]["time_us"]
        rows[-1]["dispatch_volume_frac"] = rows[-1]["dispatch_wire_bytes"] / max(rows[-2]["dispatch_wire_bytes"], 1)
    return rows


# ------------------------------------------------------------------------------ output

COLUMNS = [
    "size",
    "algo",
    "time_us",
    "p99_us",
    "algbw GB/s",
    "busbw GB/s",
    "wire intra B",
    "wire inter B",
    "#wrong",
    "vs native",
    "host-copy frac",
    "vs plain-rt",
    "dispatch vol",
]


def table_rows(rows: list[dict]) -> list[list]:
    def opt(row, key, fmt="{:.2f}"):
        return fmt.format(row[key]) if row.get(key) is not None else ""

    return [
        [
            r["size"],
            r["algo"],
            r["time_us"],
            r["p99_us"],
            r["algbw_gbps"],
            r["busbw_gbps"],
            r["wire_intra_bytes"],
            r["wire_inter_bytes"],
            r["wrong"],
            opt(r, "vs_native", "{:.2f}x"),
            opt(r, "host_copy_frac"),
            opt(r, "vs_plain_rt", "{:.2f}x"),
            opt(r, "dispatch_volume_frac"),
        ]
        for r in rows
    ]


CAPTION = (
    "size = S bytes each rank sends (own chunk included); time = slowest rank per iteration, median and p99; "
    "algbw = busiest rank's logical bytes / time; busbw = algbw x (P-1)/P; wire B = bytes the busiest rank sent "
    "to other ranks per call (intra / inter node); vs native = native time / time; host-copy frac = algbw / "
    "host-copy algbw (a memcpy of S bytes on every rank at once); vs plain-rt = plain round-trip time / "
    "coordinated time; dispatch vol = coordinated dispatch wire bytes / plain's. "
)


def run(args) -> int:
    cfg = validate(args)
    comm = open_comm(args.backend, args.ranks_per_node, args.tp)
    meta = {**report.base_meta("collectives", sys.argv), **report.comm_meta(comm)}
    meta.update(dtype=args.datatype, skew=args.skew, iters=args.iters, warmup=args.warmup_iters, tag=args.tag)
    if comm.rank == 0:
        report.print_header(meta)
    rows = []
    for size in cfg.sizes:
        rows += exchange_rows(comm, cfg, args, size)
        if cfg.coordinated:
            rows += roundtrip_rows(comm, cfg, args, size)
    if comm.rank == 0:
        caption = report.CONVENTIONS + ". " + CAPTION
        title = f"all-to-all, {args.datatype}, skew {args.skew}, P={meta['P']} G={meta['G']} L={meta['L']}"
        report.print_table(title, COLUMNS, table_rows(rows), caption)
        if args.json:
            report.write_json(args.json, meta, rows)
        if args.save:
            md = f"# {title}\n\n{report.header_markdown(meta)}\n" + report.rows_to_markdown(
                COLUMNS, table_rows(rows), caption
            )
            for path in report.save_run(meta, rows, md):
                report.console.print(f"wrote {path}")
    wrong = sum(r["wrong"] for r in rows)
    return 1 if wrong else 0
