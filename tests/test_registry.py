"""A new variant is one module plus one registry line: a copy of `flat` and a copy of `dynamic`, registered under new
names at run time and nothing else edited, run through every benchmark (the cost model through the copy's own
schedule), correct and counted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, mpirun

# Registers the twins on every rank, then runs the ordinary command line.
LAUNCHER = """
import importlib.util, sys
from pathlib import Path

from moebench import collectives, kernels
from moebench.bench.cli import main


def load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


collectives.ALGORITHMS["flat_twin"] = load("flat_twin").ALGORITHM
kernels.EXPERT_KERNELS["dynamic_twin"] = load("dynamic_twin").dynamic_experts
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("twin")
    shutil.copy(REPO / "collectives" / "flat.py", folder / "flat_twin.py")
    shutil.copy(REPO / "kernels" / "dynamic.py", folder / "dynamic_twin.py")
    (folder / "launch.py").write_text(LAUNCHER)
    return folder


def rows_of(path) -> list[dict]:
    return json.loads(path.read_text())["rows"]


def test_collectives_runs_the_twin_and_its_pairs(mpiexec_available, twin):
    out = twin / "collectives.json"
    args = [str(twin / "launch.py"), "collectives", "--algos", "flat_twin,native", "-b", "1K", "-e", "16K", "-f", "16"]
    result = mpirun(2, [*args, "-n", "2", "-w", "0", "--rounds", "1", "--skew", "zipf:1.2", "--json", str(out)])
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {(r["algo"], r["size"]): r for r in rows_of(out)}
    for size in (1024, 16384):
        for algo in ("flat_twin", "plain:flat_twin", "coordinated:flat_twin"):
            row = rows[(algo, size)]
            assert row["wrong"] == 0 and row["schedule_matches"] and row["time_us"] > 0
        assert rows[("flat_twin", size)]["wire_intra_bytes"] > 0


def test_moe_runs_the_twin_algorithm_and_kernel(mpiexec_available, twin):
    out = twin / "moe.json"
    args = [str(twin / "launch.py"), "moe", "--algos", "flat_twin,coordinated:flat_twin", "--kernels", "dynamic_twin"]
    result = mpirun(2, [*args, "--batch", "1,16", "-n", "1", "-w", "0", "--tp", "2", "--json", str(out)], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    configs = {(r["algo"], r["kernel"], r["batch"]): r for r in rows_of(out) if r["role"] == "config"}
    assert set(configs) == {(a, "dynamic_twin", b) for a in ("flat_twin", "coordinated:flat_twin") for b in (1, 16)}
    assert all(r["correct"] for r in configs.values())


def test_calibrate_checks_and_predicts_the_twin_from_its_own_schedule(mpiexec_available, twin):
    result = mpirun(4, [str(twin / "launch.py"), "calibrate", "--check-schedules", "--ranks-per-node", "2"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "schedules checked P=4 G=2 L=1 mpi: 18 cases, 0 mismatches" in result.stdout  # 4 + 4 x 3 + ll, allgather
    out = twin / "calibrate.json"
    args = [str(twin / "launch.py"), "calibrate", "--ranks-per-node", "1", "-b", "4K", "-e", "64K", "-n", "3"]
    args += ["--rounds", "1", "--validate", "--sizes", "4K", "--algos", "flat_twin,flat", "--json", str(out)]
    result = mpirun(2, args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {r["algo"]: r for r in rows_of(out) if r["kind"] == "validate"}
    assert {"flat_twin", "plain:flat_twin", "coordinated:flat_twin"} <= set(rows)
    assert rows["flat_twin"]["predicted_us"] == pytest.approx(rows["flat"]["predicted_us"])  # the same schedule
    assert all(r["schedule_matches"] and r["wrong"] == 0 for r in rows.values())


def test_project_prices_the_twin(twin):
    out = twin / "project.json"
    cmd = [sys.executable, str(twin / "launch.py"), "project", "--nodes", "1,4", "--sizes", "1M", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    exchange = [r for r in rows_of(out) if r["kind"] == "exchange"]
    assert all(r["flat_twin_us"] == pytest.approx(r["flat_us"]) for r in exchange)
    assert any(r["kind"] == "crossover" and r["algo"] == "flat_twin" for r in rows_of(out))


def test_kernels_runs_the_twin_kernel(twin):
    out = twin / "kernels.json"
    cmd = [sys.executable, str(twin / "launch.py"), "kernels", "--kernels", "dynamic_twin,dynamic", "--batch", "3,40"]
    result = subprocess.run([*cmd, "-n", "1", "-w", "0", "--json", str(out)], capture_output=True, text=True,
                            timeout=300, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {(r["kernel"], r["tokens"]): r for r in rows_of(out)}
    for T in (3, 40):
        assert rows[("dynamic_twin", T)]["correct"] and rows[("dynamic_twin", T)]["capacity_factor"] is None
        assert rows[("dynamic_twin", T)]["useful_flops"] == rows[("dynamic", T)]["useful_flops"]
