# T = tokens, E = experts, k = experts per token, N = tasks
"""task[:N]: task-level routing (Task-MoE, Kudugunta et al., 2021): every token of a request goes to the k
experts of its request's task, so a request's whole forward needs only those k experts.

Task t's experts are the fixed block (t * (E // N) + j) mod E, j < k (contiguous: under a contiguous
placement a task's experts sit on as few ranks as possible). A token's task comes from RouterInput.task_T;
without it, tokens form requests of REQUEST_TOKENS consecutive ids and request r has task h(r) mod N, h the
hash router's Fibonacci hash (so which rank serves a task carries no pattern).
Weights: the softmax of the token's own logits over its task's experts, ids in descending logit order.
Capacity and drops as the topk gate's.
"""

from __future__ import annotations

import torch

from moebench.kernels.routers.common import routed, sort_by_logit, weights_from_logits
from moebench.kernels.routers.hash_layer import expert_hash

DEFAULT_TASKS = 4
REQUEST_TOKENS = 16


def task_experts(num_tasks: int, num_experts: int, k: int) -> torch.Tensor:
    """int64 [N, k]: each task's fixed experts."""
    stride = max(1, num_experts // num_tasks)
    return (torch.arange(num_tasks)[:, None] * stride + torch.arange(k)[None, :]) % num_experts


def default_tasks(token_ids_T: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """int64 [T]: the task of each token's request (REQUEST_TOKENS consecutive ids per request, hashed)."""
    return expert_hash(token_ids_T.long() // REQUEST_TOKENS, num_tasks)


def route(inp, param):
    N = int(param)
    task_T = inp.task_T if inp.task_T is not None else default_tasks(inp.token_ids(), N)
    if task_T.numel() and not 0 <= int(task_T.min()) <= int(task_T.max()) < N:
        raise ValueError(f"task ids must be in 0..{N - 1} for task:{N}")
    experts_Nk = task_experts(N, inp.num_experts, inp.k).to(inp.logits_TE.device)
    ids_Tk = sort_by_logit(inp.logits_TE, experts_Nk[task_T.long().to(inp.logits_TE.device)])
    return routed(ids_Tk, weights_from_logits(inp.logits_TE, ids_Tk), inp.num_experts, inp.capacity_factor)
