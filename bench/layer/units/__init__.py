"""What one row of the MoE layer's dispatch is: the unit a dispatch/combine pair names (DispatchCombine.unit).

    unit = UNITS[pair.unit]
    permuted = unit.permute(payload_TW, routing, P, El, placement, rank)   # rows + splits, in destination order
    payload_MW, meta = unit.unpack(recv_MW, k)                            # after dispatch
    y_MH, stats, active = unit.run_experts(x_MH, meta, weights, cfg)      # the local experts
    y_TH = unit.unpermute(out_RH, permuted, T, dtype)                     # after combine

A new unit is one module with these five functions and header_bytes(k), and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moebench.bench.layer.units import assignment, token
from moebench.bench.layer.units.assignment import Permuted


@dataclass(frozen=True)
class Unit:
    """One row layout of the layer: see the module docstring for each function's shapes."""

    name: str
    header_bytes: Callable  # (k) -> bytes riding on each row after the payload
    permute: Callable
    unpack: Callable
    run_experts: Callable
    unpermute: Callable


def _unit(name: str, module) -> Unit:
    return Unit(name, module.header_bytes, module.permute, module.unpack, module.run_experts, module.unpermute)


UNITS: dict[str, Unit] = {
    "assignment": _unit("assignment", assignment),  # one row per kept (token, expert)
    "token": _unit("token", token),  # one row per token and destination rank (dedup)
}

__all__ = ["UNITS", "Permuted", "Unit"]
