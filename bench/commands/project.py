"""Project every algorithm to clusters nobody here has: the cost model on built-in or calibrated link profiles.

P = GPUs (ranks), G = GPUs per node, N = nodes, L = TP degree, S = bytes each rank sends (own chunk included).

    moebench project --profile h100-8gpu --nodes 1,2,4,8,16,32,64,128,256

For each profile, node count and S (uniform all-to-all): predicted time and busbw of every algorithm
of the ALGORITHMS registry, from its own schedule; the crossover where each overtakes the library's
all-to-all (native: NCCL's flat all-to-all on GPUs); the saving of every dispatch/combine pair over
the plain round trip for TP 2/4/8, in the model's rows (--model; fp8 and dedup change the bytes); dedup's
saving under each routing skew (--skew) at one size; and the model beside the field's numbers (DESIGN.md §5), saying
where they agree and not. A profile is a built-in name (`--list-profiles`) or a JSON file from
`moebench calibrate`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from moebench.bench import options, plots, report
from moebench.bench.layer.overlap import parse_overlap
from moebench.bench.layer.presets import get_preset
from moebench.bench.topo import field, projection
from moebench.bench.topo.costmodel import Profile
from moebench.bench.topo.profiles import BUILTIN, resolve_profile
from moebench.bench.topo.projection import size_label
from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE

PAIRS = [p for p in DISPATCH_COMBINE if p != "plain"]


def add_arguments(p) -> None:
    p.add_argument(
        "--profile", type=options.str_list, default=["h100-8gpu"], help="built-in name(s) or calibrated JSON"
    )
    p.add_argument("--nodes", type=options.int_list, default=[1, 2, 4, 8, 16, 32, 64, 128, 256], help="cluster sizes N")
    p.add_argument("--sizes", type=options.size_list, default=options.size_list("64K,256K,1M,4M,16M,64M,256M"),
                   help="S: bytes each rank sends")  # fmt: skip
    p.add_argument("--tp", type=options.int_list, default=[2, 4, 8], help="TP degrees for the pairs' saving")
    p.add_argument("--model", default="deepseek-v3", help="the preset whose rows the pairs move (H, E, k)")
    options.add_skew(p, "uniform,zipf:1.2,lognormal:1.0", gate=False)
    p.add_argument("--dedup-size", type=options.size_list, default=options.size_list("16M"),
                   help="S of the dedup-under-skew table")  # fmt: skip
    p.add_argument("--overlap", type=options.str_list, default=["chunks:2", "chunks:4", "dual"],
                   help="overlap modes to project (bench/layer/overlap; none: no overlap table)")  # fmt: skip
    p.add_argument("--overlap-compute", type=float, default=1.0,
                   help="the experts' time in the overlap table, a multiple of the sequential round trip")  # fmt: skip
    p.add_argument("--list-profiles", action="store_true", help="print the built-in profiles and their sources")
    p.add_argument("--no-field", action="store_true", help="skip the comparison with the field's numbers")
    p.add_argument("--plots", default=None, help="folder for PNG plots (default: beside --save files)")
    options.add_output(p)


def validate(args) -> list[Profile]:
    profiles = [resolve_profile(n) for n in args.profile]
    if not profiles:
        raise ValueError("--profile: name at least one profile")
    if not args.nodes or any(n < 1 for n in args.nodes):
        raise ValueError(f"--nodes must be positive integers (got {args.nodes})")
    if max(args.nodes) > 1024:
        raise ValueError(f"--nodes {max(args.nodes)}: at most 1024 nodes")
    if not args.sizes or min(args.sizes) < 1:
        raise ValueError("--sizes must be >= 1 byte")
    if any(t < 1 for t in args.tp):
        raise ValueError(f"--tp degrees must be >= 1 (got {args.tp})")
    args.preset = get_preset(args.model)
    options.check_skews(args)
    if len(args.dedup_size) != 1 or args.dedup_size[0] < 1:
        raise ValueError("--dedup-size: one size >= 1 byte")
    args.overlaps = [o for o in map(parse_overlap, args.overlap) if o.name != "none"]
    if not args.overlap_compute >= 0:
        raise ValueError(f"--overlap-compute must be >= 0 (got {args.overlap_compute})")
    return profiles


# ------------------------------------------------------------------------------ output

EXCHANGE_COLUMNS = [
    "nodes", "P (GPUs)", "size", *(f"{a} µs" for a in ALGORITHMS), *(f"{a} busbw" for a in ALGORITHMS), "best",
]  # fmt: skip


def exchange_table(rows):
    return [
        [
            r["nodes"],
            r["gpus"],
            size_label(r["size"]),
            *(r[f"{a}_us"] for a in ALGORITHMS),
            *(r[f"{a}_busbw_gbs"] for a in ALGORITHMS),
            r["best"],
        ]
        for r in rows
    ]


def pair_columns(tps) -> list[str]:
    return ["nodes", "P (GPUs)", "size", "inner", "plain-rt µs", "pair", *(f"TP{L} saving" for L in tps)]


def pair_table(rows, tps):
    """One line per (N, S, pair): its saving over plain at each TP degree."""

    def fmt(v):
        return f"{v:.2f}x" if v is not None else "-"

    return [
        [r["nodes"], r["gpus"], size_label(r["size"]), r["inner"], r["plain_rt_us"], p,
         *(fmt(r.get(f"{p}_tp{L}_saving")) for L in tps)]
        for r in rows
        for p in PAIRS
        if any(f"{p}_tp{L}_saving" in r for L in tps)
    ]  # fmt: skip


EXCHANGE_CAPTION = (
    "Predicted by the cost model from each algorithm's own schedule (not measured). size = S bytes each rank sends "
    "(own chunk included), uniform all-to-all; time incl. the count exchange; busbw = S / time x (P-1)/P in GB/s. "
    "flat = our pairwise exchange (P - 1 blocking steps); hierarchical = intra-node a2a, inter-node a2a, 2 layout "
    "copies; native = the library's flat all-to-all (NCCL on GPUs)."
)
PAIR_CAPTION = (
    "saving = plain dispatch+combine round-trip time / the pair's round-trip time (coordinated: each TP rank sends "
    "1/L of the duplicated tokens, then an all-gather inside the TP group over NVLink), over the fastest inner "
    "exchange (inner); - where a TP group would not fit in a node. size = S bytes of bf16 (token, expert) rows per "
    "rank; each pair sends them in its wire format (fp8: H + 4 H/128 B a row, combine bf16; dedup: one row per "
    "token and destination rank with an 8k-byte header, under uniform routing; - where P does not divide E)."
)
DEDUP_COLUMNS = ["skew", "nodes", "P (GPUs)", "inner", "ranks/token", "dedup factor", "dedup saving",
                 "fp8-dedup saving"]  # fmt: skip
DEDUP_CAPTION = (
    "dedup factor = mean distinct destination ranks of a token's k experts / k (4096 tokens drawn from the skew, "
    "experts contiguous over P ranks); saving = plain round trip / the pair's at the size named, TP 1; - where P "
    "does not divide E."
)


OVERLAP_CAPTION = (
    "Predicted from each overlap mode's own schedule (bench/layer/overlap), not measured: the plain round trip "
    "over native of S bytes of bf16 (token, expert) rows per rank (comm = sequential dispatch + combine), "
    "experts taking --overlap-compute x comm (compute), split evenly over the C chunks; <mode> comm = its C "
    "dispatches and combines after one count exchange; <mode> layer = the pipelined layer (one call on the "
    "link at a time in the forward's order, chunk c + 1 dispatched before chunk c's experts, its combine after "
    "them); eff = (comm + compute - layer) / min(comm, compute), as the moe benchmark measures it."
)


def overlap_columns(names: list[str]) -> list[str]:
    return ["nodes", "P (GPUs)", "size", "comm µs", "compute µs", "sequential µs",
            *(c for n in names for c in (f"{n} comm µs", f"{n} layer µs", f"{n} eff"))]  # fmt: skip


def overlap_table(rows, names: list[str]):
    def eff(v):
        return f"{v:.2f}" if v is not None else "-"

    return [[r["nodes"], r["gpus"], size_label(r["size"]), r["comm_us"], r["compute_us"], r["sequential_us"],
             *(v for n in names for v in (r[f"{n}_comm_us"], r[f"{n}_layer_us"], eff(r[f"{n}_efficiency"])))]
            for r in rows]  # fmt: skip


def overlap_names(rows) -> list[str]:
    return [k[: -len("_layer_us")] for k in rows[0] if k.endswith("_layer_us")] if rows else []


def dedup_table(rows, k: int):
    def fmt(v, f="{:.2f}x"):
        return f.format(v) if v is not None else "-"

    return [[r["skew"], r["nodes"], r["gpus"], r["inner"], fmt(r["dedup_factor"] and r["dedup_factor"] * k, "{:.2f}"),
             fmt(r["dedup_factor"], "{:.3f}"), fmt(r.get("dedup_saving")), fmt(r.get("fp8-dedup_saving"))]
            for r in rows]  # fmt: skip


def profile_text(profile: Profile) -> list[str]:
    lines = [f"profile {profile.name}: G={profile.ranks_per_node}, {profile.nics_per_node} NIC(s) per node"]
    for cls in ("intra", "intra_coll", "inter", "inter_coll", "copy", "self_coll"):
        link = getattr(profile, cls)
        if link is not None:
            lines.append(
                f"  {cls:10s} alpha {link.alpha_us:8.1f} µs  bw {link.bw_gbs:9.3f} GB/s  gap {link.gap_us:5.2f} µs"
            )
    if profile.self_coll is None:
        lines.append("  self_coll  (the library's copy of a rank's own chunk) priced as copy")
    lines.append(f"  source: {profile.source}")
    return lines


def plot_profile(name: str, rows, prows, tps, out_dir: Path, stem: str) -> list[Path]:
    """Time vs GPUs per algorithm, the best busbw vs size, and each pair's saving vs GPUs for one profile
    `name` (rows: its exchange rows; prows: its pair rows): PNG files `<stem>-*.png` in out_dir."""
    plt = plots._pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    sizes = sorted({r["size"] for r in rows})
    nodes = sorted({r["nodes"] for r in rows})
    pick = [s for s in sizes if s in (1 << 20, 16 << 20, 256 << 20)] or sizes[:: max(len(sizes) // 3, 1)]
    fig, axes = plt.subplots(1, len(pick), figsize=(5 * len(pick), 4), squeeze=False)
    for ax, S in zip(axes[0], pick):
        pts = sorted((r for r in rows if r["size"] == S), key=lambda r: r["nodes"])
        for algo in ALGORITHMS:
            ax.plot([r["gpus"] for r in pts], [r[f"{algo}_us"] for r in pts], marker="o", label=algo)
        ax.set(xscale="log", yscale="log", xlabel="GPUs", ylabel="predicted µs", title=f"{name}, S={size_label(S)}")
        ax.axvline(field.TUTEL_CROSSOVER_GPUS, color="grey", ls=":", lw=1, label="Tutel: ~256 GPUs")
        ax.legend(fontsize=8)
    paths.append(plots.save(fig, out_dir / f"{stem}-time-vs-gpus.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for N in [n for n in nodes if n in (1, 8, 64, 256)] or nodes[:4]:
        pts = sorted((r for r in rows if r["nodes"] == N), key=lambda r: r["size"])
        best = [max(r[f"{a}_busbw_gbs"] for a in ALGORITHMS) for r in pts]
        ax.plot([r["size"] for r in pts], best, marker="o", label=f"{N} nodes (best algorithm)")
    ax.axhspan(*field.NCCL_INTRA_BUSBW, color="tab:green", alpha=0.15, label="NCCL intra-node 340-370")
    ax.axhspan(*field.NCCL_NIC_GBS, color="tab:red", alpha=0.15, label="NCCL per NIC 46-49")
    ax.set(xscale="log", yscale="log", xlabel="S bytes per rank", ylabel="busbw GB/s", title=name)
    ax.legend(fontsize=8)
    paths.append(plots.save(fig, out_dir / f"{stem}-busbw.png"))

    for pair in PAIRS if prows else []:
        fig, ax = plt.subplots(figsize=(6, 4))
        S = 16 << 20 if any(r["size"] == 16 << 20 for r in prows) else prows[0]["size"]
        pts = sorted((r for r in prows if r["size"] == S), key=lambda r: r["nodes"])
        for L in tps:
            vals = [(r["gpus"], r[f"{pair}_tp{L}_saving"]) for r in pts if r.get(f"{pair}_tp{L}_saving")]
            if vals:
                ax.plot(*zip(*vals), marker="o", label=f"TP{L}")
        ax.set(xscale="log", xlabel="GPUs", ylabel=f"plain / {pair}", title=f"{pair} saving, S={size_label(S)}")
        ax.legend(fontsize=8)
        paths.append(plots.save(fig, out_dir / f"{stem}-{pair}.png"))
    return paths


def stored_profiles(rows: list[dict]) -> dict[str, tuple[list[dict], list[dict], list[int]]]:
    """A stored run's rows by profile: {name: (exchange rows, pair rows, TP degrees in the pair rows)}."""
    out: dict[str, tuple[list[dict], list[dict], list[int]]] = {}
    for r in rows:
        exchange, pairs, _ = out.setdefault(r["profile"], ([], [], []))
        if r["kind"] == "exchange":
            exchange.append(r)
        elif r["kind"] == "pairs":
            pairs.append(r)
    for name, (exchange, pairs, _) in out.items():
        tps = sorted({int(k.rsplit("_tp", 1)[1][: -len("_saving")]) for r in pairs for k in r if k.endswith("_saving")})
        out[name] = (exchange, pairs, tps)
    return out


