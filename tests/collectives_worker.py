"""Multi-rank checks of every exchange and dispatch/combine pair, launched by tests under mpiexec.

P = world size, H = elements per row.
usage: collectives_worker.py BACKEND G L MODE
MODE check: random split matrices (zero splits, empty ranks), every dtype, compared with what each
rank rebuilds locally from the other ranks' seeds. Other modes exercise the error policy.
"""

from __future__ import annotations

import os
import signal
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
            max_rows = int(splits[np.arange(P) // L * L].sum(axis=1).max())
            for inner in ALGORITHMS:
                outs = {}
                for pair_name, pair in DISPATCH_COMBINE.items():
                    if not pair.runs_over(inner):
                        continue
                    recv, recv_splits, handle = pair.dispatch(comm, tp_send, splits[leader].tolist(), inner=inner,
                                                              max_rows_per_rank=max_rows)  # fmt: skip
                    outs[pair_name] = pair.combine(comm, recv * 3 + 1, handle)  # a row-wise "expert"
                if not (
                    torch.equal(outs["plain"], tp_send * 3 + 1)
                    and all(torch.equal(out, outs["plain"]) for out in outs.values())
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


def pair_edges(comm) -> int:
    """Every pair over native at the edges: every row to one peer (exactly ll's worst-case cap), a rank that sends
    nothing, every row from one rank; ll also with a cap above the need; each against plain."""
    from moebench.collectives import DISPATCH_COMBINE

    P, me = comm.world_size, comm.rank
    R, H = 5, 3
    cases = {
        "all to rank 0": np.array([[R] + [0] * (P - 1)] * P),
        "last rank sends nothing": np.array([[1] * P] * (P - 1) + [[0] * P]),
        "only rank 0 sends": np.array([[R] * P] + [[0] * P] * (P - 1)),
    }
    failures = 0
    for name, splits in cases.items():
        send = rows(me, splits[me], H, torch.float32, 7)
        want = DISPATCH_COMBINE["plain"].dispatch(comm, send, splits[me].tolist(), inner="native")
        most = int(splits.sum(axis=1).max())
        runs = [(pair, {}) for pair in DISPATCH_COMBINE if pair != "plain"] + [("ll", {"cap_rows": most + 3})]
        for pair_name, extra in runs:
            pair = DISPATCH_COMBINE[pair_name]
            recv, recv_splits, handle = pair.dispatch(comm, send, splits[me].tolist(), inner="native",
                                                      max_rows_per_rank=most, **extra)  # fmt: skip
            out = pair.combine(comm, recv * 3 + 1, handle)
            if recv_splits != want[1] or not torch.equal(recv, want[0]) or not torch.equal(out, send * 3 + 1):
                failures += 1
                print(f"rank {me}: {pair_name} wrong ({name}, {extra})", flush=True)
            if pair_name not in ("ll", "allgather"):  # the exchanges take contiguous rows; these two copy
                continue
            strided = torch.stack([send, send], dim=-1)[..., 0]  # the same rows, not contiguous
            recv, _, _ = pair.dispatch(comm, strided, splits[me].tolist(), inner="native", max_rows_per_rank=most,
                                       **extra)  # fmt: skip
            if not torch.equal(recv, want[0]):
                failures += 1
                print(f"rank {me}: {pair_name} wrong on strided rows ({name})", flush=True)
    # ll keeps its buffers, copy plans and counts per shape: the same cap under alternating split patterns
    for trial in range(3):
        for name, splits in cases.items():
            send = rows(me, splits[me], H, torch.float32, trial)
            want = DISPATCH_COMBINE["plain"].dispatch(comm, send, splits[me].tolist(), inner="native")
            recv, recv_splits, handle = DISPATCH_COMBINE["ll"].dispatch(comm, send, tuple(splits[me].tolist()),
                                                                        cap_rows=R * P)  # fmt: skip
            out = DISPATCH_COMBINE["ll"].combine(comm, recv * 2, handle)
            if recv_splits != want[1] or not torch.equal(recv, want[0]) or not torch.equal(out, send * 2):
                failures += 1
                print(f"rank {me}: ll wrong on a repeated shape ({name}, trial {trial})", flush=True)
    if comm.rank == 0:
        print(f"pair edges P={P}: {failures} failures", flush=True)
    return 1 if failures else 0


def ll_overflow(comm) -> int:
    """Rank 0 sends 2 rows to every peer against a cap of 1: a one-line error, the job aborted."""
    from moebench.collectives import DISPATCH_COMBINE

    P = comm.world_size
    splits = [2 if comm.rank == 0 else 1] * P
    send = torch.zeros(sum(splits), 4)
    DISPATCH_COMBINE["ll"].dispatch(comm, send, splits, cap_rows=1)
    return 0


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


def killed_on_rank_1(comm) -> int:
    """Rank 1 dies as an OOM kill or a segfault would (SIGKILL: no handler, no abort path runs); mpiexec ends
    the job."""
    if comm.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    comm.barrier()
    return 0


def main() -> int:
    backend, G, L, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    def body() -> int:
        comm = open_comm(backend, G or None, L)
        if mode == "check":
            return check(comm)
        if mode == "edges":
            return pair_edges(comm)
        if mode == "ll-overflow":
            return ll_overflow(comm)
        if mode.startswith("bad-"):
            return bad_splits(comm, mode[4:])
        if mode == "killed":
            return killed_on_rank_1(comm)
        return raise_on_rank_1(comm)

    return guarded(body)


if __name__ == "__main__":
    raise SystemExit(main())
