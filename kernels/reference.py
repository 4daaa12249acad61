# T = tokens, E = experts, H = hidden, I = expert FFN, k = active
"""The truth every kernel is tested against: a plain float64 loop over tokens and their kept experts."""

from __future__ import annotations

import torch
from moebench.kernels.routing import Routing


def swiglu_expert(x_H: torch.Tensor, w_gate_HI: torch.Tensor, w_up_HI: torch.Tensor, w_down_IH: torch.Tensor):
    """One expert on one token: (silu(x @ w_gate) * (x @ w_up)) @ w_down."""
    return (torch.nn.functional.silu(x_H @ w_gate_HI) * (x_H @ w_up_HI)) @ w_down_IH


def moe_experts(
    x_TH: torch.Tensor,
    routing: Routing,
    w_gate_EHI: torch.Tensor,
    w_up_EHI: torch.Tensor,
    w_down_EIH: torch.Tensor,
) -> torch.Tensor:
    """y[t] = sum over token t's kept assignments j of weight[t, j] * expert_{ids[t, j]}(x[t]); float64 [T, H]."""
    x_TH, w_gate_EHI, w_up_EHI, w_down_EIH = (t.double().cpu() for t in (x_TH, w_gate_EHI, w_up_EHI, w_down_EIH))
    ids_Tk = routing.topk_ids_Tk.cpu().tolist()
    weights_Tk = routing.topk_weights_Tk.double().cpu()
    kept_Tk = routing.kept_Tk.cpu().tolist()
    y_TH = torch.zeros_like(x_TH)
    for t, (ids, kept) in enumerate(zip(ids_Tk, kept_Tk)):
        for j, (e, keep) in enumerate(zip(ids, kept)):
            if keep:
                y_TH[t] += weights_Tk[t, j] * swiglu_expert(x_TH[t], w_gate_EHI[e], w_up_EHI[e], w_down_EIH[e])
    return y_TH


def loop_experts(
    x_TH: torch.Tensor,
    routing: Routing,
    w_gate_EHI: torch.Tensor,
    w_up_EHI: torch.Tensor,
    w_down_EIH: torch.Tensor,
) -> torch.Tensor:
    """The per-expert Python loop most model code ships (e.g. Hugging Face Mixtral): for each expert,
    find its tokens with torch.where, run its FFN on them, index_add the weighted rows back.

    A baseline, not a kernel: fp32 accumulation, y_TH in x's dtype, honours the kept mask. On GPU the
    empty-expert check syncs once per expert, as that code does.
    """
    T, H = x_TH.shape
    ids_Tk = torch.where(routing.kept_Tk, routing.topk_ids_Tk, -1)
    y_TH = torch.zeros(T, H, dtype=torch.float32, device=x_TH.device)
    for e in range(w_gate_EHI.shape[0]):
        token_R, slot_R = torch.where(ids_Tk == e)
        if token_R.numel() == 0:
            continue
        x_RH = x_TH[token_R]
        h_RI = torch.nn.functional.silu(x_RH @ w_gate_EHI[e]) * (x_RH @ w_up_EHI[e])
        y_TH.index_add_(0, token_R, (h_RI @ w_down_EIH[e]).float() * routing.topk_weights_Tk[token_R, slot_R, None])
    return y_TH.to(x_TH.dtype)
