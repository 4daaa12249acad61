# T = tokens, E = experts, k = experts per token, K = experts a router picks, P = ranks, G = ranks per node,
# N = nodes, R = redundant experts, A = assignments
"""Routers, placements, traces and the balance study, each against a plain reference on random and adversarial
inputs (one hot expert, an expert with no tokens, P = 1, R = 0, T = 1, k = E)."""

from __future__ import annotations

import os

# the routers import the kernels (and triton): CPU tensors need the interpreter, chosen before triton is imported
os.environ["TRITON_INTERPRET"] = "1" if os.environ.get("MOEBENCH_TEST_DEVICE", "cpu") == "cpu" else "0"

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from moebench.bench.commands import balance as balance_cmd
from moebench.bench.layer import balance, skews, traces
from moebench.bench.layer.placements import PLACEMENTS, fit_placement
from moebench.bench.layer.presets import get_preset
from moebench.kernels import route
from moebench.kernels.routers import ROUTERS, RouterInput, parse_router
from moebench.kernels.routers.hash_layer import expert_hash
from moebench.kernels.routers.task import REQUEST_TOKENS, task_experts
from moebench.kernels.routing import capacity_for


def logits(T: int, E: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, E, generator=torch.Generator().manual_seed(seed))


def one_hot_logits(T: int, E: int, hot: int = 0, seed: int = 0) -> torch.Tensor:
    """Every token prefers expert `hot` by a wide margin (the gate's worst case)."""
    out = logits(T, E, seed)
    out[:, hot] += 100.0
    return out


# ---------------------------------------------------------------------------------------------- routers


def test_router_grammar():
    assert [str(parse_router(s)) for s in ("topk", "capacity-aware", "topk-switch:1", "hash", "task", "task:7")] == [
        "topk", "capacity-aware", "topk-switch:1", "hash", "task:4", "task:7"]  # fmt: skip
    for bad in ("top", "topk-switch", "topk-switch:0", "topk-switch:1.5", "task:0", "hash:3", "topk:2", "topk-group:0"):
        with pytest.raises(ValueError, match="bad router"):
            parse_router(bad)
    assert set(ROUTERS) == {"topk", "capacity-aware", "topk-switch", "hash", "task", "task-local", "topk-group"}
    assert str(parse_router("topk-group")) == "topk-group" and str(parse_router("topk-group:2")) == "topk-group:2"


@pytest.mark.parametrize("cf", [None, 1.0, 2.0])
@pytest.mark.parametrize("T,E,k", [(50, 8, 2), (1, 4, 1), (9, 5, 5), (64, 256, 8)])
def test_topk_router_is_the_gate(T, E, k, cf):
    lg = logits(T, E)
    routed = parse_router("topk")(RouterInput(lg, k, cf))
    gate = route(lg, k, cf)
    assert torch.equal(routed.routing.topk_ids_Tk, gate.topk_ids_Tk)
    torch.testing.assert_close(routed.routing.topk_weights_Tk, gate.topk_weights_Tk)
    assert torch.equal(routed.routing.kept_Tk, gate.kept_Tk) and not routed.rerouted_Tk.any()


