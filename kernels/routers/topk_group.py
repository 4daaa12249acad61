# T = tokens, E = experts, k = experts per token, NG = expert groups, TG = groups a token may use
"""topk-group[:TG]: DeepSeek-V3's group-limited gate. The E experts form NG groups of E / NG consecutive ids (the
model's groups, RouterInput.num_groups); a group's score is the sum of its two best expert probabilities
(softmax over all E); each token keeps its TG best groups and takes its top k experts inside them, weights the
softmax over those k logits. With groups packed onto nodes, a token's experts span at most TG groups' nodes
(DeepSeek-V3's node-limited routing). Capacity and drops as the topk gate's.
"""

from __future__ import annotations

import torch

from moebench.kernels.routers.common import routed
from moebench.kernels.routing import topk_softmax

MODEL_DEFAULT = 0  # topk-group written bare: the model's own topk_groups (RouterInput.topk_groups)
BEST_PER_GROUP = 2  # DeepSeek-V3 scores a group by its two best experts


def route(inp, param):
    T, E, k, NG = inp.num_tokens, inp.num_experts, inp.k, inp.num_groups
    TG = int(param) or inp.topk_groups
    if NG < 1 or E % NG or not 1 <= TG <= NG or k > TG * (E // NG):
        raise ValueError(f"topk-group:{TG} needs E = {E} in NG = {NG} equal groups, 1 <= TG <= NG and TG * E/NG >= k")
    logits_TE = inp.logits_TE.float()
    prob_TGE = torch.softmax(logits_TE, dim=-1).view(T, NG, E // NG)
    group_score_TG = prob_TGE.topk(min(BEST_PER_GROUP, E // NG), dim=-1).values.sum(-1)
    keep_TG = torch.zeros(T, NG, dtype=torch.bool, device=logits_TE.device)
    keep_TG.scatter_(1, group_score_TG.topk(TG, dim=-1).indices, True)
    masked_TE = logits_TE.masked_fill(~keep_TG.repeat_interleave(E // NG, dim=1), -torch.inf)
    return routed(*topk_softmax(masked_TE, k), E, inp.capacity_factor)
