"""Hierarchical all-to-all-v (DeepSpeed-MoE / Tutel 2D) with variable split sizes.

P = world size, G = ranks per node, N = P / G nodes, R = rows a rank sends, H = elements per row.
Rank r = n * G + g sits on node n at local index g. Destination d = n' * G + g'.

  1. layout transform: order my chunks by (g', n') instead of (n', g')
  2. intra-node all-to-all: local peer g' gets every row bound for local index g' on any node
  3. layout transform: order what arrived by (n', g_src) instead of (g_src, n')
  4. inter-node all-to-all among the N ranks with local index g: node n' gets its rows

Each rank exchanges G - 1 intra-node and N - 1 inter-node messages (flat: P - G inter-node).
Counts travel the same two levels first (N integers per intra-node peer, G per inter-node peer).
A level whose group has one rank (G = 1 or N = 1) is the identity: the algorithm is then the other level alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moebench.collectives import schedule as sched
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


def _one_level(comm):
    """The group that holds every rank in rank order where the other level is the identity (one node: the node's
    group; one rank per node: the cross-node group), else None."""
    N, G = comm.topology.num_nodes, comm.topology.ranks_per_node
    return comm.intra if N == 1 else comm.inter if G == 1 else None


def plan(comm, send_splits) -> Plan:
    """Exchange counts intra-node, then inter-node; no world-wide collective. With one level (one node, or one
    rank per node) that level's exchange is the whole algorithm: its counts take the split-count path and the
    plan keeps the group instead of the stage grids. Past it both levels have more than one rank."""
    group = _one_level(comm)
    if group is not None:
        send_splits = tuple(map(int, send_splits))
        return Plan(send_splits, group.exchange_counts(send_splits), group)
    N, G = comm.topology.num_nodes, comm.topology.ranks_per_node
    mine_NG = np.asarray(send_splits, dtype=np.int64).reshape(N, G)
    intra_GN = comm.intra.exchange_counts(np.ascontiguousarray(mine_NG.T))
    inter_NG = comm.inter.exchange_counts(np.ascontiguousarray(intra_GN.T))
    counts = Counts(mine_NG, intra_GN, inter_NG)
    return Plan(tuple(send_splits), tuple(int(c) for c in inter_NG.reshape(-1)), counts)


def forward(comm, send: torch.Tensor, plan: Plan) -> torch.Tensor:
    """send [R, H] (rows for rank 0 first) -> recv [sum(recv_splits), H] (rows from rank 0 first)."""
    c = plan.extra
    if type(c) is not Counts:  # one level: its group's all-to-all-v
        return c.alltoallv(send, plan.send_splits, plan.recv_splits)
    by_local = transpose_chunks(send, c.mine)  # (n', g') -> (g', n')
    arrived = comm.intra.alltoallv(by_local, c.mine.sum(axis=0), c.intra.sum(axis=1))
    by_node = transpose_chunks(arrived, c.intra)  # (g_src, n') -> (n', g_src)
    return comm.inter.alltoallv(by_node, c.intra.sum(axis=0), c.inter.sum(axis=1))


def backward(comm, rows: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The forward steps undone in reverse order: rows [sum(recv_splits), H] -> [R, H] in send order."""
    c = plan.extra
    if type(c) is not Counts:  # one level
        return c.alltoallv(rows, plan.recv_splits, plan.send_splits)
    by_node = comm.inter.alltoallv(rows, c.inter.sum(axis=1), c.intra.sum(axis=0))
    arrived = transpose_chunks(by_node, c.intra.T)  # (n', g_src) -> (g_src, n')
    by_local = comm.intra.alltoallv(arrived, c.intra.sum(axis=1), c.mine.sum(axis=0))
    return transpose_chunks(by_local, c.mine.T)  # (g', n') -> (n', g')


# ------------------------------------------------------------------------------ schedule


def _grids(splits: np.ndarray, topo):
    """Row counts of the stages, for every rank r: mine[r, n', g'], intra[r, g_src, n'] (as Counts)."""
    P, G = topo.world_size, topo.ranks_per_node
    N = P // G
    S = np.asarray(splits, dtype=np.int64)
    mine = S.reshape(P, N, G)  # mine[r, n', g'] = rows r sends rank (n', g')
    # intra[(n, g), g_src, n'] = rows local peer (n, g_src) sends me in step 2, bound for (n', g)
    intra = S.reshape(N, G, N, G).transpose(0, 3, 1, 2).reshape(P, G, N)
    return mine, intra


def schedule(splits, row_bytes: int, topo, plan: bool = True, backward: bool = False) -> list[sched.Phase]:
    """Counts intra, counts inter; transform, intra a2a, transform, inter a2a (backward: the four data
    steps undone in reverse order along the same routes, no counts)."""
    P, G = topo.world_size, topo.ranks_per_node
    N = P // G
    mine, intra = _grids(splits, topo)
    node_groups = [topo.node_ranks(n) for n in range(N)]
    cross_groups = [topo.cross_ranks(g) for g in range(G)]
    phases = []
    if plan and not backward:
        if G > 1:
            phases.append(sched.counts_exchange("counts intra", node_groups, N, P))
        if N > 1:
            phases.append(sched.counts_exchange("counts inter", cross_groups, G, P))
    transform = G > 1 and N > 1
    rows_sent = mine.sum(axis=(1, 2)).astype(np.float64)  # [P]
    rows_arrived = intra.sum(axis=(1, 2)).astype(np.float64)  # [P] rows held after step 2
    t1 = lambda: sched.copy_phase("transform 1", rows_sent * row_bytes, N * G)
    t2 = lambda: sched.copy_phase("transform 2", rows_arrived * row_bytes, N * G)
    # step 2: (n, g) -> local peer (n, g'): every row bound for local index g' on any node
    to_local = mine.sum(axis=1).astype(np.float64) * row_bytes  # [P, G]
    intra_bytes = lambda a, b: to_local[a, b % G]
    # step 4: (n, g) -> (n', g): rows from every local source bound for (n', g)
    to_node = intra.sum(axis=1).astype(np.float64) * row_bytes  # [P, N]
    inter_bytes = lambda a, b: to_node[a, b // G]
    ranks = np.arange(P)
    keep_intra, keep_inter = intra_bytes(ranks, ranks), inter_bytes(ranks, ranks)  # own chunks, copied locally
    intra_a2a = lambda name, fn: sched.with_self(sched.group_exchange(name, node_groups, fn, P), keep_intra)
    inter_a2a = lambda name, fn: sched.with_self(sched.group_exchange(name, cross_groups, fn, P), keep_inter)
    if not backward:
        steps = [
            (transform, t1),
            (G > 1, lambda: intra_a2a("intra a2a", intra_bytes)),
            (transform, t2),
            (N > 1, lambda: inter_a2a("inter a2a", inter_bytes)),
        ]
    else:  # a -> b carries what b sent a going forward
        steps = [
            (N > 1, lambda: inter_a2a("inter a2a back", lambda a, b: inter_bytes(b, a))),
            (transform, t2),
            (G > 1, lambda: intra_a2a("intra a2a back", lambda a, b: intra_bytes(b, a))),
            (transform, t1),
        ]
    return phases + [make() for present, make in steps if present]


ALGORITHM = Algorithm("hierarchical", plan, forward, backward, schedule)
