"""Hierarchical all-to-all-v (DeepSpeed-MoE / Tutel 2D) with variable split sizes.

P = world size, G = ranks per node, N = P / G nodes, H = elements per row.
Rank r = n * G + g sits on node n at local index g. Destination d = n' * G + g'.

  1. layout transform: order my chunks by (g', n') instead of (n', g')
  2. intra-node all-to-all: local peer g' gets every row bound for local index g' on any node
  3. layout transform: order what arrived by (n', g_src) instead of (g_src, n')
  4. inter-node all-to-all among the N ranks with local index g: node n' gets its rows

Each rank exchanges G - 1 intra-node and N - 1 inter-node messages (flat: P - G inter-node).
Counts travel the same two levels first (N integers per intra-node peer, G per inter-node peer).
A level whose group has one rank (G = 1 or N = 1) is the identity and is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from moebench.collectives.exchange import Algorithm, Plan, transpose_chunks


@dataclass(frozen=True)
class Counts:
    """Row counts at each stage (all [., .] int64 grids).

    mine[n', g']: my rows for rank (n', g') (= send_splits as an [N, G] grid)
    intra[g_src, n']: rows local peer g_src sends me in step 2, bound for node n' at my local index
    inter[n_src, g_src]: rows rank (n_src, g_src) finally sends me (= recv_splits as an [N, G] grid)
    """

    mine: np.ndarray
    intra: np.ndarray
    inter: np.ndarray


def _counts(group, counts: np.ndarray) -> np.ndarray:
    return counts if group.size == 1 else group.exchange_counts(counts)


def _rows(group, x: torch.Tensor, send_counts, recv_counts) -> torch.Tensor:
    return x if group.size == 1 else group.alltoallv(x, send_counts, recv_counts)


def plan(comm, send_splits) -> Plan:
    """Exchange counts intra-node, then inter-node; no world-wide collective."""
    N, G = comm.topology.num_nodes, comm.topology.ranks_per_node
    mine_NG = np.asarray(send_splits, dtype=np.int64).reshape(N, G)
    intra_GN = _counts(comm.intra, np.ascontiguousarray(mine_NG.T))
    inter_NG = _counts(comm.inter, np.ascontiguousarray(intra_GN.T))
    counts = Counts(mine_NG, intra_GN, inter_NG)
    return Plan(tuple(send_splits), tuple(int(c) for c in inter_NG.reshape(-1)), counts)


def forward(comm, send: torch.Tensor, plan: Plan) -> torch.Tensor:
    """send [N_rows, H] (rows for rank 0 first) -> recv [sum(recv_splits), H] (rows from rank 0 first)."""
    c: Counts = plan.extra
    by_local = transpose_chunks(send, c.mine)  # (n', g') -> (g', n')
    arrived = _rows(comm.intra, by_local, c.mine.sum(axis=0), c.intra.sum(axis=1))
    by_node = transpose_chunks(arrived, c.intra)  # (g_src, n') -> (n', g_src)
    return _rows(comm.inter, by_node, c.intra.sum(axis=0), c.inter.sum(axis=1))


def backward(comm, rows: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The forward steps undone in reverse order: rows [sum(recv_splits), H] -> [N_rows, H] in send order."""
    c: Counts = plan.extra
    by_node = _rows(comm.inter, rows, c.inter.sum(axis=1), c.intra.sum(axis=0))
    arrived = transpose_chunks(by_node, c.intra.T)  # (n', g_src) -> (g_src, n')
    by_local = _rows(comm.intra, arrived, c.intra.sum(axis=1), c.mine.sum(axis=0))
    return transpose_chunks(by_local, c.mine.T)  # (g', n') -> (n', g')


ALGORITHM = Algorithm("hierarchical", plan, forward, backward)
