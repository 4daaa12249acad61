"""Link profiles: the built-in GPU clusters (with where each number comes from) and calibrated ones from JSON."""

from __future__ import annotations

import json
from pathlib import Path

from moebench.bench.topo.costmodel import Link, Profile

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


def load_profile(path: str) -> Profile:
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
        return Profile.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"--profile {path}: {exc}") from None


def resolve_profile(name: str) -> Profile:
    """A built-in profile by name, else a profile JSON / calibrate result file by path."""
    if name in BUILTIN:
        return BUILTIN[name]
    if Path(name).exists():
        return load_profile(name)
    raise ValueError(f"unknown profile {name!r}: use a built-in ({', '.join(BUILTIN)}) or a calibrated JSON file")
