"""Expert kernels: routing metadata and three ways to run a token's top-k SwiGLU experts.

    from moebench.kernels import EXPERT_KERNELS, route, reference

    routing = route(logits_TE, k, capacity_factor=None)        # or routing_from_topk(ids, weights, E)
    y_TH, stats = EXPERT_KERNELS["dynamic"](x_TH, routing, w_gate_EHI, w_up_EHI, w_down_EIH, impl="torch")
    y_ref_TH = reference.moe_experts(x_TH, routing, w_gate_EHI, w_up_EHI, w_down_EIH)  # float64

Every kernel: y[t] = sum over token t's kept experts e of weight * (silu(x @ w_gate[e]) * (x @ w_up[e])) @ w_down[e];
fp32 / bf16 / fp16 in, fp32 accumulation, y in x's dtype; impl "torch" or "triton" (CPU tensors need
TRITON_INTERPRET=1 set before triton is imported). stats: KernelStats (useful / executed FLOPs, padding
waste, dropped, padded rows, peak extra bytes).

Rows that arrive already grouped (after an all-to-all), each with one expert and its own weight: build
`routing_from_topk(expert_ids_N.view(N, 1), weights_N.view(N, 1), num_local_experts)` (k = 1; weights of
1.0 give the raw expert outputs) and call any kernel with x_rows [N, H]; y[n] is row n's output. There is
no separate entry point.
"""

from moebench.kernels import reference
from moebench.kernels.block_sparse import block_sparse_experts
from moebench.kernels.common import KernelStats
from moebench.kernels.dynamic import dynamic_experts
from moebench.kernels.padded import padded_experts
from moebench.kernels.routing import DEFAULT_BLOCK_SIZE, Routing, capacity_for, route, routing_from_topk, topk_softmax

EXPERT_KERNELS = {
    "padded": padded_experts,
    "dynamic": dynamic_experts,
    "block_sparse": block_sparse_experts,
}


def get_kernel(name: str):
    """EXPERT_KERNELS[name], or ValueError listing the valid names."""
    if name not in EXPERT_KERNELS:
        raise ValueError(f"unknown expert kernel {name!r}; valid: {', '.join(EXPERT_KERNELS)}")
    return EXPERT_KERNELS[name]


__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "EXPERT_KERNELS",
    "KernelStats",
    "Routing",
    "capacity_for",
    "get_kernel",
    "reference",
    "route",
    "routing_from_topk",
    "topk_softmax",
]
