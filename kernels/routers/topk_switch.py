# T = tokens, E = experts, k = the model's experts per token, K2 = experts per token at decode
"""topk-switch:K2: the gate trained with k, run with K2 < k experts per token (the quality/latency knob of decode):
top-K2 of the same logits, the softmax renormalised over those K2; capacity as the topk gate's with K2 picks."""

from __future__ import annotations

import torch

from moebench.kernels.routers.common import routed


def route(inp, param):
    k2 = int(param)
    if not 1 <= k2 < inp.k:
        raise ValueError(f"topk-switch:{k2} needs 1 <= K2 < k = {inp.k}")
    vals_TK, ids_TK = inp.logits_TE.float().topk(k2, dim=-1)
    return routed(ids_TK, torch.softmax(vals_TK, dim=-1), inp.num_experts, inp.capacity_factor)
