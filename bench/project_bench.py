"""Project every algorithm to clusters nobody here has: the cost model on built-in or calibrated link profiles.

P = GPUs (ranks), G = GPUs per node, N = nodes, L = TP degree, S = bytes each rank sends (own chunk included).

    python -m moebench project --profile h100-8gpu --nodes 1,2,4,8,16,32,64,128,256

For each profile, node count and S (uniform all-to-all, bench/costmodel.py schedules): predicted
time and busbw of flat (our pairwise exchange: P - 1 blocking steps), hierarchical and native
(the library's all-to-all, i.e. NCCL's flat all-to-all on GPUs); the crossover where hierarchical
overtakes each; the saving of coordinated dispatch+combine over the plain round trip for TP
2/4/8; and the model beside the field's numbers (DESIGN.md §5), saying where they agree and not.
A profile is a built-in name (`--list-profiles`) or a JSON file from `python -m moebench calibrate`.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from moebench.bench import costmodel, report
from moebench.bench.calibrate_bench import load_profile
from moebench.bench.cli import int_list, size_arg, str_list
from moebench.bench.costmodel import Link, Profile
from moebench.collectives.topology import Topology

ALGOS = ("flat", "hierarchical", "native")
INNERS = ("native", "hierarchical")  # the exchanges a coordinated dispatch would run over at scale

_H100_NET = (
    "Inter-node: one ConnectX-7 400 Gb/s NIC per GPU (8 per node, DGX/HGX H100 and H200), ~46-49 GB/s achieved per "
    "NIC by NCCL (DESIGN.md §5) -> 48 GB/s; ~30 µs small-message all-to-all latency (DESIGN.md §5) -> 30 µs per "
    "collective call. Intra-node: NVLink4 450 GB/s per direction per GPU, NCCL all-to-all busbw ~340-370 GB/s "
    "(DESIGN.md §5) -> 370 GB/s. Per further inter-node message in one call (LogGP gap): 0.25 µs, CALIBRATED to "
    "Tutel's report that its 2D hierarchical all-to-all beats the flat one only from ~256 GPUs (DESIGN.md §5 names "
    "it a calibration point): with 0.25 µs the crossover at 16 MiB per GPU lands at 256 GPUs; NCCL's half-bandwidth "
    "message size (~72 KB, i.e. 1.5 µs at 48 GB/s) would suggest more, DeepEP's low-latency scaling less. ASSUMED, "
    "not measured: 10 µs per intra-node call, 0.5 µs per further NVLink message; a send/recv step 10 µs intra, "
    "20 µs inter."
)
NCCL_STYLE_GAP_US = 1.5  # the alternative NIC gap shown in the sensitivity row


def _gpu_profile(name, nvlink_gbs, nic_gbs, copy_gbs, source) -> Profile:
    return Profile(
        name=name,
        intra=Link(alpha_us=10.0, bw_gbs=nvlink_gbs, gap_us=0.5),
        inter=Link(alpha_us=20.0, bw_gbs=nic_gbs, gap_us=0.25),
        copy=Link(alpha_us=5.0, bw_gbs=copy_gbs),
        intra_coll=Link(alpha_us=10.0, bw_gbs=nvlink_gbs, gap_us=0.5),
        inter_coll=Link(alpha_us=30.0, bw_gbs=nic_gbs, gap_us=0.25),
        ranks_per_node=8,
        nics_per_node=8,
        overlap=1.0,
        source=source,
    )


BUILTIN = {
    "h100-8gpu": _gpu_profile(
        "h100-8gpu",
        370.0,
        48.0,
        1400.0,
        "8x H100 SXM per node. "
        + _H100_NET
        + " Layout copies: HBM3 3.35 TB/s peak, a copy reads and writes each byte -> ~1.4 TB/s copied (assumed).",
    ),
    "h200-8gpu": _gpu_profile(
        "h200-8gpu",
        370.0,
        48.0,
        2150.0,
        "8x H200 per node (same NVLink4 / CX7 fabric as H100). "
        + _H100_NET
        + " Layout copies: ~4.3 TB/s device copy measured on a real H200 (DESIGN.md §5), read + write -> 2.15 TB/s "
        "copied.",
    ),
    "a100-8gpu": _gpu_profile(
        "a100-8gpu",
        245.0,
        23.0,
        850.0,
        "8x A100 SXM per node (DGX A100). NVLink3 300 GB/s per direction per GPU; 245 GB/s assumes NCCL reaches "
        "the same ~82% of peak as on H100 (370/450). One HDR 200 Gb/s NIC per GPU (25 GB/s peak) -> 23 GB/s "
        "assumed (the H100 ratio 48/50). Latencies and gaps as H100 (assumed). Copies: HBM2e 2.0 TB/s -> ~0.85 TB/s "
        "copied (assumed).",
    ),
}

# DESIGN.md §5 and the DeepEP README (V1 low-latency kernels, H800 + CX7 400 Gb/s, 128 tokens, H=7168, top-8).
DEEPEP_EP = (8, 16, 32, 64, 128, 256)
DEEPEP_DISPATCH_US = (77, 118, 155, 173, 192, 194)
DEEPEP_COMBINE_US = (114, 195, 273, 314, 369, 360)
DEEPEP_DISPATCH_BYTES = 128 * 8 * (7168 + 56 * 4)  # FP8 token + 56 fp32 scales, to each of 8 experts
DEEPEP_COMBINE_BYTES = 128 * 8 * 7168 * 2  # bf16
TUTEL_CROSSOVER_GPUS = 256
FIELD_PROFILES = ("h100-8gpu", "h200-8gpu")  # DESIGN.md §5's numbers are for this class of system
NCCL_INTRA_BUSBW = (340.0, 370.0)
NCCL_NIC_GBS = (46.0, 49.0)


def add_arguments(p) -> None:
    p.add_argument("--profile", type=str_list, default=["h100-8gpu"], help="built-in name(s) or calibrated JSON")
    p.add_argument("--nodes", type=int_list, default=[1, 2, 4, 8, 16, 32, 64, 128, 256], help="cluster sizes N")
    p.add_argument(
        "--sizes",
        type=str_list,
        default=["64K", "256K", "1M", "4M", "16M", "64M", "256M"],
        help="S: bytes each rank sends",
    )
    p.add_argument("--tp", type=int_list, default=[2, 4, 8], help="TP degrees for the coordinated saving")
    p.add_argument("--list-profiles", action="store_true", help="print the built-in profiles and their sources")
    p.add_argument("--no-field", action="store_true", help="skip the comparison with the field's numbers")
    p.add_argument("--plots", default=None, help="folder for PNG plots (default: beside --save files)")
    p.add_argument("--json", default=None, help="write {meta, rows} here")
    p.add_argument("--save", action="store_true", help="store JSON/CSV/Markdown (+ plots) under results/<machine>/")
    p.add_argument("--tag", default="", help="label in saved file names")


def resolve_profile(name: str) -> Profile:
    """A built-in profile by name, else a profile JSON / calibrate result file by path."""
    if name in BUILTIN:
        return BUILTIN[name]
    if Path(name).exists():
        return load_profile(name)
    raise ValueError(f"unknown profile {name!r}: use a built-in ({', '.join(BUILTIN)}) or a calibrated JSON file")


def validate(args) -> dict:
    profiles = [resolve_profile(n) for n in args.profile]
    if not profiles:
        raise ValueError("--profile: name at least one profile")
    if not args.nodes or any(n < 1 for n in args.nodes):
        raise ValueError(f"--nodes must be positive integers (got {args.nodes})")
    if max(args.nodes) > 1024:
        raise ValueError(f"--nodes {max(args.nodes)}: at most 1024 nodes")
    try:
        sizes = [size_arg(s) for s in args.sizes]
    except Exception:
        raise ValueError(f"--sizes: not a list of sizes: {','.join(args.sizes)}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError("--sizes must be >= 1 byte")
    if any(t < 1 for t in args.tp):
        raise ValueError(f"--tp degrees must be >= 1 (got {args.tp})")
    return {"profiles": profiles, "sizes": sizes}


# ------------------------------------------------------------------------------ model runs


def exchange_time(profile: Profile, algo: str, N: int, S: int, tp: int = 1) -> float:
    """Predicted µs of one uniform all-to-all (plan + forward) of S bytes per rank on N nodes."""
    G = profile.ranks_per_node
    topo = Topology(N * G, G, tp)
    return costmodel.predict(
        costmodel.exchange_schedule(algo, costmodel.uniform_splits(N * G, S), 1, topo), topo, profile
    )


def roundtrip_time(profile: Profile, pair: str, inner: str, N: int, S: int, tp: int) -> float:
    """Predicted µs of dispatch + combine of S bytes per rank over `inner` on N nodes with TP degree tp."""
    G = profile.ranks_per_node
    P = N * G
    topo = Topology(P, G, tp)
    splits = costmodel.uniform_splits(P, S)
    return costmodel.predict(costmodel.roundtrip_schedule(pair, inner, splits, 1, topo), topo, profile)


def projection_rows(profile: Profile, nodes: list[int], sizes: list[int]) -> list[dict]:
    """One row per (N, S): time and busbw of every algorithm, and which is fastest."""
    G = profile.ranks_per_node
    rows = []
    for N in nodes:
        P = N * G
        for S in sizes:
            row = {"kind": "exchange", "profile": profile.name, "nodes": N, "gpus": P, "size": S}
            for algo in ALGOS:
                t = exchange_time(profile, algo, N, S)
                row[f"{algo}_us"] = t
                row[f"{algo}_busbw_gbs"] = costmodel.busbw_gbs(S, t, P)
            row["best"] = min(ALGOS, key=lambda a: row[f"{a}_us"])
            rows.append(row)
    return rows


def coordinated_rows(profile: Profile, nodes: list[int], sizes: list[int], tps: list[int]) -> list[dict]:
    """One row per (N, S): plain round trip over the faster inner exchange, and plain / coordinated per TP degree."""
    G = profile.ranks_per_node
    rows = []
    for N in nodes:
        P = N * G
        for S in sizes:
            plain = {inner: roundtrip_time(profile, "plain", inner, N, S, 1) for inner in INNERS}
            inner = min(plain, key=plain.get)
            row = {"kind": "coordinated", "profile": profile.name, "nodes": N, "gpus": P, "size": S, "inner": inner}
            row["plain_rt_us"] = plain[inner]
            for L in tps:
                if L > G or P % L:
                    row[f"tp{L}_saving"] = None  # a TP group must fit in a node
                    continue
                coord = roundtrip_time(profile, "coordinated", inner, N, S, L)
                row[f"tp{L}_us"] = coord
                row[f"tp{L}_saving"] = plain[inner] / coord
            rows.append(row)
    return rows


def crossovers(rows: list[dict], rival: str) -> list[dict]:
    """Per size: the smallest node count from which hierarchical beats `rival` at every larger count listed."""
    out = []
    for S in sorted({r["size"] for r in rows}):
        pts = sorted((r for r in rows if r["size"] == S), key=lambda r: r["nodes"])
        wins = [r["hierarchical_us"] < r[f"{rival}_us"] for r in pts]
        start = None
        for i in range(len(pts)):
            if all(wins[i:]):
                start = pts[i]
                break
        out.append(
            {
                "size": S,
                "rival": rival,
                "from_nodes": start["nodes"] if start else None,
                "from_gpus": start["gpus"] if start else None,
                "wins_at": [r["nodes"] for r, w in zip(pts, wins) if w],
            }
        )
    return out


def crossover_lines(profile: Profile, cross: list[dict], nodes: list[int]) -> list[str]:
    names = {"native": "native (the library's flat all-to-all)", "flat": "flat (pairwise, P - 1 steps)"}
    unit = "GPUs" if profile.name in BUILTIN else "ranks"
    lines = []
    for rival in ("native", "flat"):
        for c in [c for c in cross if c["rival"] == rival]:
            if c["from_nodes"] is None:
                tail = f" (wins only at N = {c['wins_at']})" if c["wins_at"] else ""
                lines.append(
                    f"{profile.name} S={_size(c['size'])}: hierarchical never overtakes {names[rival]} up to "
                    f"{max(nodes)} nodes{tail}"
                )
            elif c["from_nodes"] == min(nodes):
                lines.append(
                    f"{profile.name} S={_size(c['size'])}: hierarchical beats {names[rival]} at every size listed "
                    f"(from {c['from_nodes']} node(s))"
                )
            else:
                lines.append(
                    f"{profile.name} S={_size(c['size'])}: CROSSOVER - hierarchical overtakes {names[rival]} from "
                    f"{c['from_nodes']} nodes ({c['from_gpus']} {unit}) on"
                )
    return lines


def _size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


# ------------------------------------------------------------------------------ field numbers


def gap_for_crossover(profile: Profile, S: int, gpus: int) -> float | None:
    """The NIC gap (µs per further message) that makes hierarchical and native tie at `gpus` GPUs for S bytes."""
    N = max(gpus // profile.ranks_per_node, 2)

    def diff(gap: float) -> float:
        trial = _with_inter_gap(profile, gap)
        return exchange_time(trial, "hierarchical", N, S) - exchange_time(trial, "native", N, S)

    lo, hi = 0.0, 50.0
    if diff(lo) < 0 or diff(hi) > 0:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if diff(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


NODE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _times(profile: Profile, N: int, S: int) -> dict:
    return {f"{a}_us": exchange_time(profile, a, N, S) for a in ("hierarchical", "native")}


def _with_inter_gap(profile: Profile, gap: float) -> Profile:
    inter_coll = profile.inter_coll or profile.inter
    return replace(profile, inter=replace(profile.inter, gap_us=gap), inter_coll=replace(inter_coll, gap_us=gap))


def field_rows(profile: Profile, rows: list[dict], cross: list[dict]) -> list[dict]:
    """The model beside DESIGN.md §5: each row names the number, the model's value, and a plain verdict."""
    G = profile.ranks_per_node
    out = []
    big = 1 << 28  # 256 MiB per rank: the bandwidth plateau
    t1 = exchange_time(profile, "native", 1, big)
    intra = costmodel.busbw_gbs(big, t1, G)
    lo, hi = NCCL_INTRA_BUSBW
    out.append(
        {
            "item": f"NCCL all-to-all busbw, {G} GPUs in one node",
            "field": f"{lo:.0f}-{hi:.0f} GB/s",
            "model": f"{intra:.0f} GB/s (native, S=256M)",
            "verdict": "agrees by construction: the profile's NVLink rate is set from this number"
            if lo * 0.95 <= intra <= hi * 1.05
            else "DISAGREES",
        }
    )
    for N in (2, 32):
        P = N * G
        t = exchange_time(profile, "native", N, big)
        per_nic = big * (P - G) / P / (t * 1e3)
        lo, hi = NCCL_NIC_GBS
        out.append(
            {
                "item": f"inter-node throughput per NIC, {N} nodes ({P} GPUs)",
                "field": f"{lo:.0f}-{hi:.0f} GB/s per NIC",
                "model": f"{per_nic:.1f} GB/s per NIC (busbw {costmodel.busbw_gbs(big, t, P):.0f} GB/s)",
                "verdict": "agrees (the NIC rate is the profile's input; the model adds only latency and gaps)"
                if lo * 0.9 <= per_nic <= hi * 1.05
                else "DISAGREES",
            }
        )
    for EP, disp_us, comb_us in zip(DEEPEP_EP, DEEPEP_DISPATCH_US, DEEPEP_COMBINE_US):
        if EP % G:
            continue
        N = EP // G
        d = exchange_time(profile, "native", N, DEEPEP_DISPATCH_BYTES)
        c = exchange_time(profile, "native", N, DEEPEP_COMBINE_BYTES)
        no_gap = _with_inter_gap(profile, 0.0)
        d0 = exchange_time(no_gap, "native", N, DEEPEP_DISPATCH_BYTES)
        c0 = exchange_time(no_gap, "native", N, DEEPEP_COMBINE_BYTES)
        ratio = d / disp_us
        verdict = (
            "agrees within 30%"
            if 0.7 <= ratio <= 1.3
            else ("model SLOWER" if ratio > 1 else "model FASTER") + f" by {max(ratio, 1 / ratio):.1f}x"
        )
        out.append(
            {
                "item": f"DeepEP low-latency dispatch / combine, EP{EP} (128 tok, H=7168, top-8)",
                "field": f"{disp_us} / {comb_us} µs",
                "model": f"{d:.0f} / {c:.0f} µs native; {d0:.0f} / {c0:.0f} µs with no per-message NIC gap",
                "verdict": verdict,
            }
        )
    ref = 16 << 20
    c = next((c for c in cross if c["rival"] == "native" and c["size"] == ref), None)
    if c is not None:
        at = f"{c['from_gpus']} GPUs" if c["from_gpus"] else "not within the nodes listed"
        gap = gap_for_crossover(profile, ref, TUTEL_CROSSOVER_GPUS)
        gap_text = f"; the NIC gap that puts it at 256 GPUs: {gap:.2f} µs/message" if gap is not None else ""
        agree = c["from_gpus"] is not None and TUTEL_CROSSOVER_GPUS / 2 <= c["from_gpus"] <= TUTEL_CROSSOVER_GPUS * 2
        out.append(
            {
                "item": "Tutel 2D hierarchical a2a vs flat: slower below ~256 GPUs",
                "field": f"crossover ~{TUTEL_CROSSOVER_GPUS} GPUs",
                "model": f"hierarchical overtakes native from {at} at S=16M{gap_text}",
                "verdict": "agrees by construction (the NIC gap is calibrated to it)" if agree else "DISAGREES",
            }
        )
        alt = _with_inter_gap(profile, NCCL_STYLE_GAP_US)
        alt_rows = [{"nodes": N, "gpus": N * G, "size": ref, **_times(alt, N, ref)} for N in NODE_LADDER]
        alt_cross = crossovers(alt_rows, "native")[0]
        out.append(
            {
                "item": f"sensitivity: the same crossover with a {NCCL_STYLE_GAP_US} µs NIC gap (NCCL half-bandwidth)",
                "field": f"crossover ~{TUTEL_CROSSOVER_GPUS} GPUs",
                "model": f"from {alt_cross['from_gpus']} GPUs at S=16M",
                "verdict": "DISAGREES: the gap alone moves the crossover; it is the least certain input",
            }
        )
    N = max(rows[-1]["nodes"], 2)
    P = N * G
    flat_msgs = P - 1
    hier_msgs = (G - 1) + (N - 1)
    out.append(
        {
            "item": f"DeepSpeed-MoE: hierarchical cuts messages per rank from O(p) to O(G + p/G), {P} GPUs",
            "field": "O(p) -> O(G + p/G)",
            "model": f"{flat_msgs} -> {hier_msgs} messages per rank per all-to-all",
            "verdict": "agrees by construction (the schedules are the algorithms')",
        }
    )
    return out


