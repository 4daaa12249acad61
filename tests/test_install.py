"""moebench installs beside the serving stacks: in a fresh venv that already has transformers >= 5 (and so Hugging
Face's `kernels` package), installing moebench the README's way leaves both working, run from outside the checkout
and from its root."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


def run(cmd, cwd, timeout=600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "TRITON_INTERPRET")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A new venv: torch (the CPU wheel), transformers >= 5 first, then moebench as the README installs it."""
    root = tmp_path_factory.mktemp("hf")
    bin_dir = root / "venv" / "bin"
    run([sys._base_executable, "-m", "venv", root / "venv"], root)
    run([bin_dir / "pip", "install", "-q", "torch==2.13.0"], root)
    run([bin_dir / "pip", "install", "-q", "transformers>=5"], root)
    run([bin_dir / "pip", "install", "-q", "-e", f"{REPO}[mpi]"], root)
    return bin_dir


IMPORT_HF = "import transformers.models.mixtral.modeling_mixtral, kernels; print(kernels.__file__)"


@pytest.mark.parametrize("where", ["outside", "root"])
def test_transformers_and_moebench_both_work(venv, tmp_path, where):
    cwd = tmp_path if where == "outside" else REPO
    hf_kernels = run([venv / "python", "-c", IMPORT_HF], cwd).stdout.strip()
    assert hf_kernels.startswith(str(venv.parent)), hf_kernels  # Hugging Face's kernels, not the checkout's folder
    for entry in ([venv / "moebench"], [venv / "python", "-m", "moebench"]):
        out = tmp_path / "kernels.json"
        run([*entry, "kernels", "--batch", "2", "--kernels", "dynamic", "-n", "1", "-w", "0", "--json", out], cwd)
        assert all(r["correct"] is not False for r in json.loads(out.read_text())["rows"])
    out = tmp_path / "collectives.json"
    args = ["collectives", "-b", "1K", "-e", "4K", "-n", "1", "-w", "0", "--rounds", "1", "--json", out]
    run([venv / "mpiexec", "-n", "2", venv / "moebench", *args], cwd)
    assert all(r["wrong"] in (0, None) for r in json.loads(out.read_text())["rows"])
    # moebench and transformers in one process, from either place
    run([venv / "python", "-c", "import moebench.kernels, moebench.collectives; " + IMPORT_HF], cwd)
