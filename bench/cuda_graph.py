"""Decode timing with CUDA graphs (`moebench kernels --cuda-graph`), as vLLM's benchmark_moe times fused_moe.

Each row's call is captured once per cold weight copy into a torch.cuda.CUDAGraph (the row's graphs share one
memory pool) after warm-up runs on a side stream (Triton compiles, the allocator settles), and the timed call is
the replay of the graph captured on the copy the rotation hands out: what a serving engine that graphs its
decode step pays, without the eager call's Python and launch overhead. The replay's output is checked like the
eager call's. A call that cannot be captured (it syncs with the host, or allocates on the host per call) is
timed eagerly, and the row says why (`timing`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

WARMUP_CALLS = 2  # eager calls on a side stream before capture


def capture_per_copy(fn: Callable, copies: Sequence[tuple]) -> tuple[Callable, object]:
    """fn(*weights) captured once per weight copy: (replay(*weights) -> None, the output of copies[0]'s graph
    after one replay). Keyed by the first weight tensor's address (the rotation hands out the copies' own
    tensors). Raises whatever capture raises (the caller falls back to the eager call)."""
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            fn(*copies[0])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    pool = torch.cuda.graph_pool_handle()
    graphs, outputs = {}, []  # outputs stay alive: each graph writes its own
    for weights in copies:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs.append(fn(*weights))
        graphs[weights[0].data_ptr()] = graph
    graphs[copies[0][0].data_ptr()].replay()
    torch.cuda.synchronize()

    def replay(*weights):
        graphs[weights[0].data_ptr()].replay()

    return replay, outputs[0]


def graph_or_eager(fn: Callable, copies: Sequence[tuple]) -> tuple[Callable, object, str]:
    """(the call to time, the graph's checked output or None, how it is timed: 'cuda-graph' or 'eager: <why>')."""
    try:
        replay, output = capture_per_copy(fn, copies)
    except Exception as exc:  # any capture failure: time the call eagerly and say why
        torch.cuda.synchronize()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return fn, None, f"eager: {reason[:120]}"
    return replay, output, "cuda-graph"