FIELD_EXPLANATION = (
    "Why it agrees or not: NCCL's intra-node busbw and per-NIC rate are inputs of the profile, so agreeing there "
    "only shows the schedules add little on top. Tutel's ~256-GPU crossover is also an input (it sets the NIC "
    "gap); the sensitivity row shows that this gap alone can move the crossover from 64 to 256 GPUs, so it is "
    "the least certain output. DeepEP is an independent check: from EP16 the model is 1.2-1.7x slower than "
    "DeepEP, and 8-18% slower with no per-message NIC gap - DeepEP's low-latency kernels write tokens from GPU "
    "threads straight into remote buffers (IBGDA), with no per-peer proxy work, which a library all-to-all pays. "
    "At EP8 DeepEP ran on H800 (NVLink ~160 GB/s) and its low-latency path still used RDMA, so the model's 370 "
    "GB/s NVLink makes it faster there. The model ignores fabric congestion and adaptive routing (which hurt flat "
    "all-to-alls at scale and favour hierarchical) and any overlap of the layout copies with communication."
)


# ------------------------------------------------------------------------------ output

EXCHANGE_COLUMNS = [
    "nodes",
    "P (GPUs)",
    "size",
    "flat µs",
    "hier µs",
    "native µs",
    "flat busbw",
    "hier busbw",
    "native busbw",
    "best",
]


