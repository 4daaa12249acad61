# T = tokens, E = experts, k = experts per token
"""topk: the gate as trained: top-k softmax, capacity and drops in token order (kernels.routing.route)."""

from __future__ import annotations

import torch

from moebench.kernels.routers.common import routed


def route(inp, param=None):
    """Top-k of the logits [T, E], the softmax over them as weights; capacity from inp.capacity_factor."""
    vals_Tk, ids_Tk = inp.logits_TE.float().topk(inp.k, dim=-1)
    return routed(ids_Tk, torch.softmax(vals_Tk, dim=-1), inp.num_experts, inp.capacity_factor)
