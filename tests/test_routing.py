# T = tokens, E = experts, k = experts per token, A = T*k assignments, Q = block size, R = rows
"""Routing: the top-k softmax gate (torch and Triton), capacity and drops, and the layout metadata."""

import os

# Triton kernels on CPU tensors need the interpreter, chosen before triton is imported;
# MOEBENCH_TEST_DEVICE=cuda (scripts/gpu_check.sh) runs the same tests on the GPU, compiled.
os.environ["TRITON_INTERPRET"] = "1" if os.environ.get("MOEBENCH_TEST_DEVICE", "cpu") == "cpu" else "0"

import math

import pytest
import torch

from moebench.kernels import capacity_for, route, routing_for_rows, routing_from_topk, topk_softmax
from moebench.kernels.routing import HostRouting, Routing, route_host

DEVICE = os.environ.get("MOEBENCH_TEST_DEVICE", "cpu")


def logits(T: int, E: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, E, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


@pytest.mark.parametrize("T,E,k", [(1, 4, 1), (37, 8, 2), (70, 256, 8), (33, 128, 1), (5, 6, 6)])
def test_triton_gate_matches_torch(T, E, k):
    logits_TE = logits(T, E)
    ids_t, w_t = topk_softmax(logits_TE, k, impl="torch")
    ids_g, w_g = topk_softmax(logits_TE, k, impl="triton")
    assert torch.equal(ids_t, ids_g)
    torch.testing.assert_close(w_g, w_t, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_gate_weights_are_softmax_over_topk(impl):
    logits_TE = logits(20, 8).to(torch.bfloat16)
    r = route(logits_TE, 3, impl=impl)
    assert r.topk_ids_Tk.dtype == torch.int64 and r.topk_weights_Tk.dtype == torch.float32
    top_vals_Tk = torch.gather(logits_TE.float(), 1, r.topk_ids_Tk)
    torch.testing.assert_close(r.topk_weights_Tk, torch.softmax(top_vals_Tk, -1), rtol=1e-6, atol=1e-6)
    assert torch.equal(top_vals_Tk, logits_TE.float().topk(3).values)


def on_cpu(r):
    return r.to("cpu")


def check_layout(r):
    """Invariants every Routing satisfies."""
    r = on_cpu(r)
    T, k, E = r.num_tokens, r.top_k, r.num_experts
    ids_A = r.topk_ids_Tk.reshape(-1)
    kept_A = r.kept_Tk.reshape(-1)
    assert torch.equal(r.counts_E, torch.bincount(ids_A, minlength=E))
    assert torch.equal(r.kept_counts_E, torch.bincount(ids_A[kept_A], minlength=E))
    assert int(r.num_dropped) == int((~kept_A).sum())
    assert sorted(r.sort_idx_A.tolist()) == list(range(T * k))  # a permutation
    for e in range(E):
        seg = r.sort_idx_A[r.offsets_E1[e] : r.offsets_E1[e + 1]]
        assert (ids_A[seg] == e).all() and kept_A[seg].all()
    assert not kept_A[r.sort_idx_A[r.offsets_E1[E] :]].any()  # dropped ones last
    # kept assignments sit at offsets[e] + rank
    pos_Tk = r.sorted_pos_Tk
    assert torch.equal(r.sort_idx_A[pos_Tk[r.kept_Tk]], torch.arange(T * k).view(T, k)[r.kept_Tk])
    # block layout
    Q = r.block_size
    padded_E = r.block_offsets_E1.diff()
    assert (padded_E % Q == 0).all() and (padded_E >= r.kept_counts_E).all() and (padded_E - r.kept_counts_E < Q).all()
    used = r.tile_expert_B >= 0
    assert int(used.sum()) == int(padded_E.sum()) // Q <= r.max_tiles
    assert not used[int(used.sum()) :].any()  # used tiles first
    for b in range(int(used.sum())):
        e, row = int(r.tile_expert_B[b]), int(r.tile_row_B[b])
        assert r.offsets_E1[e] <= row < r.offsets_E1[e + 1] and (row - r.offsets_E1[e]) % Q == 0
    # every kept row is covered by exactly one tile
    covered = torch.zeros(T * k, dtype=torch.int64)
    for b in range(int(used.sum())):
        e, row = int(r.tile_expert_B[b]), int(r.tile_row_B[b])
        covered[row : min(row + Q, int(r.offsets_E1[e + 1]))] += 1
    assert (covered[: int(r.offsets_E1[E])] == 1).all() and (covered[int(r.offsets_E1[E]) :] == 0).all()


@pytest.mark.parametrize("cf", [None, 0.25, 1.0, 8.0])
@pytest.mark.parametrize("T,E,k,Q", [(1, 4, 2, 16), (37, 8, 2, 16), (100, 16, 4, 32), (64, 4, 4, 16)])
def test_layout_invariants(T, E, k, Q, cf):
    check_layout(route(logits(T, E), k, capacity_factor=cf, block_size=Q))


def test_sort_is_stable_in_token_order():
    r = routing_from_topk(torch.tensor([[1, 0], [0, 1], [1, 2], [0, 2]]), torch.full((4, 2), 0.5), 3)
    assert r.sort_idx_A.tolist() == [1, 2, 6, 0, 3, 4, 5, 7]
    assert r.offsets_E1.tolist() == [0, 3, 6, 8]


def test_capacity_position_policy_keeps_first_tokens():
    T, E, k = 10, 2, 1
    ids_Tk = torch.tensor([[0]] * 8 + [[1]] * 2)
    r = routing_from_topk(ids_Tk, torch.ones(T, k), E, capacity_factor=0.6)
    assert r.capacity == math.ceil(0.6 * T * k / E) == 3
    assert r.kept_Tk[:, 0].tolist() == [True] * 3 + [False] * 5 + [True] * 2
    assert int(r.num_dropped) == 5
    assert r.counts_E.tolist() == [8, 2] and r.kept_counts_E.tolist() == [3, 2]


def test_capacity_weight_policy_keeps_heaviest():
    ids_Tk = torch.zeros(5, 1, dtype=torch.int64)
    weights_Tk = torch.tensor([[0.1], [0.9], [0.3], [0.8], [0.2]])
    r = routing_from_topk(ids_Tk, weights_Tk, 2, capacity_factor=0.8, drop_policy="weight")
    assert r.capacity == 2
    assert r.kept_Tk[:, 0].tolist() == [False, True, False, True, False]
    check_layout(r)


def test_capacity_formula():
    assert capacity_for(128, 8, 256, 1.0) == 4
    assert capacity_for(4096, 2, 8, 1.25) == 1280
    assert capacity_for(3, 1, 128, 1.0) == 1
    assert capacity_for(10, 2, 4, None) is None


def test_with_block_size():
    r = route(logits(50, 8), 2, block_size=16)
    r64 = r.with_block_size(64)
    assert r64.block_size == 64 and torch.equal(r64.sort_idx_A, r.sort_idx_A)
    check_layout(r64)


def test_grouped_rows_routing():
    """k = 1 over rows already grouped by expert: the permutation is the identity."""
    ids_R1 = torch.tensor([[0]] * 3 + [[1]] * 0 + [[2]] * 4)
    r = routing_from_topk(ids_R1, torch.ones(7, 1), 3)
    assert r.sort_idx_A.tolist() == list(range(7)) and r.offsets_E1.tolist() == [0, 3, 3, 7]


@pytest.mark.parametrize("cf", [None, 0.5])
@pytest.mark.parametrize("T,E,k", [(1, 8, 2), (16, 8, 2), (3, 4, 4), (2, 32, 1)])
def test_host_gate_is_the_torch_gate(T, E, k, cf):
    """route_host on the host logits makes route's choice, weights and layout (a HostRouting, lists first)."""
    logits_TE = logits(T, E, seed=T + E).cpu()
    host, ref = route_host(logits_TE.tolist(), k, cf), route(logits_TE, k, cf)
    assert isinstance(host, HostRouting) and host.num_tokens == T and host.top_k == k and host.device.type == "cpu"
    assert "topk_ids_Tk" not in vars(host)  # no tensor until asked for
    assert host.topk_ids_list == ref.topk_ids_Tk.view(-1).tolist()
    torch.testing.assert_close(host.topk_weights_Tk, ref.topk_weights_Tk, rtol=1e-6, atol=1e-7)
    assert host.capacity == ref.capacity and torch.equal(host.kept_Tk, ref.kept_Tk)
    assert torch.equal(host.sort_idx_A, ref.sort_idx_A) and host.offsets_list == ref.offsets_list
    check_layout(host)
    assert type(host.to("cpu")) is Routing


def test_host_gate_breaks_ties_to_the_lower_expert():
    host = route_host([[0.5, 2.0, 2.0, 2.0]], 2)
    assert host.topk_ids_list == [1, 2] and host.topk_weights_list == [0.5, 0.5]


@pytest.mark.parametrize("ids", [[2, 0, 2, 1, 0], [3], [], [1, 1, 1]])
def test_grouped_rows_on_the_host_match_the_tensor_path(ids):
    """routing_for_rows from a host list (HostRouting, lists only) and from a tensor give one layout."""
    host, ref = routing_for_rows(ids, 4), routing_for_rows(torch.tensor(ids, dtype=torch.int64), 4)
    assert isinstance(host, HostRouting) and host.unit_weights and host.num_assignments == len(ids)
    assert host.sort_idx_list == ref.sort_idx_list and host.offsets_list == ref.offsets_list
    assert torch.equal(host.sort_idx_A, ref.sort_idx_A) and torch.equal(host.topk_weights_Tk, ref.topk_weights_Tk)
    check_layout(host)


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU: MOEBENCH_TEST_DEVICE=cuda (scripts/gpu_check.sh)")
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_route_never_syncs_on_gpu(impl):
    logits_TE = logits(256, 64)
    route(logits_TE, 4, capacity_factor=1.0, impl=impl)  # warm up (compilation)
    torch.cuda.set_sync_debug_mode("error")
    try:
        route(logits_TE, 4, capacity_factor=1.0, impl=impl)
    finally:
        torch.cuda.set_sync_debug_mode("default")


BAD = [
    (lambda: route(logits(4, 4), 5), "k must be in 1..E=4"),
    (lambda: route(logits(4, 4), 0), "k must be in"),
    (lambda: route(logits(4, 4), 2, capacity_factor=0), "capacity_factor must be a positive"),
    (lambda: route(logits(4, 4), 2, capacity_factor=-1.0), "capacity_factor must be a positive"),
    (lambda: route(logits(4, 4), 2, capacity_factor=float("nan")), "capacity_factor must be a positive"),
    (lambda: route(logits(4, 4), 2, drop_policy="random"), "unknown drop_policy 'random'"),
    (lambda: route(logits(4, 4), 2, block_size=24), "block_size must be a power of two"),
    (lambda: route(logits(4, 4), 2, impl="cuda"), "unknown impl 'cuda'"),
    (lambda: route(logits(4, 4)[0], 2), r"logits must be a float \[T, E\]"),
    (lambda: routing_from_topk(torch.tensor([[0, 4]]), torch.ones(1, 2), 4), r"expert ids must be in 0\.\.3"),
    (lambda: routing_from_topk(torch.tensor([[-1]]), torch.ones(1, 1), 4), r"expert ids must be in 0\.\.3"),
    (lambda: routing_from_topk(torch.tensor([[0, 1]]), torch.ones(1, 3), 4), "must both be"),
    (lambda: routing_from_topk(torch.ones(1, 2), torch.ones(1, 2), 4), "integer"),
    (lambda: routing_from_topk(torch.tensor([[0, 1, 2]]), torch.ones(1, 3), 2), "k must be in 1..E=2"),
]


@pytest.mark.parametrize("call,message", BAD)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
