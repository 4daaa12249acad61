# T = tokens, E = experts, k = the model's experts per token, K2 = experts per token at decode
"""topk-switch:K2: the gate trained with k, run with K2 < k experts per token (the quality/latency knob of decode):
top-K2 of the same logits, the softmax renormalised over those K2; capacity as the topk gate's with K2 picks."""

from __future__ import annotations

from moebench.kernels.routers.common import routed
from moebench.kernels.routing import topk_softmax


def route(inp, param):
    k2 = int(param)
    if not 1 <= k2 < inp.k:
        raise ValueError(f"topk-switch:{k2} needs 1 <= K2 < k = {inp.k}")
    return routed(*topk_softmax(inp.logits_TE, k2), inp.num_experts, inp.capacity_factor)
