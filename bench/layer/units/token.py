# T = tokens per rank, k = experts per token, P = ranks, El = local experts (slots) per rank, H = hidden,
# A = kept assignments, R = rows this rank sends (one per token and destination rank), M = rows it receives,
# Wp = payload bytes of a token (the codec's), W = Wp + 8k (payload, k int32 local ids, k fp32 weights)
"""The layer's rows for `dedup` (and fp8-dedup): one per token and destination rank, DeepEP's and pplx-kernels'
dispatch. A token whose kept experts live on n distinct ranks travels n times, not once per expert.

Row layout: the token's encoded payload, then a header of k slots: k int32 local expert ids (-1 past the
token's experts on that rank), then their k fp32 gate weights (8k bytes; k slots because a token may send all
of its experts to one rank). The receiver runs the row through each of its experts and sums the weighted
outputs (fp32), so combine returns one row per token and rank, which the sender adds up with weight 1.
"""

from __future__ import annotations

import numpy as np
import torch

from moebench.bench.layer.units import assignment
from moebench.bench.layer.units.assignment import Permuted
from moebench.collectives.codec import NUMPY_DTYPES, join_columns, packed
from moebench.collectives.comm import from_numpy
from moebench.kernels.routing import HOST_ROWS

SLOT_BYTES = 8  # an int32 local id and an fp32 weight


def header_bytes(k: int) -> int:
    """Bytes riding on each row after the payload: k ids and k weights."""
    return SLOT_BYTES * k


