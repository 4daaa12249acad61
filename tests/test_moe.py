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
]


@pytest.mark.parametrize(("P", "extra", "expected"), BAD_MOE)
def test_bad_moe_input(mpiexec_available, tmp_path, P, extra, expected):
    out = tmp_path / "moe.json"
    result = mpirun(P, ["-m", "moebench", "moe", "-n", "1", "-w", "0", "--json", str(out), *extra], timeout=60)
    assert_one_line_error(result, expected)
    assert not out.exists()
