# E = experts, R = redundant experts, P = ranks, G = ranks per node, N = P / G nodes
"""hierarchical: the model's expert groups packed onto nodes first (heaviest first to the least-loaded node), then
inside each node R / N replicas and balanced packing onto its G ranks (module doc of placements). An expert's
replicas never leave its group's node."""

from __future__ import annotations

from moebench.bench.layer.placements.base import Placement, check_shape
from moebench.bench.layer.placements.packing import pack, replica_counts


def node_of_experts(load_E: list[float], num_nodes: int, groups: int) -> list[int]:
    """The node of each expert: the model's groups (contiguous blocks of E / groups) packed onto nodes, groups / N
    each, heaviest group first to the least-loaded node; single experts where the groups do not divide evenly."""
    E = len(load_E)
    if groups < num_nodes or groups % num_nodes or E % groups:
        groups = E
    width = E // groups
    group_load = [sum(load_E[g * width : (g + 1) * width]) for g in range(groups)]
    placed = pack(list(range(groups)), group_load, [1] * groups, list(range(num_nodes)), groups // num_nodes)
    node_of_group = dict(placed)
    return [node_of_group[e // width] for e in range(E)]


def fit(load_NE, num_ranks: int, ranks_per_node: int, redundant: int, groups: int = 1) -> Placement:
    E, G = load_NE.shape[1], ranks_per_node
    check_shape(E, num_ranks, G, redundant, per_node=True)
    N = num_ranks // G
    load_E = load_NE.sum(0).tolist()
    node_experts = list(enumerate(node_of_experts(load_E, N, groups)))
    slots = []
    for node in range(N):
        experts = [e for e, n in node_experts if n == node]
        counts_local = replica_counts([load_E[e] for e in experts], redundant // N, G)
        counts = dict(zip(experts, counts_local))
        ranks = list(range(node * G, node * G + G))
        slots += pack(experts, load_E, [counts.get(e, 0) for e in range(E)], ranks, (E + redundant) // num_ranks)
    return Placement("hierarchical", tuple(e for e, _ in slots), tuple(r for _, r in slots), num_ranks, G, E)
