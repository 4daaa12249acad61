# E = experts, R = redundant experts (replicas beyond one per expert), S = E + R slots, P = ranks,
# G = ranks per node, N = P / G nodes, A = assignments
"""Expert placement: which ranks hold which experts' weights (the PLACEMENTS registry, one module each).

    from moebench.bench.layer.placements import PLACEMENTS, fit_placement

    placement = fit_placement("eplb", load_NE, num_ranks=4, ranks_per_node=2, redundant=32)
    dest_A = placement.dispatch(expert_A, source_rank_A)   # the rank each assignment is sent to

A placement is fit on a load: load_NE [N, E], the assignments each node's tokens sent to each expert over a
window of batches (contiguous ignores it). It has S = E + R slots, S / P per rank; an expert held by several
slots is replicated, and its weights cost memory on each rank that holds it.

Dispatch: each source rank decides alone, as a rank of the layer does: an assignment of a replicated expert
goes to the replica this rank has sent the fewest of its assignments so far in the batch, ties to a replica
on the source's node, then to the lower slot. An expert with one replica always goes to it.

Placements:
- contiguous: today's layout: rank r holds experts r*E/P .. (r+1)*E/P - 1; takes no redundant experts;
- eplb: R redundant experts: replicate the expert with the most load per replica, R times; then pack the
  E + R replicas (each carrying its expert's load / replicas) onto ranks, heaviest first, each to the
  least-loaded rank with a free slot that does not hold that expert yet (greedy balanced packing);
- hierarchical: first pack the model's expert groups onto nodes (each a contiguous block of E / groups experts;
  heaviest first to the least-loaded node, groups / N per node; single experts where the groups do not divide
  among the nodes), then inside each node replicate (R / N per node) and pack onto its G ranks as eplb does:
  an expert's replicas stay inside its group's node. Under a group-limited gate (topk-group) a token then
  reaches at most its TG groups' nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from moebench.bench.layer.placements.base import Placement, check_shape


@dataclass(frozen=True)
class PlacementKind:
    """One placement of the registry: fit(load_NE, P, G, R, groups) -> Placement; replicates: takes R > 0;
    per_node: keeps each expert's replicas inside one node (its shape rules are per node)."""

    fit: Callable
    replicates: bool
    per_node: bool = False


def _registry() -> dict[str, PlacementKind]:
    from moebench.bench.layer.placements import contiguous, eplb, hierarchical

    return {
        "contiguous": PlacementKind(contiguous.fit, replicates=False),
        "eplb": PlacementKind(eplb.fit, replicates=True),
        "hierarchical": PlacementKind(hierarchical.fit, replicates=True, per_node=True),
    }


PLACEMENTS: dict[str, PlacementKind] = _registry()


def redundant_for(name: str, redundant: int) -> int:
    """R for a placement that replicates, 0 for one that does not."""
    return redundant if PLACEMENTS[name].replicates else 0


def check_placements(names, num_experts: int, num_ranks: int, ranks_per_node: int, redundant: int) -> None:
    """check_shape for every replicating placement of `names` (ValueError, one line, before any work)."""
    for name in names:
        kind = PLACEMENTS[name]
        if kind.replicates:
            check_shape(num_experts, num_ranks, ranks_per_node, redundant, per_node=kind.per_node)


def fit_placement(name: str, load_NE: torch.Tensor, num_ranks: int, ranks_per_node: int, redundant: int = 0,
                  groups: int = 1):  # fmt: skip
    """PLACEMENTS[name] fit on load_NE [N, E] (N = num_ranks / ranks_per_node); `groups`: the model's expert
    groups (contiguous blocks; hierarchical keeps each group on one node where they divide evenly). ValueError
    on bad input."""
    if name not in PLACEMENTS:
        raise ValueError(f"unknown placement {name!r}; choose from {', '.join(PLACEMENTS)}")
    kind = PLACEMENTS[name]
    if redundant and not kind.replicates:
        raise ValueError(f"placement {name} holds no redundant experts (got R = {redundant})")
    N = num_ranks // max(1, ranks_per_node)
    if load_NE.dim() != 2 or load_NE.shape[0] != N:
        raise ValueError(f"load must be [nodes, experts] = [{N}, E], got {tuple(load_NE.shape)}")
    return kind.fit(load_NE.double(), num_ranks, ranks_per_node, redundant, groups)


__all__ = [
    "PLACEMENTS", "Placement", "PlacementKind", "check_placements", "check_shape", "fit_placement", "redundant_for",
]  # fmt: skip