def render(data: dict, path) -> None:
    """A stored projection: its exchange and pair tables per profile, and its comparison with the field."""
    rows = data["rows"]
    for name, (exchange, pairs, tps) in stored_profiles(rows).items():
        report.print_table(f"projected all-to-all, {name} ({path})", EXCHANGE_COLUMNS, exchange_table(exchange))
        if pairs:
            report.print_table(f"dispatch/combine pairs' saving, {name}", pair_columns(tps), pair_table(pairs, tps))
        drows = [r for r in rows if r["kind"] == "dedup" and r["profile"] == name]
        if drows:
            report.print_table(f"dedup under routing skew, {name}", DEDUP_COLUMNS, dedup_table(drows, drows[0]["k"]))
        orows = [r for r in rows if r["kind"] == "overlap" and r["profile"] == name]
        if orows:
            names = overlap_names(orows)
            report.print_table(f"overlap, {name}", overlap_columns(names), overlap_table(orows, names))
        frows = [r for r in rows if r["kind"] == "field" and r["profile"] == name]
        if frows:
            cols = ["item", "field", "model", "verdict"]
            report.print_table(f"model vs the field, {name}", cols, [[r[c] for c in cols] for r in frows])


def plot(rows: list[dict], base) -> list[Path]:
    """A stored projection's plots, written beside its JSON `base` as project-<profile>[-<tag>]-*.png."""
    base = Path(base)
    tag = base.stem[len("project-") :] if base.stem.startswith("project-") else ""
    paths = []
    for name, (exchange, pairs, tps) in stored_profiles(rows).items():
        if exchange:
            stem = f"project-{name}" + (f"-{tag}" if tag else "")
            paths += plot_profile(name, exchange, pairs, tps, base.parent, stem)
    return paths