@pytest.mark.parametrize(
    "case", ["random", "one-hot", "no-tokens-for-an-expert", "T=1", "k=E", "deepseek-shape", "tight-cf", "roomy"]
)
def test_capacity_aware_router_keeps_its_promises(case):
    T, E, k, cf = {"random": (60, 8, 2, 1.0), "one-hot": (40, 8, 2, 1.0), "no-tokens-for-an-expert": (30, 8, 2, 1.0),
                   "T=1": (1, 4, 2, 1.0), "k=E": (12, 4, 4, 1.0), "deepseek-shape": (64, 256, 8, 1.0),
                   "tight-cf": (50, 8, 2, 0.5), "roomy": (50, 8, 2, 4.0)}[case]  # fmt: skip
    lg = one_hot_logits(T, E) if case == "one-hot" else logits(T, E, seed=3)
    if case == "no-tokens-for-an-expert":
        lg[:, 5] = -1e9  # never anyone's choice, yet a spare for overflow
    routed = parse_router("capacity-aware")(RouterInput(lg, k, cf))
    gate = route(lg, k, cf)
    routing, moved_Tk = routed.routing, routed.rerouted_Tk
    capacity = capacity_for(T, k, E, cf)
    ids_Tk, kept_Tk = routing.topk_ids_Tk, routing.kept_Tk
    assert (ids_Tk.sort(dim=1).values.diff(dim=1) != 0).all()  # distinct per token
    assert torch.equal(torch.bincount(ids_Tk[kept_Tk], minlength=E), routing.kept_counts_E)
    assert int(routing.kept_counts_E.max()) <= capacity
    # an assignment not rerouted sits in its gate slot; one is rerouted only when its gate choice ends up full
    assert torch.equal(ids_Tk[~moved_Tk], gate.topk_ids_Tk[~moved_Tk])
    assert (routing.kept_counts_E[gate.topk_ids_Tk[moved_Tk]] == capacity).all()
    assert not (moved_Tk & ~kept_Tk).any()
    torch.testing.assert_close(routing.topk_weights_Tk, torch.softmax(torch.gather(lg, 1, ids_Tk), -1))
    dropped, gate_dropped = int(routing.num_dropped), int(gate.num_dropped)
    if cf >= 1.0 and k < E:  # the experts hold every assignment: nothing drops
        assert dropped == 0
    if case in ("random", "one-hot", "no-tokens-for-an-expert", "deepseek-shape"):
        assert gate_dropped > 0 and moved_Tk.any()
    if case == "roomy":  # nothing overflows: the gate's own choice
        assert gate_dropped == 0 and torch.equal(ids_Tk, gate.topk_ids_Tk) and not moved_Tk.any()
    if case == "tight-cf":  # room for half: exactly the capacity is kept
        assert int(kept_Tk.sum()) == E * capacity


def test_capacity_aware_moves_an_earlier_token_when_only_its_own_experts_have_room():
    # E=3, k=2, T=3, cf 1.0: capacity 2. Tokens 0 and 1 take {0, 1}; token 2 prefers {0, 1} too, both full; its
    # slot 0 goes to the spare expert 2 (rerouted); for slot 1 only expert 2 has room, which it holds, so token 0
    # moves from expert 1 to 2 (rerouted) and token 2 keeps its own gate choice 1 (not rerouted).
    lg = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    routed = parse_router("capacity-aware")(RouterInput(lg, 2, 1.0))
    assert int(routed.routing.num_dropped) == 0 and int(route(lg, 2, 1.0).num_dropped) == 2
    assert routed.routing.topk_ids_Tk.tolist() == [[0, 2], [0, 1], [2, 1]]
    assert routed.rerouted_Tk.tolist() == [[False, True], [False, False], [True, False]]


def test_capacity_aware_never_gives_a_token_an_expert_twice():
    lg = torch.randn(11, 8, generator=torch.Generator().manual_seed(156))  # a swap once took a slot's gate choice
    for cf in (0.5, 0.75, 1.0):
        routed = parse_router("capacity-aware")(RouterInput(lg, 7, cf))
        assert (routed.routing.topk_ids_Tk.sort(dim=1).values.diff(dim=1) != 0).all()
        assert not balance.routing_problems(routed, 8)


def test_capacity_aware_without_capacity_is_topk():
    lg = logits(20, 8)
    a, b = parse_router("capacity-aware")(RouterInput(lg, 2)), parse_router("topk")(RouterInput(lg, 2))
    assert torch.equal(a.routing.topk_ids_Tk, b.routing.topk_ids_Tk) and not a.rerouted_Tk.any()


@pytest.mark.parametrize("k,k2", [(2, 1), (8, 4), (8, 1)])
def test_topk_switch_runs_fewer_experts_of_the_same_gate(k, k2):
    lg = logits(33, 16)
    routed = parse_router(f"topk-switch:{k2}")(RouterInput(lg, k, 1.0))
    assert torch.equal(routed.routing.topk_ids_Tk, lg.topk(k2).indices)
    torch.testing.assert_close(routed.routing.topk_weights_Tk, torch.softmax(lg.topk(k2).values, -1))
    assert routed.routing.capacity == capacity_for(33, k2, 16, 1.0)


def test_topk_switch_needs_fewer_than_k():
    with pytest.raises(ValueError, match="1 <= K2 < k"):
        parse_router("topk-switch:2")(RouterInput(logits(4, 8), 2))


