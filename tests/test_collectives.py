"""Every exchange and dispatch/combine pair on both backends at P = 1, 2, 4 against a local reference."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, mpirun

from moebench.collectives.coordinated import split_parts
from moebench.collectives.exchange import transpose_chunks

WORKER = "tests/collectives_worker.py"
CONFIGS = [(2, 1, 1), (2, 2, 2), (2, 1, 2), (4, 1, 1), (4, 2, 2), (4, 4, 1), (4, 2, 1), (4, 1, 2)]


@pytest.mark.parametrize("backend", ["mpi", "torch"])
@pytest.mark.parametrize(("P", "G", "L"), CONFIGS)
def test_every_algorithm_matches_reference(mpiexec_available, backend, P, G, L):
    result = mpirun(P, [WORKER, backend, str(G), str(L), "check"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"checked P={P} G={G} L={L} {backend}: 0 failures" in result.stdout


@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_one_rank_without_launcher(backend):
    result = subprocess.run(
        [sys.executable, WORKER, backend, "0", "1", "check"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checked P=1 G=1 L=1" in result.stdout


def test_transpose_chunks_reorders_grid():
    sizes = np.array([[1, 0, 2], [3, 1, 0]])
    x = torch.arange(7).reshape(7, 1)  # chunks (0,0)=[0] (0,2)=[1,2] (1,0)=[3,4,5] (1,1)=[6]
    assert transpose_chunks(x, sizes).flatten().tolist() == [0, 3, 4, 5, 6, 1, 2]


def test_split_parts_cover_every_row_once():
    parts = split_parts([0, 1, 5, 7], 3)
    assert parts.sum(axis=1).tolist() == [0, 1, 5, 7]
    assert (parts.max(axis=1) - parts.min(axis=1) <= 1).all()
