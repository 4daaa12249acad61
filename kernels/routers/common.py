# T = tokens, E = experts, K = experts a router picks per token
"""What routers share: a Routing from chosen ids with the gate's softmax over them as combine weights."""

from __future__ import annotations

import torch

from moebench.kernels.routing import routing_from_topk


def weights_from_logits(logits_TE: torch.Tensor, ids_TK: torch.Tensor) -> torch.Tensor:
    """fp32 [T, K]: the softmax over each token's chosen experts' logits (the top-k gate's combine weights)."""
    return torch.softmax(torch.gather(logits_TE.float(), 1, ids_TK), dim=-1)


def sort_by_logit(logits_TE: torch.Tensor, ids_TK: torch.Tensor) -> torch.Tensor:
    """ids_TK reordered per token in descending logit order (the gate's convention), stable on ties."""
    order_TK = torch.gather(logits_TE.float(), 1, ids_TK).argsort(dim=-1, descending=True, stable=True)
    return torch.gather(ids_TK, 1, order_TK)


def routed(ids_TK, weights_TK, num_experts: int, capacity_factor, rerouted_TK=None):
    """A Routed with the layer's capacity and position drop policy (imported lazily: no cycle with __init__)."""
    from moebench.kernels.routers import Routed

    routing = routing_from_topk(ids_TK.long(), weights_TK, num_experts, capacity_factor, validate=False)
    if rerouted_TK is None:
        rerouted_TK = torch.zeros_like(ids_TK, dtype=torch.bool)
    return Routed(routing, rerouted_TK)
