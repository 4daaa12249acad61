"""Decode timing with CUDA graphs (`moebench kernels --cuda-graph`), as vLLM's benchmark_moe times fused_moe.

Each row's call is captured into torch.cuda.CUDAGraph objects after warm-up runs on a side stream (Triton
compiles, the allocator settles): one graph per cold weight copy, each holding CALLS_PER_GRAPH calls over
successive copies starting at its own (so consecutive calls read different copies, as the eager rotation
does), the row's graphs sharing one memory pool. The timed call is the replay of the graph that starts at the
copy the rotation hands out, and the harness divides its time by the calls it holds (Case.calls): the launch
of one graph is spread over ten calls, as benchmark_moe does. That is what a serving engine that graphs its
decode step pays, without the eager call's Python and launch overhead. The first graph's first output is
checked like the eager call's.

A call that syncs with the host (a .item(), a nonzero, a copy to the CPU) cannot be captured: it is found
before any capture by one eager call under torch's sync debug mode and timed eagerly, and the row says why. A
capture that fails anyway restores the stream it started from and is timed eagerly too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

WARMUP_CALLS = 2  # eager calls on a side stream before capture
CALLS_PER_GRAPH = 10  # calls captured in one graph (benchmark_moe: 10); the harness divides by it


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:120]


def host_sync(fn: Callable, weights: tuple) -> str | None:
    """Why fn(*weights) cannot be captured (the first host sync it makes, as torch's sync debug mode reports
    it), or None when it makes none."""
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn(*weights)
    except RuntimeError as exc:
        return f"host sync: {_first_line(exc)}"
    finally:
        torch.cuda.set_sync_debug_mode(mode)
    return None


def capture_per_copy(fn: Callable, copies: Sequence[tuple], calls: int = CALLS_PER_GRAPH) -> tuple[Callable, object]:
    """fn(*weights) captured as one graph per weight copy, each `calls` calls over successive copies: (replay(
    *weights) -> None, the output of the first graph's first call after one replay). Keyed by the first weight
    tensor's address (the rotation hands out the copies' own tensors). The replay keeps fn (and with it every
    tensor the graphs read: routing, inputs, preallocated buffers) and the captured outputs alive: a graph holds
    no reference to its tensors. Raises whatever capture raises."""
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            fn(*copies[0])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    pool, n = torch.cuda.graph_pool_handle(), len(copies)
    graphs, outputs = {}, []
    for i, weights in enumerate(copies):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs.append([fn(*copies[(i + j) % n]) for j in range(calls)])
        graphs[weights[0].data_ptr()] = graph
    graphs[copies[0][0].data_ptr()].replay()
    torch.cuda.synchronize()

    def replay(*weights, _keep=(fn, outputs)):
        graphs[weights[0].data_ptr()].replay()

    return replay, outputs[0][0]


def graph_or_eager(fn: Callable, copies: Sequence[tuple]) -> tuple[Callable, object, str, int]:
    """(the call to time, the graph's checked output or None, how it is timed: 'cuda-graph' or 'eager: <why>',
    the calls one timed run makes)."""
    reason = host_sync(fn, copies[0])
    if reason is not None:
        return fn, None, f"eager: {reason}", 1
    stream = torch.cuda.current_stream()
    try:
        replay, output = capture_per_copy(fn, copies)
    except Exception as exc:  # any capture failure: time the call eagerly and say why
        torch.cuda.set_stream(stream)  # a capture that failed to end leaves its own stream current
        torch.cuda.synchronize()
        return fn, None, f"eager: capture failed: {_first_line(exc.__context__ or exc)}", 1
    return replay, output, "cuda-graph", CALLS_PER_GRAPH
