# E = experts, P = ranks
"""contiguous: rank r holds experts r*E/P .. (r+1)*E/P - 1, one replica each (the layer's layout today)."""

from __future__ import annotations

from moebench.bench.layer.placements.base import Placement, check_shape


def fit(load_NE, num_ranks: int, ranks_per_node: int, redundant: int = 0, groups: int = 1) -> Placement:
    E = load_NE.shape[1]
    check_shape(E, num_ranks, ranks_per_node, redundant, per_node=False)
    per_rank = E // num_ranks
    return Placement("contiguous", tuple(range(E)), tuple(e // per_rank for e in range(E)), num_ranks,
                     ranks_per_node, E)  # fmt: skip