@pytest.mark.parametrize("E,k", [(8, 2), (256, 8), (128, 1), (4, 4)])
def test_hash_router_is_balanced_and_ignores_the_gate(E, k):
    T = 4 * E
    ids = torch.arange(1000, 1000 + T)
    a = parse_router("hash")(RouterInput(logits(T, E, 1), k, None, ids))
    b = parse_router("hash")(RouterInput(one_hot_logits(T, E), k, None, ids))
    assert torch.equal(a.routing.topk_ids_Tk, b.routing.topk_ids_Tk)
    ids_Tk = a.routing.topk_ids_Tk
    assert (ids_Tk.sort(dim=1).values.diff(dim=1) != 0).all()
    for t, v in enumerate(ids.tolist()):  # the formula, by hand
        h = ((v * 2654435761) % 2**32) * E // 2**32
        assert ids_Tk[t].tolist() == [(h + j * (E // k)) % E for j in range(k)]
    counts_E = a.routing.counts_E
    assert counts_E.max() - counts_E.min() <= max(2, T * k // E // 4)  # consecutive ids spread evenly
    torch.testing.assert_close(a.routing.topk_weights_Tk, torch.full((T, k), 1.0 / k))


def test_task_router_pins_each_request_to_its_tasks_experts():
    T, E, k, N = 48, 16, 2, 4
    lg = logits(T, E, 2)
    token_ids = torch.arange(T)
    routed = parse_router(f"task:{N}")(RouterInput(lg, k, None, token_ids))
    task_T = expert_hash(token_ids // REQUEST_TOKENS, N)
    experts_Nk = task_experts(N, E, k)
    for t in range(T):
        got = routed.routing.topk_ids_Tk[t]
        assert sorted(got.tolist()) == sorted(experts_Nk[task_T[t]].tolist())
        assert lg[t, got[0]] >= lg[t, got[1]]  # descending logit order
        torch.testing.assert_close(routed.routing.topk_weights_Tk[t], torch.softmax(lg[t, got], -1))
    given = parse_router("task:2")(RouterInput(lg, k, None, token_ids, torch.ones(T, dtype=torch.int64)))
    assert set(given.routing.topk_ids_Tk.view(-1).tolist()) == set(task_experts(2, E, k)[1].tolist())
    with pytest.raises(ValueError, match=r"task ids must be in 0\.\.1"):
        parse_router("task:2")(RouterInput(lg, k, None, token_ids, torch.full((T,), 2)))


def topk_group_reference(lg: torch.Tensor, k: int, groups: int, keep: int) -> list[list[int]]:
    """Plain loops: group score = sum of its two best probabilities; top `keep` groups; top k experts inside."""
    E = lg.shape[1]
    width = E // groups
    out = []
    for row in torch.softmax(lg.double(), -1).tolist():
        scores = [sum(sorted(row[g * width : (g + 1) * width], reverse=True)[:2]) for g in range(groups)]
        kept = sorted(range(groups), key=lambda g: -scores[g])[:keep]
        allowed = [e for e in range(E) if e // width in kept]
        out.append(sorted(allowed, key=lambda e: -row[e])[:k])
    return out


@pytest.mark.parametrize(
    "T,E,k,groups,keep", [(40, 256, 8, 8, 4), (20, 16, 2, 4, 1), (5, 8, 8, 2, 2), (1, 32, 4, 8, 2)]
)
def test_topk_group_router_matches_a_plain_loop(T, E, k, groups, keep):
    lg = logits(T, E, 7)
    routed = parse_router(f"topk-group:{keep}")(RouterInput(lg, k, None, None, None, groups, 1))
    assert routed.routing.topk_ids_Tk.tolist() == topk_group_reference(lg, k, groups, keep)
    width = E // groups
    assert all(len({e // width for e in row}) <= keep for row in routed.routing.topk_ids_Tk.tolist())
    bare = parse_router("topk-group")(RouterInput(lg, k, None, None, None, groups, keep))  # the model's own TG
    assert torch.equal(bare.routing.topk_ids_Tk, routed.routing.topk_ids_Tk)
    with pytest.raises(ValueError, match="TG \\* E/NG >= k"):
        parse_router("topk-group:1")(RouterInput(lg, E // groups + 1, None, None, None, groups, 1))


def test_task_local_serves_each_rank_its_own_task():
    E, k, P = 16, 2, 4
    lg = logits(10, E, 3)
    for part in range(P):
        routed = parse_router("task-local")(RouterInput(lg, k, None, None, None, 1, 1, part, P))
        assert set(routed.routing.topk_ids_Tk.view(-1).tolist()) <= set(range(part * E // P, (part + 1) * E // P))
    two = parse_router("task-local:2")(RouterInput(lg, k, None, None, None, 1, 1, 3, P))  # parts 2, 3 -> task 1
    assert set(two.routing.topk_ids_Tk.view(-1).tolist()) == set(task_experts(2, E, k)[1].tolist())
    rows = balance.study(small_config(routers=[parse_router("task-local")], placements=["contiguous"]))
    assert rows[0]["intra_bytes"] == rows[0]["inter_bytes"] == 0 < rows[0]["local_bytes"]


# ---------------------------------------------------------------------------------------------- placements


def check_placement(pl, E: int, P: int, G: int, R: int) -> None:
    assert len(pl.expert_S) == E + R and pl.redundant == R
    assert all(len(held) == (E + R) // P for held in pl.experts_P)
    assert all(slots for slots in pl.slots_E)
    for slots in pl.slots_E:  # no two replicas of an expert on one rank
        assert len({pl.rank_S[s] for s in slots}) == len(slots)


def test_contiguous_is_the_layers_layout():
    pl = fit_placement("contiguous", torch.rand(2, 16), 4, 2)
    assert pl.experts_P == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    with pytest.raises(ValueError, match="holds no redundant experts"):
        fit_placement("contiguous", torch.rand(2, 16), 4, 2, redundant=4)


def test_eplb_without_redundant_experts_is_a_balanced_permutation():
    load_NE = torch.tensor([[9.0, 1, 1, 1, 8, 1, 1, 2]])
    pl = fit_placement("eplb", load_NE, 2, 2, 0)
    check_placement(pl, 8, 2, 2, 0)
    assert sorted(pl.expert_S) == list(range(8))
    rank_load = [sum(load_NE[0, e].item() for e in held) for held in pl.experts_P]
    assert max(rank_load) == 12  # the best split of 24 with 4 experts a side: {9,1,1,1} / {8,2,1,1}


@pytest.mark.parametrize("name", ["eplb", "hierarchical"])
def test_one_hot_expert_is_replicated_onto_distinct_ranks(name):
    E, P, G, R = 16, 4, 2, 4
    load_NE = torch.ones(2, E)
    load_NE[:, 3] = 100.0
    pl = fit_placement(name, load_NE, P, G, R)
    check_placement(pl, E, P, G, R)
    if name == "eplb":
        assert len(pl.slots_E[3]) == P  # the hot one gets every rank it can use; one more spare replica
    else:
        assert len(pl.slots_E[3]) == G and len({pl.node_of(pl.rank_S[s]) for s in pl.slots_E[3]}) == 1
    contiguous = fit_placement("contiguous", load_NE, P, G)
    dest = {}
    for p_ in (pl, contiguous):
        expert_A = torch.tensor([3] * 200 + list(range(E)) * 2)
        source_A = torch.arange(expert_A.numel()) % P
        dest[p_.name] = torch.bincount(p_.rank_of_slots(p_.dispatch(expert_A, source_A)), minlength=P)
    assert dest[name].max() < dest["contiguous"].max()


def test_hierarchical_keeps_every_expert_inside_one_node():
    E, P, G, R = 32, 8, 2, 8
    load_NE = torch.rand(4, E, generator=torch.Generator().manual_seed(1)) * 10
    pl = fit_placement("hierarchical", load_NE, P, G, R)
    check_placement(pl, E, P, G, R)
    for slots in pl.slots_E:
        assert len({pl.node_of(pl.rank_S[s]) for s in slots}) == 1
    per_node = [sum(1 for e in set(pl.experts_P[2 * n] + pl.experts_P[2 * n + 1])) for n in range(4)]
    assert per_node == [E // 4] * 4


def test_hierarchical_keeps_each_expert_group_on_one_node():
    E, P, G, R, groups = 64, 8, 2, 8, 4
    load_NE = torch.rand(4, E, generator=torch.Generator().manual_seed(2)) * 10
    pl = fit_placement("hierarchical", load_NE, P, G, R, groups)
    check_placement(pl, E, P, G, R)
    width = E // groups
    for g in range(groups):
        nodes = {pl.node_of(pl.rank_S[s]) for e in range(g * width, (g + 1) * width) for s in pl.slots_E[e]}
        assert len(nodes) == 1
    assert sorted(pl.node_of(pl.rank_S[pl.slots_E[g * width][0]]) for g in range(groups)) == [0, 1, 2, 3]


def test_one_rank_and_bad_shapes():
    pl = fit_placement("eplb", torch.rand(1, 8), 1, 1, 0)
    assert pl.experts_P == [sorted(range(8))] or sorted(pl.experts_P[0]) == list(range(8))
    for args, match in [(("eplb", torch.rand(1, 8), 1, 1, 2), "one replica per rank"),
                        (("eplb", torch.rand(2, 8), 4, 2, 1), "multiple of P"),
                        (("hierarchical", torch.rand(4, 6), 4, 1, 2), "multiples of the 4 nodes"),
                        (("hierarchical", torch.rand(2, 8), 2, 1, 2), "one replica per rank"),
                        (("eplb", torch.rand(3, 8), 4, 2, 0), r"\[nodes, experts\]"),
                        (("nope", torch.rand(1, 8), 1, 1, 0), "unknown placement")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            fit_placement(*args)


def dispatch_reference(pl, expert_A, source_A):
    """Plain loop: per source rank, the replica it sent the fewest so far, ties to its node, then the lower slot."""
    load = [[0] * len(pl.expert_S) for _ in range(pl.num_ranks)]
    out = []
    for e, src in zip(expert_A.tolist(), source_A.tolist()):
        slots = [s for s, x in enumerate(pl.expert_S) if x == e]
        here = src // pl.ranks_per_node
        best = sorted(slots, key=lambda s: (load[src][s], pl.rank_S[s] // pl.ranks_per_node != here, s))
        load[src][best[0]] += 1
        out.append(best[0])
    return out


@pytest.mark.parametrize("name", list(PLACEMENTS))
def test_dispatch_matches_a_plain_loop(name):
    E, P, G = 16, 4, 2
    R = 8 if PLACEMENTS[name].replicates else 0
    gen = torch.Generator().manual_seed(5)
    load_NE = torch.rand(2, E, generator=gen) ** 4 * 100
    pl = fit_placement(name, load_NE, P, G, R)
    expert_A = torch.randint(0, E, (500,), generator=gen)
    source_A = torch.randint(0, P, (500,), generator=gen)
    slot_A = pl.dispatch(expert_A, source_A)
    assert slot_A.tolist() == dispatch_reference(pl, expert_A, source_A)
    assert torch.equal(torch.tensor(pl.expert_S)[slot_A], expert_A)
    assert pl.dispatch(expert_A[:0], source_A[:0]).numel() == 0
    local = pl.local_index_S
    for rank, held in enumerate(pl.experts_P):
        mine = [s for s in range(len(pl.expert_S)) if pl.rank_S[s] == rank]
        assert [local[s] for s in mine] == list(range(len(held))) and [pl.expert_S[s] for s in mine] == held


# ---------------------------------------------------------------------------------------------- workloads


def test_forced_logits_keep_the_forced_choice_and_the_gates_order():
    lg = logits(40, 16, 4)
    ids_Tk, w_Tk = skews.sample_topk("zipf:1.2", 40, 16, 4, seed=2)
    forced = skews.forced_logits(lg, ids_Tk, w_Tk)
    vals, top = forced.topk(4)
    assert torch.equal(top, ids_Tk)
    torch.testing.assert_close(torch.softmax(vals, -1), w_Tk, rtol=1e-5, atol=1e-6)
    rest = torch.ones_like(lg, dtype=torch.bool).scatter_(1, ids_Tk, False)
    assert torch.equal(forced[rest], lg[rest])
    all_E = skews.sample_topk("uniform", 5, 4, 4, seed=1)  # k = E: nothing left outside the choice
    assert torch.equal(skews.forced_logits(logits(5, 4), *all_E).topk(4).indices, all_E[0])


def test_nodeskew_balances_nodes_and_skews_their_ranks():
    E, k, P, G, S = 64, 4, 4, 2, 2.0
    ids_Tk, _ = skews.sample_topk(f"nodeskew:{S}", 20000, E, k, seed=0, layout=(P, G))
    assert (ids_Tk.sort(dim=1).values.diff(dim=1) != 0).all()
    rank_P = torch.bincount(ids_Tk.view(-1) // (E // P), minlength=P).double()
    node_N = rank_P.view(2, 2).sum(1)
    assert abs(node_N[0] / node_N[1] - 1) < 0.03
    ratio = rank_P[0] / rank_P[1]
    assert 1.6 < ratio < 3.0, ratio  # first rank of a node is hotter (distinct-per-token sampling flattens 1+S)
    with pytest.raises(ValueError, match="nodeskew needs the cluster's shape"):
        skews.sample_topk("nodeskew:1", 10, E, k)


def test_batch_spread_draws_rank_batches_in_the_band():
    cfg = balance.BalanceConfig(get_preset("mixtral-8x7b-tiny"), 4, 2, 100, [], [], [], batch_spread=0.5)
    sizes = [balance.rank_tokens(cfg, b) for b in range(10)]
    flat = [t for s in sizes for t in s]
    assert min(flat) >= 50 and max(flat) <= 150 and len(set(flat)) > 4
    assert sizes == [balance.rank_tokens(cfg, b) for b in range(10)]  # deterministic


# ---------------------------------------------------------------------------------------------- traces


def write(tmp_path, data, name="t.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def good_trace(E=8, k=2):
    return traces.trace_document([torch.tensor([[0, 1], [2, 3], [7, 6]]), torch.tensor([[5, 4]])], None, E, k)


def test_trace_write_read_replay_is_identical(tmp_path):
    ids = [skews.sample_topk("zipf:1.2", 24, 8, 2, seed=s)[0] for s in range(3)]
    weights = [skews.sample_topk("zipf:1.2", 24, 8, 2, seed=s)[1] for s in range(3)]
    path = tmp_path / "trace.json"
    traces.write_trace(path, traces.trace_document(ids, weights, 8, 2, "mixtral-8x7b-tiny", "test"))
    trace = traces.load_trace(str(path))
    assert (trace.num_experts, trace.top_k, trace.model) == (8, 2, "mixtral-8x7b-tiny")
    skew = skews.parse_skew(f"trace:{path}")
    for batch in range(6):
        for part in range(3):  # rank `part` gets tokens part*8 .. part*8+7 of the step
            got_ids, got_w = skews.sample_topk(skew, 8, 8, 2, seed=9, batch=batch, part=part)
            assert torch.equal(got_ids, ids[batch % 3][part * 8 : part * 8 + 8])
            torch.testing.assert_close(got_w, weights[batch % 3][part * 8 : part * 8 + 8], atol=1e-6, rtol=0)


def test_counts_steps_replay_in_proportion(tmp_path):
    doc = {"format": traces.FORMAT, "version": 1, "num_experts": 4, "top_k": 1,
           "layers": [{"layer": 3, "steps": [{"counts": [70, 20, 10, 0]}]}]}  # fmt: skip
    path = write(tmp_path, doc)
    ids_Tk, _ = skews.sample_topk(f"trace:{path}@3", 20000, 4, 1, seed=1)
    share = torch.bincount(ids_Tk.view(-1), minlength=4).double() / 20000
    assert abs(share[0] - 0.7) < 0.02 and abs(share[2] - 0.1) < 0.02 and share[3] == 0


BAD_TRACES = {
    "truncated": (lambda: json.dumps(good_trace())[:-40], "not valid JSON"),
    "not a trace": (lambda: {"steps": []}, "not a routing trace"),
    "expert out of range": (lambda: good_trace(E=4), "expert ids must be in 0..3"),
    "wrong k in a row": (lambda: {**good_trace(), "top_k": 3}, "rows of k = 3"),
    "duplicate expert": (lambda: traces.trace_document([torch.tensor([[1, 1]])], None, 8, 2), "same expert twice"),
    "bad counts": (lambda: {**good_trace(), "layers": [{"steps": [{"counts": [1, 2]}]}]}, "counts must be 8"),
    "empty layers": (lambda: {**good_trace(), "layers": []}, "layers must be a non-empty list"),
    "version": (lambda: {**good_trace(), "version": 2}, "version 2 is not supported"),
    "float ids": (lambda: {**good_trace(), "layers": [{"steps": [{"topk_ids": [[0.5, 1.7]]}]}]}, "hold integers"),
    "nan weights": (
        lambda: {
            **good_trace(),
            "layers": [{"steps": [{"topk_ids": [[0, 1]], "topk_weights": [[float("nan"), 1.0]]}]}],
        },
        "finite and >= 0",
    ),
    "layer twice": (lambda: {**good_trace(), "layers": [good_trace()["layers"][0]] * 2}, "layer 0 appears twice"),
    "layer not an int": (
        lambda: {**good_trace(), "layers": [{"layer": [1], "steps": [{"counts": [2] * 8}]}]},
        "layer must be a non-negative integer",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TRACES))
def test_bad_traces_get_one_clear_line(tmp_path, case):
    make, match = BAD_TRACES[case]
    path = write(tmp_path, make(), f"{case.replace(' ', '_')}.json")
    with pytest.raises(traces.TraceError, match=match) as info:
        traces.load_trace(path)
    assert "\n" not in str(info.value) and path in str(info.value)


def test_replay_with_different_rank_batches_starts_each_rank_at_its_own_row(tmp_path):
    ids = skews.sample_topk("uniform", 30, 8, 2, seed=4)[0]
    path = tmp_path / "spread.json"
    traces.write_trace(path, traces.trace_document([ids], None, 8, 2))
    first = 0
    for part, T in enumerate([7, 12, 11]):  # ranks of different batch sizes, in rank order
        got, _ = skews.sample_topk(f"trace:{path}", T, 8, 2, part=part, first_row=first)
        assert torch.equal(got, ids[first : first + T])
        first += T


def test_a_trace_for_another_model_is_refused(tmp_path):
    skew = skews.parse_skew(f"trace:{write(tmp_path, good_trace())}")
    with pytest.raises(traces.TraceError, match=r"made for E = 8, k = 2; this model has E = 256, k = 8"):
        skews.sample_topk(skew, 4, 256, 8)
    with pytest.raises(traces.TraceError, match="no layer 5"):
        skews.sample_topk(f"trace:{write(tmp_path, good_trace(), 'b.json')}@5", 4, 8, 2)
    with pytest.raises(ValueError, match="cannot read it"):
        skews.parse_skew(f"trace:{tmp_path / 'missing.json'}")


@pytest.mark.parametrize("name", ["mixtral-8x7b-tiny-gate.json", "deepseek-v3-tiny-zipf1.2.json"])
def test_shipped_traces_load(name):
    trace = traces.load_trace(str(REPO / "traces" / name))
    model = get_preset(trace.model)
    assert (trace.num_experts, trace.top_k) == (model.E, model.k) and trace.source.startswith("moebench balance")
    ids_Tk, _ = skews.sample_topk(f"trace:{REPO / 'traces' / name}", 16, model.E, model.k, batch=1, part=1)
    assert ids_Tk.shape == (16, model.k)


# ---------------------------------------------------------------------------------------------- the study


def small_config(**over) -> balance.BalanceConfig:
    fields = dict(preset=get_preset("mixtral-8x7b-tiny"), num_ranks=4, ranks_per_node=2, tokens=16,
                  skews=[skews.parse_skew("zipf:1.2")], routers=[parse_router(r) for r in ("topk", "capacity-aware")],
                  placements=list(PLACEMENTS), redundant=4, window=2, capacity_factor=1.0)  # fmt: skip
    return balance.BalanceConfig(**{**fields, **over})


def test_study_rows_hold_their_invariants():
    cfg = small_config()
    rows = balance.study(cfg)
    assert len(rows) == 2 * 3 and all(r["correct"] for r in rows)
    row_bytes = cfg.preset.H * cfg.elem_bytes + 8
    for r in rows:
        kept = cfg.num_ranks * cfg.tokens * cfg.preset.k * (1 - r["dropped_pct"] / 100)
        assert math.isclose(r["local_bytes"] + r["intra_bytes"] + r["inter_bytes"], kept * row_bytes, rel_tol=1e-9)
        inter_assignments = r["inter_bytes"] / row_bytes  # a token crosses to a node at most once per assignment
        assert 0 < r["inter_node_dedup_bytes"] <= inter_assignments * (cfg.preset.H * cfg.elem_bytes + 12) + 1e-6
        off_rank = (r["intra_bytes"] + r["inter_bytes"]) / row_bytes
        assert 0 < r["rank_dedup_bytes"] <= off_rank * (cfg.preset.H * cfg.elem_bytes + 12) + 1e-6
        assert r["max_mean_rank"] >= 1 and r["max_mean_expert"] >= 1 and 0 < r["gate_mass"] <= 1 + 1e-9
        assert r["extra_weight_bytes"] == (r["redundant"] // cfg.num_ranks) * 3 * 256 * 896 * 2
    topk, aware = rows[0], rows[3]
    assert topk["router"] == "topk" and topk["out_dev"] > 0 and topk["dropped_pct"] > 0
    assert aware["dropped_pct"] == 0 and aware["rerouted_pct"] > 0
    dropless = balance.study(small_config(capacity_factor=None, routers=[parse_router("topk")]))
    assert dropless[0]["out_dev"] == 0 and dropless[0]["gate_mass"] == pytest.approx(1.0)


def test_a_broken_router_is_a_wrong_row(monkeypatch):
    from moebench.kernels import routers
    from moebench.kernels.routers import common

    def duplicate(inp, param=None):
        ids_Tk = torch.zeros(inp.num_tokens, inp.k, dtype=torch.int64)  # the bug class: one expert twice
        return common.routed(ids_Tk, torch.full(ids_Tk.shape, 0.5), inp.num_experts, inp.capacity_factor)

    monkeypatch.setitem(routers.ROUTERS, "topk", routers.RouterKind("topk", duplicate))
    rows = balance.study(small_config(routers=[parse_router("topk")], placements=["contiguous"]))
    assert not rows[0]["correct"] and "same expert twice" in rows[0]["problems"]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "moebench", "balance", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_balance_command_writes_rows_and_replays_its_own_trace(tmp_path):
    trace, out = tmp_path / "rec.json", tmp_path / "b.json"
    common = ["--model", "mixtral-8x7b-tiny", "--ranks", "4", "--ranks-per-node", "2", "--batch", "8", "--window",
              "2", "--routers", "topk", "--redundant", "4", "--capacity-factor", "1.0"]  # fmt: skip
    done = run_cli(*common, "--skew", "gate", "--record-trace", str(trace), "--json", str(out))
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    need = {"router", "placement", "skew", "P", "redundant", "window", "max_mean_rank", "max_mean_expert",
            "dropped_pct", "rerouted_pct", "gate_mass", "out_dev", "inter_bytes", "extra_weight_bytes"}  # fmt: skip
    assert all(need <= set(r) for r in rows) and {r["placement"] for r in rows} == set(PLACEMENTS)
    again = run_cli(*common, "--skew", "gate", "--trace", str(trace), "--json", str(out))
    assert again.returncode == 0, again.stderr
    by_skew = {}
    for r in json.loads(out.read_text())["rows"]:
        by_skew.setdefault(r["skew"] if r["skew"] == "gate" else "trace", []).append(r)
    for a, b in zip(by_skew["gate"], by_skew["trace"]):  # the replay routes exactly as the recorded gate did
        for key in ("max_mean_rank", "max_mean_expert", "dropped_pct", "inter_bytes", "intra_bytes"):
            assert a[key] == b[key], key


def test_balance_defaults_fit_one_rank_per_node():
    done = run_cli("--model", "mixtral-8x7b-tiny", "--ranks", "2", "--ranks-per-node", "1", "--batch", "4",
                   "--window", "1", "--routers", "topk", "--json", "/dev/null")  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args,match", [
    (["--model", "mixtral-8x7b-tiny", "--routers", "topk-group"], "has 1 expert group(s)"),
    (["--ranks", "3"], "multiple of --ranks-per-node 2"),
    (["--routers", "topk-switch:8"], "needs 1 <= K2 < k = 8"),
    (["--routers", "nope"], "bad router"),
    (["--redundant", "3"], "multiple of P = 4"),
    (["--batch", "8,16"], "one --batch"),
    (["--skew", "trace:/nonexistent.json"], "cannot read it"),
])  # fmt: skip
def test_balance_bad_input_is_one_line(args, match):
    done = run_cli(*args, timeout=60)
    assert done.returncode == 2 and match in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_default_routers_follow_the_model():
    assert balance_cmd.default_routers(8) == ["topk", "capacity-aware", "topk-switch:4", "hash", "task:4", "task-local"]
    assert balance_cmd.default_routers(8, 8)[-1] == "topk-group"
    assert "topk-switch" not in " ".join(balance_cmd.default_routers(1))
