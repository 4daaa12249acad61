# E = experts, R = redundant experts, S = E + R slots, P = ranks, G = ranks per node, A = assignments
"""The Placement every placement module returns, and the shape check they share (see placements/__init__)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class Placement:
    """expert_S: the expert of each slot; rank_S: the rank holding it (slots of a rank are contiguous, in rank
    order); num_ranks P, ranks_per_node G, num_experts E."""

    name: str
    expert_S: tuple[int, ...]
    rank_S: tuple[int, ...]
    num_ranks: int
    ranks_per_node: int
    num_experts: int

    @property
    def redundant(self) -> int:
        return len(self.expert_S) - self.num_experts

    @cached_property
    def slots_E(self) -> list[list[int]]:
        """The slots (replicas) of each expert."""
        slots = [[] for _ in range(self.num_experts)]
        for s, e in enumerate(self.expert_S):
            slots[e].append(s)
        return slots

    @cached_property
    def experts_P(self) -> list[list[int]]:
        """The experts each rank holds, in slot order (its local expert ids 0.. index this list)."""
        held = [[] for _ in range(self.num_ranks)]
        for e, r in zip(self.expert_S, self.rank_S):
            held[r].append(e)
        return held

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def dispatch(self, expert_A: torch.Tensor, source_rank_A: torch.Tensor) -> torch.Tensor:
        """int64 [A]: the slot each assignment goes to; expert_A and source_rank_A int64 [A]. The destination
        rank is rank_S[slot]. Each source rank decides alone (as a rank of the layer does, knowing only its own
        assignments): an assignment of a replicated expert goes to the replica this source has sent the fewest
        assignments so far in the batch, ties to a replica on the source's node, then to the lower slot. With
        every count starting at 0 that is a round robin over the replicas in (other node, slot) order: the
        i-th assignment a source sends to expert e goes to its (i mod replicas)-th replica, all vectorised."""
        if expert_A.numel() == 0:
            return expert_A.clone()
        table_NEM, count_E = self._replica_table
        key_A = source_rank_A * self.num_experts + expert_A
        order_A = torch.sort(key_A, stable=True).indices
        _, run_lengths = torch.unique_consecutive(key_A[order_A], return_counts=True)
        run_starts = torch.cumsum(run_lengths, 0) - run_lengths
        occurrence_A = torch.empty_like(expert_A)
        occurrence_A[order_A] = torch.arange(expert_A.numel()) - torch.repeat_interleave(run_starts, run_lengths)
        node_A = source_rank_A // self.ranks_per_node
        return table_NEM[node_A, expert_A, occurrence_A % count_E[expert_A]]

    @cached_property
    def _replica_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(table_NEM int64 [N, E, M]: expert e's slots in the order a source on node n prefers them (its own
        node first, then by slot), M = the most replicas; count_E int64 [E]: replicas per expert)."""
        N, M = self.num_ranks // self.ranks_per_node, max(len(s) for s in self.slots_E)
        table_NEM = torch.zeros(N, self.num_experts, M, dtype=torch.int64)
        for n in range(N):
            for e, slots in enumerate(self.slots_E):
                ranked = sorted(slots, key=lambda s: (self.node_of(self.rank_S[s]) != n, s))
                table_NEM[n, e, : len(ranked)] = torch.tensor(ranked)
        return table_NEM, torch.tensor([len(s) for s in self.slots_E], dtype=torch.int64)

    @cached_property
    def local_index_S(self) -> list[int]:
        """Each slot's index among its rank's slots (the local expert id the rank's kernel sees)."""
        seen = [0] * self.num_ranks
        out = []
        for r in self.rank_S:
            out.append(seen[r])
            seen[r] += 1
        return out

    @cached_property
    def rank_of_slot_S(self) -> torch.Tensor:
        """int64 [S]: rank_S as a tensor (built once, not per dispatch)."""
        return torch.tensor(self.rank_S, dtype=torch.int64)

    @cached_property
    def local_of_slot_S(self) -> torch.Tensor:
        """int64 [S]: local_index_S as a tensor."""
        return torch.tensor(self.local_index_S, dtype=torch.int64)

    def rank_of_slots(self, slot_A: torch.Tensor) -> torch.Tensor:
        return self.rank_of_slot_S[slot_A]

    def extra_slots_per_rank(self) -> int:
        """Slots a rank holds beyond E / P (the most over ranks): the replicas' weight memory."""
        return max(len(h) for h in self.experts_P) - self.num_experts // self.num_ranks


def check_shape(num_experts: int, num_ranks: int, ranks_per_node: int, redundant: int, per_node: bool) -> None:
    """ValueError (one line) unless the slots divide evenly: (E + R) % P == 0, P % G == 0, R >= 0, and for a
    per-node placement E % N == 0 and R % N == 0; and unless the replicas fit one per rank (per node: its G)."""
    E, P, G, R = num_experts, num_ranks, ranks_per_node, redundant
    if P < 1 or G < 1 or P % G:
        raise ValueError(f"ranks {P} must be a positive multiple of ranks per node {G}")
    if R < 0 or (E + R) % P:
        raise ValueError(f"E + R = {E} + {R} slots must be a multiple of P = {P} (and R >= 0)")
    N = P // G
    if per_node and (E % N or R % N):
        raise ValueError(f"hierarchical needs E = {E} and R = {R} to be multiples of the {N} nodes")
    most = E * (G - 1) if per_node else E * (P - 1)  # an expert has at most one replica per rank it may use
    if most < R:
        where = f"{G} ranks per node" if per_node else f"{P} ranks"
        raise ValueError(f"R = {R} redundant experts do not fit {where}: at most {most} (one replica per rank)")