def exchange_table(rows):
    return [
        [
            r["nodes"],
            r["gpus"],
            _size(r["size"]),
            r["flat_us"],
            r["hierarchical_us"],
            r["native_us"],
            r["flat_busbw_gbs"],
            r["hierarchical_busbw_gbs"],
            r["native_busbw_gbs"],
            r["best"],
        ]
        for r in rows
    ]


def coordinated_table(rows, tps):
    def fmt(v):
        return f"{v:.2f}x" if v is not None else "-"

    return [
        [
            r["nodes"],
            r["gpus"],
            _size(r["size"]),
            r["inner"],
            r["plain_rt_us"],
            *(fmt(r.get(f"tp{L}_saving")) for L in tps),
        ]
        for r in rows
    ]


EXCHANGE_CAPTION = (
    "Predicted by bench/costmodel.py (not measured). size = S bytes each rank sends (own chunk included), uniform "
    "all-to-all; time incl. the count exchange; busbw = S / time x (P-1)/P in GB/s. flat = our pairwise exchange "
    "(P - 1 blocking steps); hier = hierarchical (intra-node a2a, inter-node a2a, 2 layout copies); native = the "
    "library's flat all-to-all (NCCL on GPUs)."
)
COORD_CAPTION = (
    "saving = plain dispatch+combine round-trip time / coordinated round-trip time (each TP rank sends 1/L of the "
    "duplicated tokens, then an all-gather inside the TP group over NVLink), over the faster inner exchange (inner)."
)


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


