"""Shared helpers: run a command under the venv's mpiexec, one thread per rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moebench.collectives.comm import unmapped_mpi_segments

REPO = Path(__file__).resolve().parent.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def mpirun(nprocs: int, args: list[str], timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """`mpiexec -n nprocs python args...` from the repo root; output captured as text."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [str(MPIEXEC), "-n", str(nprocs), sys.executable, *args]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def mpi_segments() -> set[str]:
    """MPICH shared-memory files in /dev/shm (mpich_*) that no live process maps: what ended jobs leaked (a job
    still running, say another suite's, maps its own). A job that ends leaves none (comm.release_mpi_segments)."""
    return {Path(path).name for path in unmapped_mpi_segments()}


@pytest.fixture(scope="session")
def mpiexec_available() -> None:
    if not MPIEXEC.exists():
        pytest.fail(f"{MPIEXEC} not found: install with `make install` (the mpi extra brings mpich)")
