# T = tokens, H = hidden, F = expert FFN width, E = experts, k = experts per token
"""The truth every kernel is tested against: a plain float64 loop over tokens and their kept experts."""

from __future__ import annotations

import torch

from moebench.kernels.routing import Routing


def swiglu_expert(x_H: torch.Tensor, w_gate_HF: torch.Tensor, w_up_HF: torch.Tensor, w_down_FH: torch.Tensor):
    """One expert on one token: (silu(x @ w_gate) * (x @ w_up)) @ w_down."""
    return (torch.nn.functional.silu(x_H @ w_gate_HF) * (x_H @ w_up_HF)) @ w_down_FH


def moe_experts(
    x_TH: torch.Tensor,
    routing: Routing,
    w_gate_EHF: torch.Tensor,
    w_up_EHF: torch.Tensor,
    w_down_EFH: torch.Tensor,
) -> torch.Tensor:
    """y[t] = sum over token t's kept assignments j of weight[t, j] * expert_{ids[t, j]}(x[t]); float64 [T, H]."""
    x_TH, w_gate_EHF, w_up_EHF, w_down_EFH = (t.double().cpu() for t in (x_TH, w_gate_EHF, w_up_EHF, w_down_EFH))
    ids_Tk = routing.topk_ids_Tk.cpu().tolist()
    weights_Tk = routing.topk_weights_Tk.double().cpu()
    kept_Tk = routing.kept_Tk.cpu().tolist()
    y_TH = torch.zeros_like(x_TH)
    for t, (ids, kept) in enumerate(zip(ids_Tk, kept_Tk)):
        for j, (e, keep) in enumerate(zip(ids, kept)):
            if keep:
                y_TH[t] += weights_Tk[t, j] * swiglu_expert(x_TH[t], w_gate_EHF[e], w_up_EHF[e], w_down_EFH[e])
    return y_TH
