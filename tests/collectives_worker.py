"""Multi-rank checks of every exchange and dispatch/combine pair, launched by tests under mpiexec.

P = world size, H = elements per row.
usage: collectives_worker.py BACKEND G L MODE
MODE check: random split matrices (zero splits, empty ranks), every dtype, compared with what each
rank rebuilds locally from the other ranks' seeds. Other modes exercise the error policy.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from moebench.bench.cli import guarded, open_comm

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.uint8)


def split_matrix(P: int, trial: int) -> np.ndarray:
    """[P, P] send counts: row s is rank s's send_splits. Trials include all-zero rows and columns."""
    rng = np.random.default_rng(trial)
    splits = rng.integers(0, 6, size=(P, P)) * (rng.random((P, P)) < 0.7)
    if trial % 3 == 1:
        splits[rng.integers(P)] = 0  # a rank that sends nothing
    if trial % 3 == 2:
        splits[:, rng.integers(P)] = 0  # a rank that receives nothing
    if trial == 0:
        splits[:] = 0  # nothing moves at all
    return splits


def rows(src: int, splits_row: np.ndarray, H: int, dtype: torch.dtype, trial: int) -> torch.Tensor:
    """Rank src's send buffer [sum(splits_row), H] for this trial, exact in every dtype."""
    g = torch.Generator().manual_seed(trial * 1000 + src)
    return torch.randint(0, 100, (int(splits_row.sum()), H), generator=g).to(dtype)


def expected(me: int, splits: np.ndarray, H: int, dtype, trial: int) -> torch.Tensor:
    out = []
    for src in range(splits.shape[0]):
        start = int(splits[src, :me].sum())
        out.append(rows(src, splits[src], H, dtype, trial)[start : start + int(splits[src, me])])
    return torch.cat(out)


def check(comm) -> int:
    from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE

    P, me, L = comm.world_size, comm.rank, comm.tp.size
    failures = 0
    for trial in range(2 * len(DTYPES)):
        splits = split_matrix(P, trial)
        for dtype in DTYPES[trial % len(DTYPES) : trial % len(DTYPES) + 1]:  # each dtype in two trials
            H = 1 + trial % 4
            send = rows(me, splits[me], H, dtype, trial)
            want = expected(me, splits, H, dtype, trial)
            for name, algo in ALGORITHMS.items():
                recv, recv_splits = algo(comm, send, splits[me].tolist())
                recv.view(torch.uint8)  # ordinary strides, zero rows included
                if recv_splits != splits[:, me].tolist() or not torch.equal(recv, want):
                    failures += 1
                    print(f"rank {me}: {name} wrong (trial {trial}, {dtype})", flush=True)
            leader = me // L * L  # TP groups hold their first rank's rows
            tp_send = rows(leader, splits[leader], H, dtype, trial)
            for inner in ALGORITHMS:
                outs = {}
                for pair_name, pair in DISPATCH_COMBINE.items():
                    recv, recv_splits, handle = pair.dispatch(comm, tp_send, splits[leader].tolist(), inner=inner)
                    outs[pair_name] = pair.combine(comm, recv * 3 + 1, handle)  # a row-wise "expert"
                if not (
                    torch.equal(outs["plain"], tp_send * 3 + 1) and torch.equal(outs["coordinated"], outs["plain"])
                ):
                    failures += 1
                    print(f"rank {me}: round trip over {inner} wrong (trial {trial}, {dtype})", flush=True)
    # 3-D rows ([N, 2, 3]) move as whole rows.
    send = torch.arange(P * 6, dtype=torch.float32).reshape(P, 2, 3) + 100 * me
    recv, _ = ALGORITHMS["flat"](comm, send, [1] * P)
    want = torch.stack(
        [torch.arange(me * 6, me * 6 + 6, dtype=torch.float32).reshape(2, 3) + 100 * s for s in range(P)]
    )
    failures += not torch.equal(recv, want)
    if comm.rank == 0:
        print(f"checked P={P} G={comm.topology.ranks_per_node} L={L} {comm.backend}: {failures} failures", flush=True)
    return 1 if failures else 0


def bad_splits(comm, mode: str) -> int:
    from moebench.collectives import ALGORITHMS

    P = comm.world_size
    send = torch.zeros(4, 2)
    splits = {"sum": [4] + [1] * (P - 1), "negative": [5] + [-1] + [0] * (P - 2), "count": [4] + [0] * P}[mode]
    ALGORITHMS["flat"](comm, send, splits)
    return 0


def raise_on_rank_1(comm) -> int:
    if comm.rank == 1:
        raise RuntimeError("injected failure")
    comm.barrier()  # rank 0 would wait here forever without the abort
    return 0


def main() -> int:
    backend, G, L, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    def body() -> int:
        comm = open_comm(backend, G or None, L)
        if mode == "check":
            return check(comm)
        if mode.startswith("bad-"):
            return bad_splits(comm, mode[4:])
        return raise_on_rank_1(comm)

    return guarded(body)


if __name__ == "__main__":
    raise SystemExit(main())
