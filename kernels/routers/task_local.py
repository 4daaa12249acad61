# T = tokens, E = experts, k = experts per token, N = tasks, P = rank parts (ranks or TP groups) routing tokens
"""task-local[:N]: task-level routing with requests served where their task lives (Task-MoE's deployment: each
task's sub-network on its own devices). Every token routed by rank part p belongs to task p * N // P (N
defaults to P, one task per part), whose k experts are the fixed block of routers.task; under the contiguous
placement, with k <= E / P, that block sits on the routing rank itself, so dispatch stays local. Weights:
the softmax of the token's logits over its task's experts. Capacity and drops as the topk gate's.
"""

from __future__ import annotations

from moebench.kernels.routers.common import routed, sort_by_logit, weights_from_logits
from moebench.kernels.routers.task import task_experts

PER_PART = 0  # task-local written bare: one task per rank part


def route(inp, param):
    N = int(param) or inp.num_parts
    task = inp.part * N // inp.num_parts
    experts_k = task_experts(N, inp.num_experts, inp.k)[task].to(inp.logits_TE.device)
    ids_Tk = sort_by_logit(inp.logits_TE, experts_k.expand(inp.num_tokens, -1).contiguous())
    return routed(ids_Tk, weights_from_logits(inp.logits_TE, ids_Tk), inp.num_experts, inp.capacity_factor)