def _host_rows(routing, num_ranks: int, experts_per_rank: int):
    """Small CPU batches: (tokens [R], ids [R][<=k], weights [R][<=k], splits) grouped in a few Python lines."""
    k = routing.top_k
    order, local, _ = assignment.host_order(routing, num_ranks, experts_per_rank)
    ids, weights = routing.topk_ids_list, routing.topk_weights_list
    tokens, row_ids, row_weights, splits, last = [], [], [], [0] * num_ranks, None
    for a, slot in zip(order, local):
        key = (a // k, ids[a] // experts_per_rank)
        if key != last:
            tokens.append(key[0])
            row_ids.append([])
            row_weights.append([])
            splits[key[1]] += 1
            last = key
        row_ids[-1].append(slot)
        row_weights[-1].append(weights[a])
    return tokens, row_ids, row_weights, tuple(splits)


def _host_permute(payload_TW, routing, num_ranks: int, experts_per_rank: int) -> Permuted:
    k = routing.top_k
    tokens, row_ids, row_weights, splits = _host_rows(routing, num_ranks, experts_per_rank)
    payload, Wp = payload_TW.numpy(), payload_TW.shape[1]
    send_RW = np.empty((len(tokens), Wp + SLOT_BYTES * k), np.uint8)
    ids_RS = np.full((len(tokens), k), -1, np.int32)
    weights_RS = np.zeros((len(tokens), k), np.float32)
    for row, (token, slots, gate) in enumerate(zip(tokens, row_ids, row_weights)):
        send_RW[row, :Wp] = payload[token]
        ids_RS[row, : len(slots)] = slots
        weights_RS[row, : len(gate)] = gate
    send_RW[:, Wp : Wp + 4 * k] = ids_RS.view(np.uint8)
    send_RW[:, Wp + 4 * k :] = weights_RS.view(np.uint8)
    return Permuted(from_numpy(send_RW), splits, tokens, [1.0] * len(tokens))


def permute(payload_TW, routing, num_ranks: int, experts_per_rank: int, placement=None, rank: int = 0) -> Permuted:
    """payload_TW: uint8 [T, Wp] -> rows [R, W] in destination order, one per (token, destination rank), each
    with its local expert ids and gate weights there (under a placement: the slots its dispatch picks)."""
    T, k = routing.num_tokens, routing.top_k
    if placement is None and assignment.on_host(payload_TW, T * k):
        return _host_permute(payload_TW, routing, num_ranks, experts_per_rank)
    order_A, local_A, splits = assignment.tensor_order(routing, num_ranks, experts_per_rank, placement, rank)
    device, A = order_A.device, order_A.shape[0]
    token_A = order_A // k
    dest_A = torch.repeat_interleave(torch.arange(num_ranks, device=device), torch.tensor(splits, device=device))
    # Assignments arrive sorted by destination and, inside one, by token: a new row starts where either changes.
    new_A = torch.ones(A, dtype=torch.bool, device=device)
    new_A[1:] = (token_A[1:] != token_A[:-1]) | (dest_A[1:] != dest_A[:-1])
    row_A = torch.cumsum(new_A, 0) - 1
    first_R = new_A.nonzero().view(-1)
    slot_A = torch.arange(A, device=device) - first_R[row_A]
    R = first_R.shape[0]
    ids_RS = torch.full((R, k), -1, dtype=torch.int32, device=device)
    ids_RS[row_A, slot_A] = local_A.to(torch.int32)
    weights_RS = torch.zeros(R, k, dtype=torch.float32, device=device)
    weights_RS[row_A, slot_A] = routing.topk_weights_Tk.view(-1)[order_A].float()
    token_R = token_A[first_R]
    send_RW = join_columns([payload_TW, ids_RS.view(torch.uint8), weights_RS.view(torch.uint8)], token_R)
    row_splits = tuple(torch.bincount(dest_A[first_R], minlength=num_ranks).tolist())
    return Permuted(send_RW, row_splits, token_R, torch.ones(R, device=device))


def unpack(recv_MW: torch.Tensor, k: int):
    """Rows [M, W] -> (payload [M, Wp] (a view), (local ids [M, k] int32, weights [M, k] fp32), -1 past a row's
    experts; numpy arrays for a small CPU batch, the payload too)."""
    Wp = recv_MW.shape[1] - SLOT_BYTES * k
    if not recv_MW.is_cuda and recv_MW.shape[0] <= HOST_ROWS:
        recv = recv_MW.numpy()
        header = np.ascontiguousarray(recv[:, Wp:])
        return recv[:, :Wp], (header[:, : 4 * k].view(np.int32), header[:, 4 * k :].view(np.float32))
    header = packed(recv_MW[:, Wp:])
    return recv_MW[:, :Wp], (header[:, : 4 * k].view(torch.int32), header[:, 4 * k :].view(torch.float32))


def run_experts(x_MH, meta, weights, cfg):
    """Each row through each of its local experts, weighted and summed (fp32) -> (y_MH in x's dtype, the
    kernel's stats, active experts)."""
    ids_MS, weights_MS = meta
    if isinstance(ids_MS, np.ndarray):
        row_A, slot_A = np.nonzero(ids_MS >= 0)
        ids_A = ids_MS[row_A, slot_A].astype(np.int64).tolist()
        y_AH, stats, active = assignment.run_experts(x_MH[row_A.tolist()], ids_A, weights, cfg)
        if y_AH.dtype in NUMPY_DTYPES:
            y_MH = np.zeros((x_MH.shape[0], x_MH.shape[1]), np.float32)
            np.add.at(y_MH, row_A, y_AH.numpy() * weights_MS[row_A, slot_A][:, None])
            return from_numpy(y_MH).to(x_MH.dtype), stats, active
        ids_MS, weights_MS = torch.from_numpy(ids_MS), torch.from_numpy(weights_MS)
        row_A, slot_A = torch.from_numpy(row_A), torch.from_numpy(slot_A)
    else:
        row_A, slot_A = (ids_MS >= 0).nonzero(as_tuple=True)
        ids_A = ids_MS[row_A, slot_A].long()
        y_AH, stats, active = assignment.run_experts(x_MH.index_select(0, row_A), ids_A, weights, cfg)
    y_MH = torch.zeros(x_MH.shape, dtype=torch.float32, device=x_MH.device)
    y_MH.index_add_(0, row_A.to(x_MH.device), y_AH.float() * weights_MS[row_A, slot_A][:, None].to(x_MH.device))
    return y_MH.to(x_MH.dtype), stats, active


unpermute = assignment.unpermute
