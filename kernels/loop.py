# T = tokens, H = hidden, F = expert FFN width, E = experts, k = experts per token, R = rows of one expert
"""loop: the per-expert Python loop most model code ships (e.g. Hugging Face Mixtral) — a baseline, not a kernel.

For each expert: find its kept assignments with torch.where, run its SwiGLU on those rows, and index_add
the weighted outputs into an fp32 y. Nothing is padded and nothing is dropped beyond the routing's kept
mask; on GPU the empty-expert check syncs once per expert, as that code does. The SwiGLU intermediate is
written in place (common.swiglu_ffn), so the CPU ledger sees every buffer of rows; the index vectors of
torch.where (O(T*k) elements) are not counted, as in the kernels. Same signature as the expert kernels.
"""

from __future__ import annotations

import torch

from moebench.kernels.common import KernelStats, MemoryMeter, check_inputs, swiglu_ffn
from moebench.kernels.routing import Routing


def loop_experts(
    x_TH: torch.Tensor,
    routing: Routing,
    w_gate_EHF: torch.Tensor,
    w_up_EHF: torch.Tensor,
    w_down_EFH: torch.Tensor,
    impl: str = "torch",
) -> tuple[torch.Tensor, KernelStats]:
    """Per-expert loop. Returns (y_TH in x's dtype, stats); useful rows = executed rows = kept assignments.

    impl: "torch" only (ValueError otherwise). fp32 accumulation; stats count no padding.
    """
    if impl != "torch":
        raise ValueError(f"the loop baseline has only a torch path (impl='torch'), got impl={impl!r}")
    T, H, F, E = check_inputs(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH, impl)
    meter = MemoryMeter.of(x_TH)
    ids_Tk = torch.where(routing.kept_Tk, routing.topk_ids_Tk, -1)
    y_TH = torch.zeros(T, H, dtype=torch.float32, device=x_TH.device)
    if x_TH.dtype != torch.float32:  # an fp32 accumulator beside the output
        meter.alloc(y_TH)
    for e in range(E):
        token_R, slot_R = torch.where(ids_Tk == e)
        if token_R.numel() == 0:
            continue
        x_RH = meter.alloc(x_TH[token_R])
        out_RH = swiglu_ffn(x_RH, w_gate_EHF[e], w_up_EHF[e], w_down_EFH[e], meter)
        meter.free(x_RH)
        rows_RH = out_RH if out_RH.dtype == torch.float32 else meter.alloc(out_RH.float())
        y_TH.index_add_(0, token_R, rows_RH.mul_(routing.topk_weights_Tk[token_R, slot_R, None]))
        meter.free(out_RH)
        if rows_RH is not out_RH:
            meter.free(rows_RH)
    y_TH = y_TH.to(x_TH.dtype)
    stats = KernelStats(
        hidden=H,
        ffn=F,
        num_useful_rows=routing.num_kept,
        num_executed_rows=routing.num_kept,
        num_dropped=routing.num_dropped,
        num_padded_rows=0,
        peak_extra_bytes=meter.peak_bytes(y_TH),
    )
    return y_TH, stats


# The design runs without a capacity: benchmarks run it once, dropless (padded runs once per capacity factor).
loop_experts.dropless = True
