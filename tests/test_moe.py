"""The MoE layer across ranks equals the single-process reference; its benchmark and report behave."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, mpirun
from test_errors import assert_one_line_error

WORKER = "tests/moe_worker.py"


@pytest.mark.parametrize(
    ("P", "backend", "G", "L"), [(2, "mpi", 0, 1), (2, "torch", 1, 2), (4, "mpi", 2, 2), (4, "torch", 2, 1)]
)
def test_layer_matches_reference(mpiexec_available, P, backend, G, L):
    result = mpirun(P, [WORKER, backend, str(G), str(L), "torch"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"moe checked P={P} L={L} torch: 0 failures" in result.stdout


def test_triton_impl_under_interpreter(mpiexec_available):
    result = mpirun(2, [WORKER, "mpi", "0", "1", "triton"], timeout=400, env={"TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "moe checked P=2 L=1 triton: 0 failures" in result.stdout


@pytest.fixture(scope="module")
def moe_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("moe") / "moe.json"
    args = ["-m", "moebench", "moe", "--batch", "1,32", "-n", "2", "-w", "1", "--capacity-factor", "none,1.0",
            "--skew", "gate,hot:0.9", "--json", str(out)]  # fmt: skip
    result = mpirun(2, args, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Best configuration per batch" in result.stdout
    return out


def test_benchmark_rows_are_complete_and_correct(moe_json):
    data = json.loads(moe_json.read_text())
    rows = data["rows"]
    assert data["meta"]["benchmark"] == "moe" and data["meta"]["P"] == 2
    configs = {(r["algo"], r["kernel"], r["role"]) for r in rows}
    for algo in ("flat", "hierarchical", "native", "coordinated:flat"):
        for kernel in ("padded", "dynamic", "block_sparse"):
            assert (algo, kernel, "config") in configs
    assert {("native", "loop", "baseline"), ("dense-equivalent", "dense", "dense")} <= configs
    for row in rows:
        for field in ("algo", "kernel", "batch", "total_us", "p99_us", "tokens_per_s", "correct"):
            assert field in row
        for phase in ("gate", "permute", "dispatch", "experts", "combine", "unpermute"):
            assert row[f"{phase}_us"] >= 0
        assert row["correct"] in (True, None)
    dropped = [r["dropped_pct"] for r in rows if r["capacity_factor"] == 1.0 and r["skew"] == "hot:0.9"]
    assert max(dropped) > 0  # a hot set over capacity drops


def test_routers_and_placements_in_the_layer(mpiexec_available, tmp_path):
    """Every router x placement timed in the layer at P=4 (G=2), each row checked against a reference that routes
    the same way (placements change where an expert runs, not what it computes)."""
    out = tmp_path / "policies.json"
    args = [
        "-m",
        "moebench",
        "moe",
        "--batch",
        "1,8",
        "--skew",
        "zipf:1.2,hot:1.0",
        "--ranks-per-node",
        "2",
        "--algos",
        "flat,hierarchical",
        "--kernels",
        "dynamic,padded",
        "--routers",
        "topk,capacity-aware,topk-switch:1,hash,task:2",
        "--placements",
        "contiguous,eplb,hierarchical",
        "--redundant",
        "4",
        "--capacity-factor",
        "1.0",
        "-n",
        "2",
        "-w",
        "1",
        "--warm-weights",
        "--json",
        str(out),
    ]
    result = mpirun(4, args, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    rows = [r for r in json.loads(out.read_text())["rows"] if r["role"] == "config"]
    assert {(r["router"], r["placement"]) for r in rows} == {
        (router, placement) for router in ("topk", "capacity-aware", "topk-switch:1", "hash", "task:2")
        for placement in ("contiguous", "eplb", "hierarchical")}  # fmt: skip
    assert all(r["correct"] for r in rows)
    by = {(r["router"], r["placement"], r["skew"], r["batch"], r["algo"], r["kernel"]): r for r in rows}
    for key, r in by.items():
        router, placement, skew, batch, algo, kernel = key
        topk = by["topk", placement, skew, batch, algo, kernel]
        if router == "topk-switch:1":  # one expert per token: at most the bytes of two
            assert r["dispatch_bytes"] <= topk["dispatch_bytes"] and r["gate_mass"] <= topk["gate_mass"] + 1e-9
        if router == "capacity-aware":
            assert r["dropped_pct"] == 0 and (skew != "hot:1.0" or batch == 1 or topk["dropped_pct"] > 0)
        assert r["redundant"] == (4 if placement != "contiguous" else 0)
    assert "Routers and placements against topk + contiguous" in result.stdout


def test_dispatch_pairs_and_overlap_rows(mpiexec_available, tmp_path):
    """dedup / fp8 rows: counted bytes equal the schedule's, dedup sends fewer, fp8's ratio is the formula; overlap
    rows carry their efficiency against the sequential twin; the shared expert is in every row's reference."""
    out = tmp_path / "moe.json"
    args = ["-m", "moebench", "moe", "--batch", "4,64", "-n", "3", "-w", "1", "--algos",
            "native,dedup:native,fp8:native,fp8-dedup:native,ll:native", "--kernels", "dynamic", "--overlap",
            "none,chunks:2,dual", "--shared-experts", "1", "--json", str(out)]  # fmt: skip
    result = mpirun(2, args, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Dispatch/combine pairs against plain" in result.stdout and "Overlap:" in result.stdout
    rows = [r for r in json.loads(out.read_text())["rows"] if r["role"] == "config"]
    assert all(r["correct"] and r["bytes_match"] for r in rows)
    by = {(r["algo"], r["overlap"], r["batch"]): r for r in rows}
    assert ("ll:native", "chunks:2", 64) not in by  # ll is not pipelined
    H = 256  # mixtral-8x7b-tiny, float32 rows; dispatch bytes carry the 8-byte count exchange
    plain, fp8 = by[("native", "none", 64)], by[("fp8:native", "none", 64)]
    rows_sent = (plain["dispatch_bytes"] - 8) // (4 * H + 8)
    assert fp8["dispatch_bytes"] == rows_sent * (H + 4 * 2 + 8) + 8
    assert fp8["combine_bytes"] == plain["combine_bytes"] // 2  # bf16 back
    assert by[("dedup:native", "none", 64)]["dispatch_bytes"] < plain["dispatch_bytes"]
    assert 1e-3 < fp8["rel_error"] <= fp8["quantization_bound"] and fp8["check_error"] <= fp8["error_bound"]
    for mode in ("chunks:2", "dual"):
        r = by[("native", mode, 64)]
        assert r["dispatch_bytes"] == plain["dispatch_bytes"] + 8  # one count exchange of 2 counts (16 B) per peer
        assert "overlap_efficiency" in r and r["t_sequential_us"] == plain["total_us"]
        # the pipeline model on the sequential phases: never slower than sequential, never faster than its parts
        assert max(r["t_comm_us"], plain["experts_us"]) <= r["model_us"] <= plain["total_us"] * 1.03  # Σ within 2%
        assert r["model_efficiency"] <= 1.0001


def test_overlap_efficiency_round_by_round():
    """Efficiency = (sequential - overlapped) / min(t_comm, t_comp), on the medians and round by round on each
    round's medians (the rows ran interleaved); the summary prints the rounds' range, `-` where a row has none."""
    from moebench.bench.commands import moe

    phases = {f"{p}_us": 0.0 for p in ("gate", "quantize", "permute", "shared", "dequantize", "unpermute")}
    key = dict(role="config", skew="gate", capacity_factor=None, batch=1024, algo="native", kernel="dynamic",
               router="topk", placement="contiguous", redundant=0, **phases)  # fmt: skip
    seq = dict(key, overlap="none", dispatch_us=20.0, combine_us=20.0, experts_us=60.0, total_us=100.0,
               p20_us=98.0, p80_us=102.0, round_medians_us=[100.0, 104.0, 96.0])  # fmt: skip
    both = dict(key, overlap="chunks:2", total_us=80.0, p20_us=78.0, p80_us=82.0,
                round_medians_us=[80.0, 94.0, 72.0])  # fmt: skip
    bare = dict(both, algo="dedup:native", round_medians_us=None)
    rows = [seq, both, dict(seq, algo="dedup:native", round_medians_us=None), bare]
    moe.add_overlap_efficiency(rows)
    assert both["overlap_efficiency"] == pytest.approx(0.5)  # 20 of min(40, 60) hidden
    assert both["overlap_efficiency_rounds"] == pytest.approx([0.5, 0.25, 0.6])
    assert bare["overlap_efficiency_rounds"] == []
    _, table = moe.overlap_summary(rows)
    assert [row[10] for row in table] == ["0.25 to 0.60", "-"]


def test_moe_records_a_trace_that_replays_its_routing(mpiexec_available, tmp_path):
    trace, out, again = tmp_path / "gate.json", tmp_path / "gate-run.json", tmp_path / "replay.json"
    common = ["-m", "moebench", "moe", "--batch", "6", "--algos", "flat", "--kernels", "dynamic", "--capacity-factor",
              "1.0", "-n", "2", "-w", "0", "--warm-weights"]  # fmt: skip
    first = mpirun(2, [*common, "--record-trace", str(trace), "--json", str(out)], timeout=300)
    assert first.returncode == 0, first.stderr
    second = mpirun(2, [*common, "--skew", f"trace:{trace}", "--json", str(again)], timeout=300)
    assert second.returncode == 0, second.stderr
    recorded = json.loads(trace.read_text())
    assert [len(step["topk_ids"]) for step in recorded["layers"][0]["steps"]] == [12]  # 2 ranks x 6 tokens
    rows = {(r["skew"] != "gate", r["algo"]): r for r in json.loads(out.read_text())["rows"] if r["role"] == "config"}
    rows |= {(True, r["algo"]): r for r in json.loads(again.read_text())["rows"] if r["role"] == "config"}
    for key in ("imbalance_expert", "imbalance_rank", "dropped_pct", "dispatch_bytes"):
        assert rows[False, "flat"][key] == rows[True, "flat"][key], key


def test_batch_spread_gives_ranks_different_batches(mpiexec_available, tmp_path):
    out = tmp_path / "spread.json"
    args = [
        "-m",
        "moebench",
        "moe",
        "--batch",
        "16",
        "--batch-spread",
        "0.5",
        "--algos",
        "flat",
        "--kernels",
        "dynamic",
        "--routers",
        "topk,hash",
        "-n",
        "2",
        "-w",
        "0",
        "--warm-weights",
        "--json",
        str(out),
    ]
    result = mpirun(2, args, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert all(r["correct"] in (True, None) for r in rows)
    totals = {r["total_tokens"] for r in rows}
    assert len(totals) == 1 and totals != {32} and 16 <= totals.pop() <= 48


def test_report_renders_stored_json(moe_json):
    result = subprocess.run([sys.executable, "-m", "moebench", "report", str(moe_json)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Best configuration per batch" in result.stdout
    for suffix in ("latency", "phases"):
        assert (moe_json.parent / f"moe-{suffix}.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("content", "expected"),
    [('{"meta": {"benchmark": "moe"}, "rows": [', "not valid JSON"), ('{"hello": 1}', "not a moebench result")],
)
def test_report_rejects_truncated_or_foreign_json(tmp_path, content, expected):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = subprocess.run([sys.executable, "-m", "moebench", "report", str(bad)], cwd=REPO, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert_one_line_error(result, expected)


BAD_MOE = [
    (3, ["--model", "mixtral-8x7b-tiny"], "not divisible by P=3"),
    (2, ["--model", "gpt-5"], "gpt-5"),
    (2, ["--batch", "0"], "--batch sizes must be >= 1"),
    (4, ["--tp", "3"], "--tp 3 must divide"),
    (2, ["--kernels", "fancy"], "unknown kernel fancy"),
    (2, ["--capacity-factor", "0"], "argument --capacity-factor: '0': must be > 0 or none"),
    (2, ["--algos", "coordinated:ring"], "unknown algorithm 'coordinated:ring'"),
    (2, ["--model", "mixtral-8x7b", "--batch", "1000000"], "at batch 1000000 needs about"),  # before allocating
    (2, ["--routers", "topk-switch:2"], "needs 1 <= K2 < k = 2"),
    (2, ["--redundant", "2"], "none of the placements contiguous holds replicas"),
    (2, ["--placements", "eplb", "--redundant", "1"], "multiple of P = 2"),
    (2, ["--trace", "/nonexistent/trace.json"], "cannot read it"),
    (2, ["--overlap", "chunks:0"], "overlap chunks:C needs a whole number C >= 1"),
    (2, ["--overlap", "triple"], "unknown overlap 'triple'"),
    (2, ["--overlap", "dual", "--algos", "flat,ll:native"], "--overlap dual pipelines the plain, dedup, fp8"),
    (2, ["--overlap", "chunks:2", "--algos", "native", "--capacity-factor", "1.0"], "none of --algos"),
    (2, ["--shared-experts", "-1"], "--shared-experts must be >= 0"),
]


@pytest.mark.parametrize(("P", "extra", "expected"), BAD_MOE)
def test_bad_moe_input(mpiexec_available, tmp_path, P, extra, expected):
    out = tmp_path / "moe.json"
    result = mpirun(P, ["-m", "moebench", "moe", "-n", "1", "-w", "0", "--json", str(out), *extra], timeout=60)
    assert_one_line_error(result, expected)
    assert not out.exists()


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("threads", [1, 2])
def test_dense_forward_one_row_in_numpy_and_torch(monkeypatch, threads, strided):
    """The dense-equivalent (and shared-expert) FFN: one row on one torch thread in numpy (host_swiglu), else torch;
    both give the float64 SwiGLU of the same weights, for a row of wider rows too."""
    import torch

    from moebench.bench.layer import forward

    g = torch.Generator().manual_seed(7)
    H, W = 32, 80
    w_gate, w_up = torch.randn(H, W, generator=g) / H**0.5, torch.randn(H, W, generator=g) / H**0.5
    w_down = torch.randn(W, H, generator=g) / W**0.5
    x_1H = torch.randn(1, H + 8, generator=g)[:, :H] if strided else torch.randn(1, H, generator=g)
    x64 = x_1H.double()
    expect = (torch.nn.functional.silu(x64 @ w_gate.double()) * (x64 @ w_up.double())) @ w_down.double()
    calls, host_swiglu = [], forward.host_swiglu  # the numpy path taken: host_swiglu's calls
    monkeypatch.setattr(forward, "host_swiglu", lambda *a: calls.append(a[0].shape) or host_swiglu(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert forward.host_gemv_applies(x_1H) is (threads == 1)
        y_1H = forward.dense_forward(x_1H, w_gate, w_up, w_down)
    finally:
        torch.set_num_threads(before)
    assert calls == ([(1, H)] if threads == 1 else [])
    assert y_1H.shape == (1, H) and y_1H.dtype == torch.float32
    assert ((y_1H.double() - expect).norm() / expect.norm()).item() <= 1e-6
