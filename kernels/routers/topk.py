# T = tokens, E = experts, k = experts per token
"""topk: the gate as trained: top-k softmax, capacity and drops in token order (kernels.routing.route)."""

from __future__ import annotations

from moebench.kernels.routers.common import routed
from moebench.kernels.routing import topk_softmax


def route(inp, param=None):
    """Top-k of the logits [T, E], the softmax over them as weights; capacity from inp.capacity_factor."""
    return routed(*topk_softmax(inp.logits_TE, inp.k), inp.num_experts, inp.capacity_factor)
