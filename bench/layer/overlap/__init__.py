"""Communication-computation overlap modes of the MoE layer: a registry, like the routers and placements.

    overlap = parse_overlap("chunks:4")          # or "none", "dual"
    layer = LayerConfig(..., overlap=overlap)    # forward.run_layer runs overlap.forward
    phases = overlap.schedule(pair, inner, chunk_splits, out_bytes, back_bytes, topo, cap)

none: the sequential forward (bench/layer/forward.py). chunks:C: the batch cut into C chunks, each dispatched
and combined with non-blocking all-to-alls while another chunk's experts run (pipeline.py). dual: DeepSeek's
dual micro-batch overlap, two micro-batches, one computing while the other communicates; inside one MoE layer
its schedule is the two-chunk pipeline's (attention, where the two micro-batches differ most, is not part of
the layer here). A new mode is a module with forward + schedule and one line in OVERLAPS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moebench.bench.layer.overlap import pipeline


@dataclass(frozen=True)
class Overlap:
    """name (as given), forward(comm, x_TH, weights, cfg, mark, forced, info, first_id) -> y_TH, and
    schedule(pair, inner, chunk_splits [C][P, P], out_bytes, back_bytes, topo, cap) -> phases."""

    name: str
    forward: Callable
    schedule: Callable
    chunks: int = 1


def _none(value):
    if value is not None:
        raise ValueError("overlap none takes no value")
    return Overlap("none", None, _pair_schedule)


def _pair_schedule(pair, inner, chunk_splits, out_bytes, back_bytes, topo, cap=None):
    """The sequential layer: the pair's own round trip (one chunk)."""
    return pair.schedule(inner, chunk_splits[0], out_bytes, topo, back_bytes, cap)


def _chunks(value):
    if value is None or not value.isdigit() or int(value) < 1:
        raise ValueError(f"overlap chunks:C needs a whole number C >= 1 (got {value})")
    C = int(value)
    return Overlap(f"chunks:{C}", pipeline.forward_with(C), pipeline.schedule, C)


def _dual(value):
    if value is not None:
        raise ValueError("overlap dual takes no value (two micro-batches)")
    return Overlap("dual", pipeline.forward_with(2), pipeline.schedule, 2)


OVERLAPS: dict[str, Callable] = {"none": _none, "chunks": _chunks, "dual": _dual}


def parse_overlap(spec: str) -> Overlap:
    """'none', 'chunks:C' or 'dual' -> an Overlap; ValueError in one line otherwise."""
    name, colon, value = spec.strip().partition(":")
    if name not in OVERLAPS:
        raise ValueError(f"unknown overlap {spec!r}; use none, chunks:C or dual")
    return OVERLAPS[name](value if colon else None)


__all__ = ["OVERLAPS", "Overlap", "parse_overlap"]
