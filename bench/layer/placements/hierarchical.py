# E = experts, R = redundant experts, P = ranks, G = ranks per node, N = P / G nodes
"""hierarchical: experts packed onto nodes first (E / N per node, heaviest first to the least-loaded node), then
inside each node R / N replicas and balanced packing onto its G ranks (module doc of placements). An expert's
replicas never leave its node. Each expert is its own group (the presets define no expert groups)."""

from __future__ import annotations

from moebench.bench.layer.placements.base import Placement, check_shape
from moebench.bench.layer.placements.packing import pack, replica_counts


def fit(load_NE, num_ranks: int, ranks_per_node: int, redundant: int) -> Placement:
    E, G = load_NE.shape[1], ranks_per_node
    check_shape(E, num_ranks, G, redundant, per_node=True)
    N = num_ranks // G
    load_E = load_NE.sum(0).tolist()
    node_experts = pack(list(range(E)), load_E, [1] * E, list(range(N)), E // N)
    slots = []
    for node in range(N):
        experts = [e for e, n in node_experts if n == node]
        counts_local = replica_counts([load_E[e] for e in experts], redundant // N, G)
        counts = dict(zip(experts, counts_local))
        ranks = list(range(node * G, node * G + G))
        slots += pack(experts, load_E, [counts.get(e, 0) for e in range(E)], ranks, (E + redundant) // num_ranks)
    return Placement("hierarchical", tuple(e for e, _ in slots), tuple(r for _, r in slots), num_ranks, G, E)
