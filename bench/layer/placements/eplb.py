# E = experts, R = redundant experts, P = ranks, N = nodes
"""eplb: R redundant experts, replicas packed onto ranks so every rank gets about the same load (module doc of
placements). Written from the idea (DeepSeek's EPLB, vLLM's and TensorRT-LLM's load balancers): replicate the
heaviest expert per replica, then greedy balanced packing."""

from __future__ import annotations

from moebench.bench.layer.placements.base import Placement, check_shape
from moebench.bench.layer.placements.packing import pack, replica_counts


def fit(load_NE, num_ranks: int, ranks_per_node: int, redundant: int, groups: int = 1) -> Placement:
    E = load_NE.shape[1]
    check_shape(E, num_ranks, ranks_per_node, redundant, per_node=False)
    load_E = load_NE.sum(0).tolist()
    counts = replica_counts(load_E, redundant, num_ranks)
    slots = pack(list(range(E)), load_E, counts, list(range(num_ranks)), (E + redundant) // num_ranks)
    return Placement("eplb", tuple(e for e, _ in slots), tuple(r for _, r in slots), num_ranks, ranks_per_node, E)