def plot(profile: Profile, rows, crows, tps, out_dir: Path, stem: str) -> list[Path]:
    """Time vs nodes per algorithm, busbw vs size, and the coordinated saving vs nodes: PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    sizes = sorted({r["size"] for r in rows})
    nodes = sorted({r["nodes"] for r in rows})
    pick = [s for s in sizes if s in (1 << 20, 16 << 20, 256 << 20)] or sizes[:: max(len(sizes) // 3, 1)]
    fig, axes = plt.subplots(1, len(pick), figsize=(5 * len(pick), 4), squeeze=False)
    for ax, S in zip(axes[0], pick):
        pts = sorted((r for r in rows if r["size"] == S), key=lambda r: r["nodes"])
        for algo in ALGOS:
            ax.plot([r["gpus"] for r in pts], [r[f"{algo}_us"] for r in pts], marker="o", label=algo)
        ax.set(xscale="log", yscale="log", xlabel="GPUs", ylabel="predicted µs", title=f"{profile.name}, S={_size(S)}")
        ax.axvline(TUTEL_CROSSOVER_GPUS, color="grey", ls=":", lw=1, label="Tutel: ~256 GPUs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / f"{stem}-time-vs-gpus.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for N in [n for n in nodes if n in (1, 8, 64, 256)] or nodes[:4]:
        pts = sorted((r for r in rows if r["nodes"] == N), key=lambda r: r["size"])
        best = [max(r[f"{a}_busbw_gbs"] for a in ALGOS) for r in pts]
        ax.plot([r["size"] for r in pts], best, marker="o", label=f"{N} nodes (best algorithm)")
    ax.axhspan(*NCCL_INTRA_BUSBW, color="tab:green", alpha=0.15, label="NCCL intra-node 340-370")
    ax.axhspan(*NCCL_NIC_GBS, color="tab:red", alpha=0.15, label="NCCL per NIC 46-49")
    ax.set(xscale="log", yscale="log", xlabel="S bytes per rank", ylabel="busbw GB/s", title=f"{profile.name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / f"{stem}-busbw.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if crows:
        fig, ax = plt.subplots(figsize=(6, 4))
        S = 16 << 20 if any(r["size"] == 16 << 20 for r in crows) else crows[0]["size"]
        pts = sorted((r for r in crows if r["size"] == S), key=lambda r: r["nodes"])
        for L in tps:
            vals = [(r["gpus"], r.get(f"tp{L}_saving")) for r in pts if r.get(f"tp{L}_saving")]
            if vals:
                ax.plot(*zip(*vals), marker="o", label=f"TP{L}")
        ax.set(xscale="log", xlabel="GPUs", ylabel="plain / coordinated", title=f"coordinated saving, S={_size(S)}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / f"{stem}-coordinated.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def run(args) -> int:
    if args.list_profiles:
        for profile in BUILTIN.values():
            report.console.print("\n".join(profile_text(profile)) + "\n")
        return 0
    cfg = validate(args)
    meta = {**report.base_meta("project", sys.argv), "tag": args.tag, "nodes": args.nodes, "sizes": cfg["sizes"]}
    all_rows, md = [], []
    for profile in cfg["profiles"]:
        rows = projection_rows(profile, args.nodes, cfg["sizes"])
        crows = coordinated_rows(profile, args.nodes, cfg["sizes"], args.tp)
        cross = crossovers(rows, "native") + crossovers(rows, "flat")
        lines = crossover_lines(profile, cross, args.nodes)
        frows = [] if args.no_field or profile.name not in FIELD_PROFILES else field_rows(profile, rows, cross)
        for r in frows:
            r.update(kind="field", profile=profile.name)
        for c in cross:
            c.update(kind="crossover", profile=profile.name)
        all_rows += rows + crows + cross + frows
        meta.setdefault("profiles", {})[profile.name] = profile.to_dict()
        report.console.print("\n".join(profile_text(profile)))
        title = f"projected all-to-all, {profile.name}"
        report.print_table(title, EXCHANGE_COLUMNS, exchange_table(rows), EXCHANGE_CAPTION)
        report.console.print("\n".join(lines))
        coord_cols = ["nodes", "P (GPUs)", "size", "inner", "plain-rt µs", *(f"TP{L} saving" for L in args.tp)]
        report.print_table(
            f"coordinated saving, {profile.name}", coord_cols, coordinated_table(crows, args.tp), COORD_CAPTION
        )
        field_cols = ["item", "field", "model", "verdict"]
        field_table = [[r[c] for c in field_cols] for r in frows]
        if frows:
            report.print_table(f"model vs the field, {profile.name}", field_cols, field_table, FIELD_EXPLANATION)
        md += [
            f"## {profile.name}\n\n```\n" + "\n".join(profile_text(profile)) + "\n```\n\n",
            report.rows_to_markdown(EXCHANGE_COLUMNS, exchange_table(rows), EXCHANGE_CAPTION),
            "\n" + "".join(f"- {line}\n" for line in lines) + "\n",
            report.rows_to_markdown(coord_cols, coordinated_table(crows, args.tp), COORD_CAPTION),
        ]
        if frows:
            md.append("\n### Model vs the field (DESIGN.md §5)\n\n")
            md.append(report.rows_to_markdown(field_cols, field_table, FIELD_EXPLANATION))
        if args.save or args.plots:
            out_dir = Path(args.plots) if args.plots else report.RESULTS_DIR / meta["machine"]
            stem = f"project-{profile.name}" + (f"-{args.tag}" if args.tag else "")
            for path in plot(profile, rows, crows, args.tp, out_dir, stem):
                report.console.print(f"wrote {path}")
                md.append(f"\n![{path.stem}]({path.name})\n")
    if args.json:
        report.write_json(args.json, meta, all_rows)
    if args.save:
        header = f"# projections ({', '.join(p.name for p in cfg['profiles'])})\n\n" + report.header_markdown(meta)
        for path in report.save_run(meta, all_rows, header + "\n" + "".join(md)):
            report.console.print(f"wrote {path}")
    return 0
