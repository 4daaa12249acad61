"""The bandwidth conventions every all-to-all figure follows (nccl-tests; DESIGN.md §3). GB = 1e9 B, time in µs.

logical bytes = what the busiest rank sends or receives, its own chunk included;
algbw = logical bytes / time; busbw = algbw x (P - 1) / P (P = ranks).
"""

from __future__ import annotations


def algbw_gbs(logical_bytes: float, time_us: float) -> float:
    """logical bytes / time, GB/s (0 for a zero time)."""
    return logical_bytes / (time_us * 1e3) if time_us > 0 else 0.0


def busbw_gbs(logical_bytes: float, time_us: float, P: int) -> float:
    """nccl-tests bus bandwidth of an all-to-all: algbw x (P - 1) / P, GB/s (algbw itself at P = 1)."""
    return algbw_gbs(logical_bytes, time_us) * ((P - 1) / P if P > 1 else 1.0)
