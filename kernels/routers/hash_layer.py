# T = tokens, E = experts, k = experts per token
"""hash: Hash Layers (Roller et al., 2021): a token's experts come from a fixed hash of its id, not from the gate.

Expert j of token v is (h(v) + j * (E // k)) mod E with h Fibonacci hashing (v * 2654435761 mod 2^32, scaled
to 0..E-1): k distinct experts, consecutive ids spread evenly (balanced by construction), no gate GEMM.
Weights 1/k each. Capacity and drops as the topk gate's.
"""

from __future__ import annotations

import torch

from moebench.kernels.routers.common import routed

GOLDEN = 2654435761  # Knuth's multiplicative hash constant, ~2^32 / phi


def expert_hash(token_ids_T: torch.Tensor, num_experts: int) -> torch.Tensor:
    """h(v) in 0..E-1, int64 [T]."""
    return ((token_ids_T.long() * GOLDEN) % (1 << 32)) * num_experts >> 32


def route(inp, param=None):
    E, k = inp.num_experts, inp.k
    step, device = E // k, inp.logits_TE.device
    slots_k = step * torch.arange(k, device=device)
    ids_Tk = (expert_hash(inp.token_ids().to(device), E)[:, None] + slots_k[None, :]) % E
    weights_Tk = torch.full(ids_Tk.shape, 1.0 / k, device=device)
    return routed(ids_Tk, weights_Tk, E, inp.capacity_factor)
