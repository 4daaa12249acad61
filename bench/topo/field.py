"""The model beside the field's numbers (DESIGN.md §5): each comparison names the number, the model's value, and a
plain verdict. G = GPUs per node, N = nodes, P = GPUs, S = bytes each rank sends."""

from __future__ import annotations

from dataclasses import replace

from moebench.bench.topo.costmodel import Profile
from moebench.bench.topo.projection import crossovers, exchange_time
from moebench.bench.units import busbw_gbs

NCCL_STYLE_GAP_US = 1.5  # the alternative NIC gap shown in the sensitivity row

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
    intra = busbw_gbs(big, t1, G)
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
                "model": f"{per_nic:.1f} GB/s per NIC (busbw {busbw_gbs(big, t, P):.0f} GB/s)",
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
    c = next((c for c in cross if (c["algo"], c["rival"], c["size"]) == ("hierarchical", "native", ref)), None)
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
        alt_cross = crossovers(alt_rows, "hierarchical", "native")[0]
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
