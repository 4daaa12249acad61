"""Bad input: one clear line from rank 0, a non-zero exit from every rank, no hang, no partial file."""

from __future__ import annotations

import time

import pytest
from conftest import mpi_segments, mpirun

WORKER = "tests/collectives_worker.py"


def assert_one_line_error(result, expected: str) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("moebench: error:")]
    assert result.returncode != 0, result.stdout + result.stderr
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], errors[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("bad-sum", "sum to 7 but send has 4 rows"), ("bad-negative", "negative"), ("bad-count", "has 5 entries")],
)
@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_bad_splits(mpiexec_available, backend, mode, expected):
    assert_one_line_error(mpirun(4, [WORKER, backend, "0", "1", mode], timeout=60), expected)


@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_rank_failing_mid_run_aborts_job(mpiexec_available, backend):
    """The job ends fast, names the failing rank, and leaves no MPICH shared-memory file behind in /dev/shm (MPI_Abort
    skips MPICH's teardown, which unlinks them: every such job left one, in RAM, before the backends released
    the names at startup)."""
    before, start = mpi_segments(), time.monotonic()
    result = mpirun(2, [WORKER, backend, "0", "1", "raise"], timeout=60)
    assert result.returncode != 0
    assert "rank 1: RuntimeError: injected failure" in result.stderr
    assert time.monotonic() - start < 30
    assert not mpi_segments() - before


@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_killed_rank_leaves_no_shared_memory(mpiexec_available, backend):
    """A rank killed outright (SIGKILL: no abort path runs) still leaves no MPICH file in /dev/shm: the backends
    unlink the names once every rank has attached. Before, each such job left one file per node, in RAM."""
    before = mpi_segments()
    result = mpirun(2, [WORKER, backend, "0", "1", "killed"], timeout=60)
    assert result.returncode != 0
    assert not mpi_segments() - before


BAD_CLI = [
    (["--ranks-per-node", "3"], "--ranks-per-node 3 must divide"),
    (["--tp", "3"], "--tp 3 must divide"),
    (["--algos", "flat,ring"], "unknown algorithm ring"),
    (["--backend", "nccl2"], "unknown backend 'nccl2'"),
    (["-d", "int4"], "unknown dtype 'int4'"),
    (["-e", "4T"], "not a size"),
    (["-b", "1K", "-e", "512G"], "too large for memory"),
    (["--skew", "zipf:-1"], "argument --skew: 'zipf:-1'; expected uniform, zipf:S"),
    (["--pairs", "dedupe"], "unknown dispatch/combine pair dedupe"),
    (["-b", "1M", "-e", "1K"], "need 1 <= -b <= -e"),
    (["--overlap", "chunks:0"], "overlap chunks:C needs a whole number C >= 1"),
    (["--overlap", "chunks:2", "--pairs", "ll"], "--overlap pipelines plain, fp8, dedup and fp8-dedup over native"),
]


@pytest.mark.parametrize(("extra", "expected"), BAD_CLI)
def test_bad_benchmark_flags(mpiexec_available, tmp_path, extra, expected):
    out = tmp_path / "out.json"
    result = mpirun(4, ["-m", "moebench", "collectives", "-n", "1", "-w", "0", "--json", str(out), *extra], timeout=60)
    assert_one_line_error(result, expected)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
