# T = tokens, H = hidden, F = expert FFN width, E = experts, k = experts per token, R = rows
"""Every expert kernel x impl (and the loop baseline) against the float64 reference, edge cases, stats and bad input.

Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1, set before triton is imported); with
MOEBENCH_TEST_DEVICE=cuda (scripts/gpu_check.sh) the same tests run on the GPU, compiled.
Relative error is ||y - ref|| / ||ref|| (Frobenius), ref computed in float64 from the same (rounded) inputs.
"""

import os

# Triton kernels on CPU tensors need the interpreter, chosen before triton is imported;
# MOEBENCH_TEST_DEVICE=cuda (scripts/gpu_check.sh) runs the same tests on the GPU, compiled.
os.environ["TRITON_INTERPRET"] = "1" if os.environ.get("MOEBENCH_TEST_DEVICE", "cpu") == "cpu" else "0"

import math

import pytest
import torch

from moebench.kernels import (
    BASELINES,
    EXPERT_KERNELS,
    get_kernel,
    reference,
    route,
    routing_for_rows,
    routing_from_topk,
)
from moebench.kernels.common import host_gemv_applies, rows_matmul
from moebench.kernels.loop import loop_experts
from moebench.kernels.padded import BLOCK_M as PADDED_BLOCK_M
from moebench.kernels.triton_utils import interpreter_active

DEVICE = os.environ.get("MOEBENCH_TEST_DEVICE", "cpu")

