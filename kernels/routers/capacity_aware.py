# T = tokens, E = experts, k = experts per token, A = T * k assignments
"""capacity-aware: no assignment dropped while any expert the token could still use has room.

Tokens are served in order (the topk gate's position policy). A token keeps each gate choice whose expert has
room; each overflowing slot takes the token's next-best expert by logit that has room and that the token does
not hold (rerouted). When the only room left is in experts the token already holds (the last tokens of an
exactly full batch), an earlier token t' with an expert x the token lacks moves from x to an expert y with room
that t' lacks, and the token takes x (both count as rerouted). Only when no such move exists is the slot
dropped; it keeps its gate choice, a full expert that no later move empties, so its queue position is past
capacity and the Routing (position policy) drops it. With capacity factor >= 1 the experts hold all T * k
assignments, and a drop needs every spare place to be unusable by every earlier token too.
Weights: the softmax over the token's final experts' logits. Without a capacity factor this is topk.
"""

from __future__ import annotations

import torch

from moebench.kernels.routers import topk
from moebench.kernels.routers.common import routed, weights_from_logits
from moebench.kernels.routing import capacity_for


class _Ledger:
    """Who holds which expert so far: ids[t][j], load[e], holders[e] = [(t, j)], and experts with a drop."""

    def __init__(self, num_experts: int, capacity: int):
        self.capacity = capacity
        self.load = [0] * num_experts
        self.holders = [[] for _ in range(num_experts)]
        self.ids: list[list[int]] = []
        self.moved: list[list[bool]] = []
        self.has_drop = [False] * num_experts

    def room(self, e: int) -> bool:
        return self.load[e] < self.capacity

    def take(self, t: int, j: int, e: int) -> None:
        self.load[e] += 1
        self.holders[e].append((t, j))
        self.ids[t][j] = e

    def swap_in(self, t: int, j: int, chosen: list[int]) -> bool:
        """Give slot j of token t an expert x it lacks (nor holds for another slot: its other gate choices stay
        reserved) by moving an earlier holder of x to a spare y; True if done."""
        mine = set(self.ids[t]) | {e for slot, e in enumerate(chosen) if slot != j}
        spare = [y for y in range(len(self.load)) if self.room(y)]
        if not spare:
            return False
        for x in range(len(self.load)):
            if x in mine or self.has_drop[x]:  # never empty an expert whose queue holds a drop
                continue
            for index, (t2, j2) in enumerate(self.holders[x]):
                theirs = set(self.ids[t2])
                y = next((y for y in spare if y not in theirs), None)
                if y is None:
                    continue
                del self.holders[x][index]
                self.load[x] -= 1
                self.take(t2, j2, y)
                self.moved[t2][j2] = True
                self.take(t, j, x)
                self.moved[t][j] = x != chosen[j]
                return True
        return False


def route(inp, param=None):
    T, E, k = inp.num_tokens, inp.num_experts, inp.k
    capacity = capacity_for(T, k, E, inp.capacity_factor)
    if capacity is None:
        return topk.route(inp)
    preference_TE = inp.logits_TE.float().argsort(dim=-1, descending=True, stable=True).tolist()
    book = _Ledger(E, capacity)
    for t, prefs in enumerate(preference_TE):
        chosen = prefs[:k]
        book.ids.append([-1] * k)
        book.moved.append([False] * k)
        overflow = []
        for j, e in enumerate(chosen):
            if book.room(e):
                book.take(t, j, e)
            else:
                overflow.append(j)
        for j in overflow:
            held = set(chosen) | set(book.ids[t])
            spare = next((e for e in prefs[k:] if e not in held and book.room(e)), None)
            if spare is not None:
                book.take(t, j, spare)
                book.moved[t][j] = True
            elif not book.swap_in(t, j, chosen):
                book.ids[t][j] = chosen[j]  # dropped: a full expert, past capacity in its queue
                book.load[chosen[j]] += 1
                book.has_drop[chosen[j]] = True
    device = inp.logits_TE.device
    ids_Tk = torch.tensor(book.ids, dtype=torch.int64, device=device).view(T, k)
    rerouted_Tk = torch.tensor(book.moved, dtype=torch.bool, device=device).view(T, k)
    return routed(ids_Tk, weights_from_logits(inp.logits_TE, ids_Tk), E, inp.capacity_factor, rerouted_Tk)
