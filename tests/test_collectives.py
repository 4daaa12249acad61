"""Every exchange and dispatch/combine pair on both backends at P = 1, 2, 4 against a local reference."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, mpirun

from moebench.bench.cases import row_shape
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
@pytest.mark.parametrize("P", [2, 4])
def test_every_pair_at_the_edges_matches_plain(mpiexec_available, backend, P):
    result = mpirun(P, [WORKER, backend, "0", "1", "edges"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"pair edges P={P}: 0 failures" in result.stdout


def test_ll_overflow_is_one_line_and_ends_every_rank(mpiexec_available):
    result = mpirun(2, [WORKER, "mpi", "0", "1", "ll-overflow"], timeout=60)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("moebench: error")]
    assert len(errors) == 1 and "ll: rank 0 sends 2 rows to rank 0, over the cap of 1 rows per peer" in errors[0]


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


REUSE = """
import torch
from moebench.collectives.backends import init_comm

comm = init_comm("mpi", None, 1)
world, splits = comm.world, (3,)
send = lambda v, dtype=torch.float32: torch.full((3, 4), float(v)).to(dtype)
first = world.alltoallv(send(1), splits, splits)
held = world.alltoallv(send(2), splits, splits)  # `first` is held: a new buffer
assert held.data_ptr() != first.data_ptr() and (first == 1).all() and (held == 2).all()
view = held[1:]
del held
again = world.alltoallv(send(3), splits, splits)  # a view of the last result is alive: still a new buffer
assert (view == 2).all() and (again == 3).all()
address = again.data_ptr()
del again, view
reused = world.alltoallv(send(4), splits, splits)  # nothing holds the last result: its buffer comes back
assert reused.data_ptr() == address and (reused == 4).all()
as_numpy = reused.numpy()
del reused
fresh = world.alltoallv(send(5), splits, splits)  # a numpy view holds it
assert (as_numpy == 4).all() and (fresh == 5).all()
kept = send(8)
a = world.alltoallv(kept, splits, splits)
assert (a == 8).all()
kept.fill_(9)  # the same address, new contents: the send arguments cached for that address read them
b = world.alltoallv(kept, splits, splits)
other = send(10)  # another address (`kept` alive): its own arguments
c = world.alltoallv(other, splits, splits)
assert (a == 8).all() and (b == 9).all() and (c == 10).all()
for dtype in (torch.bfloat16, torch.float16):
    a = world.alltoallv(send(6, dtype), splits, splits)
    b = world.alltoallv(send(7, dtype), splits, splits)
    assert a.dtype == b.dtype == dtype and (a == 6).all() and (b == 7).all()
comm.close()
print("reuse ok")
"""


LL_REUSE = """
import torch
from moebench.collectives import DISPATCH_COMBINE
from moebench.collectives.backends import init_comm

comm, ll = init_comm("mpi", None, 1), DISPATCH_COMBINE["ll"]
send = lambda v, rows=3, dtype=torch.float32: torch.full((rows, 4), float(v)).to(dtype)
dispatch = lambda x: ll.dispatch(comm, x, (x.shape[0],), max_rows_per_rank=3)[0]
first = dispatch(send(1))
held = dispatch(send(2))  # `first` is held: a new output
assert held.data_ptr() != first.data_ptr() and (first == 1).all() and (held == 2).all()
address = held.data_ptr()
del held
reused = dispatch(send(3))  # nothing holds the last output: its memory comes back
assert reused.data_ptr() == address and (reused == 3).all() and (first == 1).all()
as_numpy = reused.numpy()
del reused
fresh = dispatch(send(4))  # a numpy view holds it
assert (as_numpy == 3).all() and (fresh == 4).all()
for rows in (2, 0, 3, 1):  # the count in the header follows the split pattern on one cached exchange
    out = dispatch(send(rows, rows))
    assert out.shape == (rows, 4) and (out == rows).all()
for dtype in (torch.bfloat16, torch.float16, torch.float8_e4m3fn):
    a, b = dispatch(send(6, dtype=dtype)), dispatch(send(7, dtype=dtype))
    assert a.dtype == b.dtype == dtype and (a.float() == 6).all() and (b.float() == 7).all()
strided = torch.stack([send(8), send(9)], dim=-1)[..., 0]
assert (dispatch(strided) == 8).all()
comm.close()
print("ll reuse ok")
"""


def test_ll_outputs_are_reused_only_when_nothing_holds_them():
    """ll's host path hands a receive pattern's last output out again only once nothing holds it, reads each
    call's counts from the headers of one cached exchange, and copies rows of any dtype and layout by address."""
    result = subprocess.run([sys.executable, "-c", LL_REUSE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ll reuse ok" in result.stdout


def test_receive_buffers_are_reused_only_when_nothing_holds_them():
    """The mpi backend hands a split pattern's last receive buffer out again only once no tensor, view or numpy
    array of it is alive (a decode loop allocates nothing; a caller that keeps results never sees them change);
    the send arguments it caches for an address carry that address's current rows, and no other address's."""
    result = subprocess.run([sys.executable, "-c", REUSE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reuse ok" in result.stdout


@pytest.mark.parametrize("nprocs", [2, 4])
def test_overlap_round_trips_are_checked_against_their_schedule(mpiexec_available, tmp_path, nprocs):
    """`collectives --overlap`: every mode's pipelined round trip of plain, fp8, dedup and fp8-dedup (the
    pipeline's communication alone) comes back right, with exactly the traffic of the mode's own schedule (one
    count exchange of C counts per peer, C dispatches and C combines), beside the sequential round trips."""
    out = tmp_path / "overlap.json"
    extra = ["--ranks-per-node", "2"] if nprocs == 4 else []
    args = ["-m", "moebench", "collectives", "-b", "1K", "-e", "64K", "-f", "64", "--algos", "native", "--pairs",
            "plain,fp8,dedup,fp8-dedup", "--overlap", "none,chunks:3,dual", "-n", "3", "-w", "1"]  # fmt: skip
    args += ["--json", str(out), *extra]
    result = mpirun(nprocs, args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {(r["algo"], r["size"]): r for r in json.loads(out.read_text())["rows"]}
    for size in (1024, 65536):
        plain = rows[("plain:native", size)]
        for mode, chunks in (("chunks:3", 3), ("dual", 2)):
            for pair in ("plain", "fp8"):
                row = rows[(f"{pair}:native ({mode})", size)]
                assert row["wrong"] == 0 and row["schedule_matches"], row
                assert row["overlap"] == mode and row["chunks"] == min(chunks, row_shape(size, 4, nprocs, 1024)[0])
                assert row["vs_plain"] > 0
            for pair in ("dedup", "fp8-dedup"):  # one row per token and destination, chunked the same way
                row = rows[(f"{pair}:native ({mode})", size)]
                assert row["wrong"] == 0 and row["schedule_matches"] and 1 <= row["chunks"] <= chunks, row
        # the same rows out and back as the sequential plain trip, plus C - 1 more counts per peer
        row = rows[("plain:native (chunks:3)", size)]
        extra_counts = (row["chunks"] - 1) * 8 * (nprocs - 1)
        assert row["wire_intra_bytes"] + row["wire_inter_bytes"] == (
            plain["wire_intra_bytes"] + plain["wire_inter_bytes"] + extra_counts
        )