KERNELS = list(EXPERT_KERNELS)
IMPLS = ["torch", "triton"]
# (name, impl) of every kernel path, and the loop baseline (torch only)
PATHS = [(name, impl) for name in KERNELS for impl in IMPLS] + [("loop", "torch")]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def make_weights(E: int, H: int, F: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w_gate_EHF = torch.randn(E, H, F, generator=g) / math.sqrt(H)
    w_up_EHF = torch.randn(E, H, F, generator=g) / math.sqrt(H)
    w_down_EFH = torch.randn(E, F, H, generator=g) / math.sqrt(F)
    return tuple(w.to(DEVICE, dtype) for w in (w_gate_EHF, w_up_EHF, w_down_EFH))


def make_x(T: int, H: int, dtype=torch.float32, seed: int = 1):
    return torch.randn(T, H, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def random_routing(T: int, E: int, k: int, cf=None, block_size: int = 16, seed: int = 2):
    logits_TE = torch.randn(T, E, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    return route(logits_TE, k, capacity_factor=cf, block_size=block_size)


def forced_routing(ids_Tk, E: int, cf=None, block_size: int = 16, seed: int = 3):
    ids_Tk = torch.as_tensor(ids_Tk, dtype=torch.int64).to(DEVICE)
    weights_Tk = torch.rand(ids_Tk.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE) + 0.1
    return routing_from_topk(ids_Tk, weights_Tk / weights_Tk.sum(1, keepdim=True), E, cf, block_size=block_size)


def rel_err(y, ref) -> float:
    y, ref = y.double().cpu(), ref.double().cpu()
    return ((y - ref).norm() / ref.norm().clamp_min(1e-300)).item()


# name -> (H, F, E, routing builder); F=48 is not a multiple of the block size (partial column blocks)
CASES = {
    "random": (32, 48, 4, lambda: random_routing(37, 4, 2)),
    "expert_without_tokens": (32, 48, 4, lambda: forced_routing([[0, 1], [3, 0], [1, 3]] * 7, 4)),
    "all_tokens_one_expert": (32, 48, 4, lambda: forced_routing([[2]] * 21, 4)),
    "one_token": (32, 48, 4, lambda: random_routing(1, 4, 2)),
    "k_equals_E": (32, 48, 4, lambda: random_routing(19, 4, 4)),
    "capacity_drops": (32, 48, 4, lambda: random_routing(37, 4, 2, cf=0.5)),
    "capacity_no_drops": (32, 48, 4, lambda: random_routing(37, 4, 2, cf=4.0)),
    "block_32_many_experts": (16, 64, 16, lambda: random_routing(45, 16, 3, block_size=32)),
    "several_k_and_n_tiles": (160, 272, 4, lambda: random_routing(40, 4, 2)),  # > 1 K step and N tile
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name,impl", PATHS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, name, impl, dtype):
    H, F, E, make_routing = CASES[case]
    routing = make_routing()
    w_gate_EHF, w_up_EHF, w_down_EFH = make_weights(E, H, F, dtype)
    x_TH = make_x(routing.num_tokens, H, dtype)
    y_TH, stats = get_kernel(name)(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH, impl=impl)
    ref_TH = reference.moe_experts(x_TH, routing, w_gate_EHF, w_up_EHF, w_down_EFH)
    assert y_TH.shape == x_TH.shape and y_TH.dtype == dtype
    assert rel_err(y_TH, ref_TH) <= TOL[dtype]
    num_kept = int(routing.kept_Tk.sum())
    assert stats.useful_flops == 6 * H * F * num_kept
    assert stats.executed_flops >= stats.useful_flops
    assert stats.dropped == int(routing.num_dropped) == routing.num_assignments - num_kept
    assert stats.peak_extra_bytes > 0


@pytest.mark.parametrize("name,impl", PATHS)
def test_fp16(name, impl):
    H, F, E, make_routing = CASES["random"]
    routing = make_routing()
    weights = make_weights(E, H, F, torch.float16)
    x_TH = make_x(routing.num_tokens, H, torch.float16)
    y_TH, _ = get_kernel(name)(x_TH, routing, *weights, impl=impl)
    assert y_TH.dtype == torch.float16
    assert rel_err(y_TH, reference.moe_experts(x_TH, routing, *weights)) <= TOL[torch.float16]


@pytest.mark.parametrize("name,impl", PATHS)
def test_zero_tokens(name, impl):
    """A rank of an expert-parallel layer can receive no rows at all."""
    routing = forced_routing(torch.zeros(0, 1), 4)  # int64 [0, 1]
    y_TH, stats = get_kernel(name)(make_x(0, 32), routing, *make_weights(4, 32, 48), impl=impl)
    assert y_TH.shape == (0, 32)
    assert stats.useful_flops == 0 and stats.dropped == 0


def test_drops_are_dropped():
    """With drops, the result differs from the dropless one exactly by the dropped assignments."""
    H, F, E = 32, 48, 4
    weights = make_weights(E, H, F)
    logits_TE = torch.randn(37, E, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    dropped = route(logits_TE, 2, capacity_factor=0.5)
    dropless = route(logits_TE, 2)
    assert int(dropped.num_dropped) > 0
    x_TH = make_x(37, H)
    y_TH, _ = EXPERT_KERNELS["dynamic"](x_TH, dropped, *weights)
    assert rel_err(y_TH, reference.moe_experts(x_TH, dropped, *weights)) <= 1e-5
    assert rel_err(y_TH, reference.moe_experts(x_TH, dropless, *weights)) > 1e-2


@pytest.mark.parametrize(
    "seg_ends,budget",
    [([10, 20, 30], 25), ([100, 100, 130, 300], 64), ([0, 0, 5], 64), ([64, 128], 64), ([], 8), ([7], 3)],
)
def test_plan_chunks(seg_ends, budget):
    """Ranges tile 0..end, follow segment boundaries unless a segment is split, and hold <= budget rows."""
    from moebench.kernels.common import plan_chunks

    chunks = plan_chunks(seg_ends, budget)
    assert [c[0] for c in chunks[1:]] == [c[1] for c in chunks[:-1]]
    assert (chunks[0][0], chunks[-1][1]) == (0, seg_ends[-1]) if seg_ends and seg_ends[-1] else chunks == []
    segments = list(zip([0, *seg_ends], seg_ends))
    for r0, r1 in chunks:
        assert 0 < r1 - r0 <= budget
        if r0 not in (0, *seg_ends):  # a cut inside a segment: only one too big for a range
            assert any(s0 < r0 < s1 and s1 - s0 > budget for s0, s1 in segments)


@pytest.mark.parametrize("cf", [None, 0.75])
@pytest.mark.parametrize("name", ["dynamic", "block_sparse"])
def test_torch_path_in_chunks(monkeypatch, name, cf):
    """The CPU torch path runs rows in bounded ranges; force 64-row ranges so segments are split."""
    from moebench.kernels import common

    monkeypatch.setattr(common, "CPU_CHUNK_BYTES", 1)
    H, F, E = 32, 48, 4
    routing = random_routing(150, E, 2, cf=cf)  # 300 assignments: 5 chunks
    weights = make_weights(E, H, F)
    x_TH = make_x(150, H)
    y_TH, _ = EXPERT_KERNELS[name](x_TH, routing, *weights)
    assert rel_err(y_TH, reference.moe_experts(x_TH, routing, *weights)) <= 1e-5


@pytest.mark.parametrize(
    "active,groups",
    [([0, 1, 2, 5], [(0, 3, 1), (3, 1, 1)]), ([1, 6], [(0, 2, 5)]), ([0, 2, 4, 5, 7], [(0, 3, 2), (3, 2, 2)]),
     ([3], [(0, 1, 1)]), ([], []), (list(range(8)), [(0, 8, 1)])],
)  # fmt: skip
def test_dynamic_batched_progressions(active, groups):
    """Active experts cut into arithmetic progressions, each one strided view of the weights."""
    from moebench.kernels.common import expert_progressions

    assert expert_progressions(active) == groups
    assert [active[i + j] for i, n, _ in groups for j in range(n)] == active  # every expert once, in order
    for i, n, step in groups:
        assert all(active[i + j + 1] - active[i + j] == step for j in range(n - 1))


@pytest.mark.skipif(DEVICE != "cpu", reason="the batched path is dynamic's CPU one")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize(
    "ids,cf",
    [([[0, 7], [3, 7], [7, 5]], None),  # progressions [0, 3], [5, 7] (three groups' worth of cuts), padding
     ([[1, 6], [6, 1]], None),  # one strided pair
     ([[2]] * 5, None),  # every token to one expert
     ([[0, 1], [1, 2], [2, 3], [4, 5], [6, 7]] * 3, None),  # every expert, uneven rows: one bmm over all E
     ([[0, 1], [0, 2], [0, 3], [0, 4]] * 2, 1.0)],  # drops (capacity 2 rows per expert)
)  # fmt: skip
@pytest.mark.parametrize("gemm_combine", [True, False], ids=["gemm-combine", "index-add"])
def test_dynamic_batched_cpu_path(monkeypatch, ids, cf, dtype, gemm_combine):
    """dynamic's batched CPU path (2 <= busiest <= BATCHED_ROWS) matches the float64 reference and the exact-row
    path it replaces, and counts its padded rows: active experts * busiest executed. Both combines: the small
    GEMM and (above MM_COMBINE_ENTRIES) index_add_."""
    from moebench.kernels import dynamic

    monkeypatch.setattr(dynamic, "MM_COMBINE_ENTRIES", 1 << 14 if gemm_combine else 0)

    H, F, E = 32, 48, 8
    routing = forced_routing(ids, E, cf=cf)
    weights = make_weights(E, H, F, dtype)
    x_TH = make_x(len(ids), H, dtype)
    ref = reference.moe_experts(x_TH, routing, *weights)
    y_TH, stats = dynamic.dynamic_experts(x_TH, routing, *weights)
    assert y_TH.dtype == dtype and rel_err(y_TH, ref) <= TOL[dtype]
    kept_E = routing.kept_counts_E.cpu()
    busiest, active = int(kept_E.max()), int((kept_E > 0).sum())
    assert 2 <= busiest <= dynamic.BATCHED_ROWS and stats.dropped == (0 if cf is None else 6)  # expert 0 keeps 2 of 8
    assert stats.num_executed_rows == busiest * active and stats.padded_rows == busiest * active - int(kept_E.sum())
    exact = dynamic._experts_torch_host(x_TH, routing, *weights, dynamic.MemoryMeter.of(x_TH))
    assert rel_err(y_TH, exact) <= TOL[dtype]


@pytest.mark.parametrize("threads", [1, 2])
def test_dynamic_batched_applies(threads):
    """The batched path takes a busiest expert of up to BATCHED_ROWS rows, one row only with several threads;
    with several threads also up to THREADED_ROWS rows while the padding stays within PAD_WASTE_LIMIT x the kept
    rows (empty experts are not padded); at T = 1 (one row per expert) y is the reference's either way."""
    from moebench.kernels import dynamic

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        small = [dynamic._batched_applies([r, 0]) for r in (0, 1, 2, 16, 17)]
        assert small == [False, threads > 1, True, True, threads > 1]
        assert dynamic._batched_applies([16, 1, 0, 1]) and not dynamic._batched_applies([0, 0])  # waste 48/18: small
        many = ([40, 30, 0, 20], [40, 20, 0, 10], [257, 200], [256, 200])  # waste 120/90 = 1.33x, 120/70 = 1.71x
        assert [dynamic._batched_applies(rows_E) for rows_E in many] == [threads > 1, False, False, threads > 1]
        routing, weights, x_TH = forced_routing([[1, 6]], 8), make_weights(8, 32, 48), make_x(1, 32)
        y_TH, stats = dynamic.dynamic_experts(x_TH, routing, *weights)
        assert rel_err(y_TH, reference.moe_experts(x_TH, routing, *weights)) <= 1e-5 and stats.padded_rows == 0
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(DEVICE != "cpu", reason="the batched path is dynamic's CPU one")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("slices", [False, True], ids=["one-chain", "row-slices"])
@pytest.mark.parametrize(
    ("ids", "cf", "rows_E", "dropped"),
    [([[0, 1]] * 20 + [[0, 2]] * 10 + [[1, 3]] * 10 + [[2, 3]] * 10 + [[3, 0]] * 10 + [[3, 2]] * 6, None,
      [40, 30, 26, 36, 0, 0], 0),  # experts 4 and 5 get nothing
     ([[0, 1]] * 20 + [[0, 2]] * 10 + [[1, 3]] * 10 + [[2, 3]] * 10 + [[3, 0]] * 10 + [[3, 2]] * 6, 1.2,
      [27, 27, 26, 27, 0, 0], 25),  # capacity ceil(1.2 * 132 / 6) = 27: 13 + 3 + 9 assignments dropped
     ([[e] for e in (0, 1, 3)] * 20 + [[2]] * 18, None, [20, 20, 18, 20, 0, 0], 0)],  # k = 1
)  # fmt: skip
def test_dynamic_threaded_batched_path(monkeypatch, ids, cf, rows_E, dropped, slices, dtype):
    """With two torch threads a busiest expert past BATCHED_ROWS runs the padded chain while the padding stays
    within PAD_WASTE_LIMIT: y is the float64 reference's (drops, k = 1 and empty experts included), executed rows
    = active * busiest; with a small CPU_CHUNK_BYTES the chain runs in slices of rows of every expert (weighted
    rows added at their tokens, pads into a spare row), alike, and only then."""
    from moebench.kernels import dynamic

    in_slices, sliced = dynamic._batched_in_slices, []  # the step of every sliced call
    monkeypatch.setattr(dynamic, "_batched_in_slices", lambda *a: sliced.append(a[3]) or in_slices(*a))
    if slices:
        monkeypatch.setattr(dynamic, "CPU_CHUNK_BYTES", 4 * 48 * 4 * 7)  # 7 rows of each expert a slice (bf16: 14)
    H, F, E = 32, 48, 6
    routing = forced_routing(ids, E, cf=cf)
    weights = make_weights(E, H, F, dtype)
    x_TH = make_x(len(ids), H, dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert dynamic._segment_rows(routing) == rows_E and dynamic._batched_applies(rows_E)
        y_TH, stats = dynamic.dynamic_experts(x_TH, routing, *weights)
    finally:
        torch.set_num_threads(before)
    assert sliced == ([7 if dtype == torch.float32 else 14] if slices else [])
    assert max(rows_E) > dynamic.BATCHED_ROWS and stats.dropped == dropped
    assert y_TH.dtype == dtype and rel_err(y_TH, reference.moe_experts(x_TH, routing, *weights)) <= TOL[dtype]
    assert stats.num_executed_rows == 4 * max(rows_E) and stats.padded_rows == 4 * max(rows_E) - sum(rows_E)


@pytest.mark.skipif(DEVICE != "cpu", reason="numpy runs the one-row experts of dynamic's CPU host path")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("ids", "cf", "numpy_experts"),
    [([[1, 6]], None, 2),  # decode: T = 1, k = 2, gate weights
     ([[0, 1], [2, 3], [4, 5]], None, 6),  # one row per expert, six experts
     ([[0]] * 17 + [[1], [2]], None, 2),  # expert 0 past BATCHED_ROWS (torch), experts 1 and 2 one row (numpy)
     ([[0, 1], [0, 2], [0, 3]], 0.5, 4),  # capacity 1 row per expert: expert 0 keeps one of three
     ([[0, 1]] + [[0, 2]] * 16 + [[0, 3]], None, 2),  # token 0: expert 0 in torch (18 rows), expert 1 in numpy
     ("rows", None, 3)],  # rows after an all-to-all: routing_for_rows, k = 1, unit weights
)  # fmt: skip
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided-rows"])
def test_dynamic_one_row_experts_in_numpy(monkeypatch, ids, cf, numpy_experts, dtype, strided):
    """On one torch thread, dynamic's host path runs every one-row expert in numpy (common.host_swiglu) and the
    rest in torch: y is the float64 reference's, and the ledger's peak and y equal the all-torch path's; bf16
    never takes numpy. strided: x's rows are a column slice of wider rows (the payload of received rows)."""
    from moebench.kernels import common, dynamic

    calls = []
    monkeypatch.setattr(dynamic, "host_swiglu", lambda *a: calls.append(a[0].shape) or common.host_swiglu(*a))
    H, F, E = 32, 48, 8
    routing = routing_for_rows([4, 0, 7], E) if ids == "rows" else forced_routing(ids, E, cf=cf)
    weights = make_weights(E, H, F, dtype)
    x_TH = make_x(routing.num_tokens, H + 8, dtype)[:, :H] if strided else make_x(routing.num_tokens, H, dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert not dynamic._batched_applies(dynamic._segment_rows(routing))
        y_TH, stats = dynamic.dynamic_experts(x_TH, routing, *weights)
        monkeypatch.setattr(dynamic, "host_numpy_applies", lambda x: False)
        y_torch_TH, stats_torch = dynamic.dynamic_experts(x_TH, routing, *weights)
    finally:
        torch.set_num_threads(before)
    assert calls == ([(1, H)] * numpy_experts if dtype == torch.float32 else [])
    assert y_TH.dtype == dtype and rel_err(y_TH, reference.moe_experts(x_TH, routing, *weights)) <= TOL[dtype]
    assert rel_err(y_TH, y_torch_TH) <= TOL[dtype] and stats.peak_extra_bytes == stats_torch.peak_extra_bytes
    assert stats.num_executed_rows == stats.num_useful_rows == int(routing.kept_Tk.sum())


def test_host_swiglu_matches_torch_without_overflow():
    """host_swiglu's logistic through tanh: silu(x @ w_gate) * (x @ w_up) @ w_down as torch computes it, for
    pre-activations of +-1e4 too (where 1 / (1 + exp(-h)) would overflow), with no numpy warning."""
    import warnings

    import numpy as np

    from moebench.kernels.common import MemoryMeter, host_swiglu

    g = torch.Generator().manual_seed(5)
    w_gate, w_up, w_down = (
        torch.randn(16, 24, generator=g),
        torch.randn(16, 24, generator=g),
        torch.randn(24, 16, generator=g),
    )
    for scale in (1.0, 1e4):
        x = torch.randn(1, 16, generator=g) * scale
        expect = (
            torch.nn.functional.silu(x.double() @ w_gate.double()) * (x.double() @ w_up.double())
        ) @ w_down.double()
        meter = MemoryMeter(torch.device("cpu"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = host_swiglu(x.numpy(), w_gate.numpy(), w_up.numpy(), w_down.numpy(), meter)
        assert out.shape == (1, 16) and out.dtype == np.float32 and np.isfinite(out).all()
        assert rel_err(torch.from_numpy(out), expect) <= 1e-5
        assert meter.peak == 2 * 24 * 4 and meter.live == 16 * 4  # h and up at once; the output still held


@pytest.mark.parametrize("cf", [None, 0.75])
def test_dynamic_gpu_torch_path_on_cpu_tensors(cf):
    """The GPU variant of dynamic's torch path (buffer + gather combine) computes the same y."""
    from moebench.kernels import dynamic
    from moebench.kernels.common import MemoryMeter

    H, F, E = 32, 48, 4
    routing = random_routing(37, E, 2, cf=cf)
    weights = make_weights(E, H, F)
    x_TH = make_x(37, H)
    y_TH = dynamic._experts_torch_gpu(x_TH, routing, *weights, MemoryMeter(x_TH.device))
    assert rel_err(y_TH, reference.moe_experts(x_TH, routing, *weights)) <= 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_accounting(impl):
    """padded computes E * C rows (Triton: whole BLOCK_M tiles per expert); dynamic (torch) on the CPU pads a
    small batch's active experts to the busiest (its batched path), a larger one and the GPU's exactly the kept
    rows, (triton) whole tiles; block_sparse whole blocks."""
    H, F, E = 32, 48, 4
    routing = forced_routing([[0, 1]] * 10 + [[0, 2]] * 3, E, block_size=16)  # counts 13, 10, 3, 0
    args = (make_x(13, H), routing, *make_weights(E, H, F))
    _, padded = EXPERT_KERNELS["padded"](*args, impl=impl)
    slots = 13 if impl == "torch" else PADDED_BLOCK_M  # C = 13 rows, or one whole tile per expert
    assert padded.executed_flops == 6 * H * F * E * slots and padded.padded_rows == E * 13 - 26
    assert padded.padding_waste == pytest.approx(E * slots / 26)
    _, dynamic = EXPERT_KERNELS["dynamic"](*args, impl=impl)
    batched = impl == "torch" and DEVICE == "cpu"  # the GPU's torch path runs exact rows
    if batched:  # busiest 13 <= BATCHED_ROWS: the batched CPU path pads the 3 active experts to 13 rows
        assert dynamic.executed_flops == 6 * H * F * 3 * 13 and dynamic.padded_rows == 3 * 13 - 26
    else:  # whole 16-row tiles (triton), exact rows (torch on a GPU); none held as padding in memory
        assert dynamic.padded_rows == 0 and dynamic.padding_waste == (1.0 if impl == "torch" else 3 * 16 / 26)
    # busiest 24 > BATCHED_ROWS, padding 96 rows for 48 (> PAD_WASTE_LIMIT): exact rows on any thread count
    many = forced_routing([[0, 1]] * 20 + [[0, 2]] * 3 + [[0, 3]], E, block_size=16)
    _, exact = EXPERT_KERNELS["dynamic"](make_x(24, H), many, *make_weights(E, H, F), impl=impl)
    assert exact.padded_rows == 0
    assert exact.padding_waste == (1.0 if impl == "torch" else 6 * 16 / 48)  # tiles: 2 + 2 + 1 + 1
    _, block_sparse = EXPERT_KERNELS["block_sparse"](*args, impl=impl)
    assert block_sparse.padded_rows == 3 * 16 - 26 and block_sparse.padding_waste == pytest.approx(48 / 26)


@pytest.mark.parametrize("cf", [None, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_loop_stats(cf, dtype):
    """The loop baseline computes exactly the kept rows (no padding) and meters the buffers it allocates."""
    H, F, E, T = 32, 48, 4, 37
    routing = random_routing(T, E, 2, cf=cf)
    x_TH = make_x(T, H, dtype)
    _, stats = get_kernel("loop")(x_TH, routing, *make_weights(E, H, F, dtype))
    num_kept = int(routing.kept_Tk.sum())
    assert stats.useful_flops == stats.executed_flops == 6 * H * F * num_kept
    assert stats.padding_waste == 1.0 and stats.padded_rows == 0
    assert stats.dropped == int(routing.num_dropped) == routing.num_assignments - num_kept
    assert (stats.dropped > 0) == (cf is not None)
    if DEVICE == "cpu":  # the ledger's peak: the busiest expert's x, gate and up rows (F > H), beside an fp32 y
        accumulator = 0 if dtype == torch.float32 else T * H * 4
        rows = int(routing.kept_counts_E.max())
        assert stats.peak_extra_bytes == accumulator + rows * (H + 2 * F) * x_TH.element_size()


@pytest.mark.parametrize("name,impl", PATHS)
def test_grouped_rows_as_k1(name, impl):
    """Rows that arrive grouped (after an all-to-all): k = 1, weight 1.0 gives each row's expert output."""
    H, F, E = 32, 48, 3
    ids_R1 = torch.tensor([[0]] * 5 + [[2]] * 4 + [[1]] * 2)
    routing = routing_from_topk(ids_R1.to(DEVICE), torch.ones(11, 1, device=DEVICE), E, block_size=16)
    x_RH = make_x(11, H)
    weights = make_weights(E, H, F)
    y_RH, _ = get_kernel(name)(x_RH, routing, *weights, impl=impl)
    expect_RH = torch.stack([reference.swiglu_expert(x_RH[r].double(), *(w[e].double() for w in weights)).cpu()
                             for r, e in enumerate(ids_R1[:, 0].tolist())])  # fmt: skip
    assert rel_err(y_RH, expect_RH) <= 1e-5


@pytest.mark.parametrize("name,impl", PATHS)
@pytest.mark.parametrize("R,as_list", [(11, True), (11, False), (300, False), (0, True)])
def test_rows_routing_matches_general_path(name, impl, R, as_list):
    """routing_for_rows (the layer's metadata for received rows: host lists at small R, tensors beyond
    HOST_ROWS) gives every kernel the same output as the general k = 1 path, with unsorted ids and an
    expert that gets no row."""
    H, F, E = 32, 48, 4
    ids_R = torch.randint(0, E - 1, (R,), generator=torch.Generator().manual_seed(R))  # expert E-1 empty
    rows = routing_for_rows(ids_R.tolist() if as_list else ids_R.to(DEVICE), E, block_size=16, device=DEVICE)
    general = routing_from_topk(ids_R.view(R, 1).to(DEVICE), torch.ones(R, 1, device=DEVICE), E, block_size=16)
    assert rows.sort_idx_A.tolist() == general.sort_idx_A.tolist()
    assert rows.offsets_list == general.offsets_E1.tolist() and rows.num_dropped == 0
    x_RH, weights = make_x(R, H), make_weights(E, H, F)
    y_RH, _ = get_kernel(name)(x_RH, rows, *weights, impl=impl)
    expect_RH, _ = get_kernel("loop")(x_RH, general, *weights)
    assert y_RH.shape == (R, H) and (R == 0 or rel_err(y_RH, expect_RH) <= 1e-5)


@pytest.mark.skipif(DEVICE != "cpu", reason="the torch path of dynamic is the CPU one")
def test_dynamic_torch_path_builds_no_block_layout():
    """Routing metadata is lazy: the dynamic torch path never asks for the block layout or tile maps."""
    routing = random_routing(5, 8, 2)
    get_kernel("dynamic")(make_x(5, 32), routing, *make_weights(8, 32, 48), impl="torch")
    assert "_blocks" not in vars(routing) and "sort_idx_A" in vars(routing)


@pytest.mark.parametrize(
    ("R", "dtype", "gemv"),
    [(1, torch.float32, True), (1, torch.float64, True), (2, torch.float32, False), (1, torch.bfloat16, False),
     (0, torch.float32, False)],
)  # fmt: skip
@pytest.mark.parametrize("threads", [1, 2])
def test_rows_matmul_takes_gemv_only_for_one_row_on_one_thread(R, dtype, gemv, threads):
    """One CPU row in float32/64 on one torch thread goes through numpy's gemv (with more threads, torch's
    parallel matmul); every case equals the float64 product."""
    x_RK, w_KN = torch.randn(R, 40, dtype=torch.float64), torch.randn(40, 24, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert host_gemv_applies(x_RK.to(dtype)) is (gemv and threads == 1)
        y_RN = rows_matmul(x_RK.to(dtype), w_KN.to(dtype))
    finally:
        torch.set_num_threads(before)
    assert y_RN.shape == (R, 24) and y_RN.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 2e-2
    assert R == 0 or rel_err(y_RN.double(), x_RK @ w_KN) <= tol


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter is for CPU runs")
def test_interpreter_is_on():
    assert interpreter_active(), "TRITON_INTERPRET=1 must be set before triton is first imported"


# ---------------------------------------------------------------------------------------------- bad input


def _args(T=5, H=32, F=48, E=4, dtype=torch.float32):
    return [make_x(T, H, dtype), random_routing(T, E, 2), *make_weights(E, H, F, dtype)]


def _with(index, value):
    args = _args()
    args[index] = value
    return args


BAD = {
    "x not 2-D": (_with(0, make_x(5, 32).view(5, 32, 1)), "x must be"),
    "hidden mismatch": (_with(0, make_x(5, 16)), "H=16"),
    "token count mismatch": (_with(0, make_x(6, 32)), "T=6"),
    "experts mismatch": (_with(1, random_routing(5, 3, 2)), "E=4"),
    "up shape": (_with(3, make_weights(4, 32, 40)[1]), "w_gate and w_up"),
    "down shape": (_with(4, make_weights(4, 32, 40)[2]), "w_down must be"),
    "dtype mismatch": (_with(2, make_weights(4, 32, 48, torch.bfloat16)[0]), "dtype"),
    "integer x": (_with(0, torch.ones(5, 32, dtype=torch.int32, device=DEVICE)), "x dtype"),
}


@pytest.mark.parametrize("name", [*KERNELS, *BASELINES])
@pytest.mark.parametrize("bad", list(BAD))
def test_bad_input(name, bad):
    args, message = BAD[bad]
    if bad == "dtype mismatch":
        args[3], args[4] = (w.to(torch.bfloat16) for w in args[3:5])  # only x is fp32
    with pytest.raises(ValueError, match=message):
        get_kernel(name)(*args)


@pytest.mark.parametrize("name", KERNELS)
def test_unknown_impl(name):
    with pytest.raises(ValueError, match="unknown impl 'cuda'"):
        EXPERT_KERNELS[name](*_args(), impl="cuda")


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_loop_has_only_a_torch_path(impl):
    with pytest.raises(ValueError, match=f"the loop baseline has only a torch path.*impl='{impl}'"):
        loop_experts(*_args(), impl=impl)


def test_get_kernel_finds_both_registries():
    assert get_kernel("loop") is BASELINES["loop"] is loop_experts
    for name, kernel in EXPERT_KERNELS.items():
        assert get_kernel(name) is kernel


def test_unknown_kernel():
    message = r"unknown expert kernel 'dense'; kernels: padded, dynamic, block_sparse; baselines: loop"
    with pytest.raises(ValueError, match=message):
        get_kernel("dense")
