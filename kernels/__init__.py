# T = tokens, H = hidden, F = expert FFN width, E = experts, k = experts per token, R = rows
"""Expert kernels: routing metadata and three ways to run a token's top-k SwiGLU experts, plus the loop baseline.

    from moebench.kernels import EXPERT_KERNELS, get_kernel, route, reference

    routing = route(logits_TE, k, capacity_factor=None)        # or routing_from_topk(ids, weights, E)
    y_TH, stats = EXPERT_KERNELS["dynamic"](x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH, impl="torch")
    y_ref_TH = reference.moe_experts(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH)  # float64

Every kernel: y[t] = sum over token t's kept experts e of weight * (silu(x @ w_gate[e]) * (x @ w_up[e])) @ w_down[e];
fp32 / bf16 / fp16 in, fp32 accumulation, y in x's dtype; impl "torch" or "triton" (CPU tensors need
TRITON_INTERPRET=1 set before triton is imported). stats: KernelStats (useful / executed FLOPs, padding
waste, dropped, padded rows, peak extra bytes).

A kernel whose design has no capacity (exact rows, no drops) carries `dropless = True`: the benchmarks run it
once, without a capacity factor; a static-capacity kernel (padded) runs once per capacity factor.

BASELINES["loop"] is the per-expert Python loop most model code ships, with the same signature and stats
(impl "torch" only); get_kernel(name) finds a name in either registry.

Rows that arrive already grouped (after an all-to-all), each with one expert: `routing_for_rows(expert_ids_R,
num_local_experts)` (k = 1, weights 1.0: the raw expert outputs; built cheaply, once per batch) and call any
kernel with x_rows [R, H]; y[r] is row r's output. There is no separate entry point.
"""

if __name__ == "kernels":  # imported bare, from the checkout root: step aside
    import moebench

    moebench.step_aside(__name__)


from moebench.kernels import reference
from moebench.kernels.block_sparse import block_sparse_experts
from moebench.kernels.common import KernelStats
from moebench.kernels.dynamic import dynamic_experts
from moebench.kernels.loop import loop_experts
from moebench.kernels.padded import padded_experts
from moebench.kernels.routing import (
    DEFAULT_BLOCK_SIZE,
    Routing,
    capacity_for,
    route,
    routing_for_rows,
    routing_from_topk,
    topk_softmax,
)

EXPERT_KERNELS = {
    "padded": padded_experts,
    "dynamic": dynamic_experts,
    "block_sparse": block_sparse_experts,
}

BASELINES = {"loop": loop_experts}


def get_kernel(name: str):
    """EXPERT_KERNELS[name] or BASELINES[name] (all take the same arguments and return (y_TH, KernelStats)),
    or ValueError listing the names of both registries."""
    for registry in (EXPERT_KERNELS, BASELINES):
        if name in registry:
            return registry[name]
    raise ValueError(
        f"unknown expert kernel {name!r}; kernels: {', '.join(EXPERT_KERNELS)}; baselines: {', '.join(BASELINES)}"
    )


__all__ = [
    "BASELINES",
    "DEFAULT_BLOCK_SIZE",
    "EXPERT_KERNELS",
    "KernelStats",
    "Routing",
    "capacity_for",
    "get_kernel",
    "reference",
    "route",
    "routing_for_rows",
    "routing_from_topk",
    "topk_softmax",
]
