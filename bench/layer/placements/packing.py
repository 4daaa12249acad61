# E = experts, R = redundant experts, P = ranks
"""The two steps eplb and hierarchical share: how many replicas each expert gets, and greedy balanced packing."""

from __future__ import annotations


def replica_counts(load_E: list[float], redundant: int, max_replicas: int) -> list[int]:
    """One replica per expert, then R more, each to the expert with the most load per replica (ties: lower id)
    among those with fewer than max_replicas (the ranks they may go to: two replicas on one rank are useless)."""
    counts = [1] * len(load_E)
    for _ in range(redundant):
        open_experts = [i for i in range(len(load_E)) if counts[i] < max_replicas]
        if not open_experts:
            raise ValueError(f"{redundant} redundant experts exceed {max_replicas} replicas of each of {len(load_E)}")
        e = max(open_experts, key=lambda i: (load_E[i] / counts[i], -i))
        counts[e] += 1
    return counts


def pack(experts: list[int], load_E: list[float], counts: list[int], ranks: list[int], slots_per_rank: int):
    """Greedy balanced packing of the replicas of `experts` (expert e: counts[e] replicas of load_E[e] / counts[e]
    each) onto `ranks`, slots_per_rank each: heaviest replica first, to the least-loaded rank with a free slot
    that does not hold that expert yet (ties: lower rank); a rank that holds it is used only when no other has
    room. Returns [(expert, rank)], ranks' slots together, in rank order."""
    replicas = sorted(
        ((load_E[e] / counts[e], e) for e in experts for _ in range(counts[e])), key=lambda t: (-t[0], t[1])
    )
    load = dict.fromkeys(ranks, 0.0)
    held = {r: [] for r in ranks}
    for share, e in replicas:
        free = [r for r in ranks if len(held[r]) < slots_per_rank]
        fresh = [r for r in free if e not in held[r]] or free
        r = min(fresh, key=lambda r: (load[r], r))
        held[r].append(e)
        load[r] += share
    return [(e, r) for r in ranks for e in sorted(held[r])]