def run(args) -> int:
    if args.list_profiles:
        for profile in BUILTIN.values():
            report.console.print("\n".join(profile_text(profile)) + "\n")
        return 0
    profiles = validate(args)
    meta = {**report.base_meta("project", sys.argv), "tag": args.tag, "nodes": args.nodes, "sizes": args.sizes}
    all_rows, md = [], []
    field_cols = ["item", "field", "model", "verdict"]
    for profile in profiles:
        rows = projection.projection_rows(profile, args.nodes, args.sizes)
        prows = projection.pair_rows(profile, args.nodes, args.sizes, args.tp, args.preset)
        drows = projection.dedup_rows(profile, args.nodes, args.dedup_size[0], args.skew, args.preset)
        orows = projection.overlap_rows(profile, args.nodes, args.sizes, args.preset, args.overlaps,
                                        args.overlap_compute)  # fmt: skip
        cross = projection.all_crossovers(rows)
        lines = projection.crossover_lines(profile, cross, args.nodes, builtin=profile.name in BUILTIN)
        in_field = not args.no_field and profile.name in field.FIELD_PROFILES
        frows = field.field_rows(profile, rows, cross) if in_field else []
        for r in frows:
            r.update(kind="field", profile=profile.name)
        for c in cross:
            c.update(kind="crossover", profile=profile.name)
        all_rows += rows + prows + drows + orows + cross + frows
        meta.setdefault("profiles", {})[profile.name] = profile.to_dict()
        tables = [
            (f"projected all-to-all, {profile.name}", EXCHANGE_COLUMNS, exchange_table(rows), EXCHANGE_CAPTION),
            (f"dispatch/combine pairs' saving, {profile.name}", pair_columns(args.tp), pair_table(prows, args.tp),
             PAIR_CAPTION),
            (f"dedup under routing skew, {args.preset.name}, S={size_label(args.dedup_size[0])}, {profile.name}",
             DEDUP_COLUMNS, dedup_table(drows, args.preset.k), DEDUP_CAPTION),
        ]  # fmt: skip
        if orows:
            names = overlap_names(orows)
            tables.append((f"overlap, {args.preset.name}, compute = {args.overlap_compute:g} x comm, {profile.name}",
                           overlap_columns(names), overlap_table(orows, names), OVERLAP_CAPTION))  # fmt: skip
        if frows:
            field_table = [[r[c] for c in field_cols] for r in frows]
            tables.append((f"model vs the field, {profile.name}", field_cols, field_table, field.FIELD_EXPLANATION))
        report.console.print("\n".join(profile_text(profile)))
        md.append(f"## {profile.name}\n\n```\n" + "\n".join(profile_text(profile)) + "\n```\n\n")
        for i, (title, columns, table, caption) in enumerate(tables):
            report.print_table(title, columns, table, caption)
            md.append(f"\n### {title}\n\n" + report.rows_to_markdown(columns, table, caption))
            if i == 0:
                report.console.print("\n".join(lines))
                md.append("\n" + "".join(f"- {line}\n" for line in lines))
        if args.save or args.plots:
            out_dir = Path(args.plots) if args.plots else report.RESULTS_DIR / meta["machine"]
            stem = f"project-{profile.name}" + (f"-{args.tag}" if args.tag else "")
            for path in plot_profile(profile.name, rows, prows, args.tp, out_dir, stem):
                report.console.print(f"wrote {path}")
                md.append(f"\n![{path.stem}]({path.name})\n")
    header = f"# projections ({', '.join(p.name for p in profiles)})\n\n" + report.header_markdown(meta)
    report.emit(args, meta, all_rows, header + "\n" + "".join(md))
    return 0
