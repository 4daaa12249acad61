# T = tokens per rank, k = experts per token, P = ranks, El = local experts (slots) per rank, H = hidden,
# A = kept (token, expert) assignments this rank sends, M = rows it receives, Wp = payload bytes of a token
# (the codec's), W = Wp + 8 (the payload and a local expert id)
"""The layer's rows, one per kept (token, expert) assignment: the plain, coordinated, ll, allgather and fp8
pairs' unit. Each row is the token's encoded payload followed by its local expert id (int64); the receiver
runs each row through its expert (k = 1, weight 1) and the sender weights and sums what comes back.

Small CPU batches take host paths (Python lists and numpy: a few µs where each torch op costs ~5).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from moebench.bench.layer.placements import Placement
from moebench.collectives.codec import NUMPY_DTYPES, join_columns, packed
from moebench.collectives.comm import from_numpy
from moebench.kernels import get_kernel, routing_for_rows
from moebench.kernels.routing import HOST_ROWS

ID_BYTES = 8  # a local expert id (int64) travels at the end of each row
LOOP_ROWS = 16  # up to this many rows, unpermute sums them in numpy; beyond, one index_add


class Permuted(NamedTuple):
    """send_AW: rows [A, W] (uint8) in destination order; token_A, weight_A: each row's token and the weight its
    output is summed with (tensors [A], or lists for a small CPU batch). A NamedTuple: made every forward, it costs
    less than a frozen dataclass."""

    send_AW: torch.Tensor
    send_splits: tuple[int, ...]
    token_A: torch.Tensor | list
    weight_A: torch.Tensor | list


def header_bytes(k: int) -> int:
    """Bytes riding on each row after the payload: the local expert id."""
    return ID_BYTES


def host_order(routing, num_ranks: int, experts_per_rank: int):
    """Small batches on the CPU: the kept assignments' order by destination, in a few Python lines.
    Returns (assignment ids in send order, their local expert ids, send_splits)."""
    ids = routing.topk_ids_list
    dest = [e // experts_per_rank for e in ids]
    kept = range(len(ids))
    if routing.capacity is not None:
        kept_A = routing.kept_Tk.view(-1).tolist()
        kept = [a for a in kept if kept_A[a]]
    order = sorted(kept, key=dest.__getitem__)  # stable: by destination, then assignment id
    splits = [0] * num_ranks
    for a in order:
        splits[dest[a]] += 1
    return order, [ids[a] % experts_per_rank for a in order], tuple(splits)


def device_order(routing, num_ranks: int, experts_per_rank: int):
    """The same on the device: one stable sort by destination (dropped assignments sort last), and the
    counts, which the all-to-all needs on the host (the one sync of this phase)."""
    ids_A = routing.topk_ids_Tk.view(-1)
    dest_A = ids_A // experts_per_rank
    if routing.capacity is not None:
        dest_A = torch.where(routing.kept_Tk.view(-1), dest_A, num_ranks)
    order_A = torch.sort(dest_A, stable=True).indices
    counts = torch.bincount(dest_A, minlength=num_ranks + 1).tolist()
    order_A = order_A[: sum(counts[:num_ranks])]
    return order_A, ids_A[order_A] % experts_per_rank, tuple(counts[:num_ranks])


def placed_order(routing, placement: Placement, rank: int):
    """Under a placement: each kept assignment to the slot the placement's dispatch picks for this rank, in
    destination order (stable). Returns (assignment ids, their local slot ids, send_splits) like device_order."""
    device = routing.topk_ids_Tk.device
    ids_A, kept_A = routing.topk_ids_Tk.view(-1).cpu(), routing.kept_Tk.view(-1).cpu()
    kept_K = kept_A.nonzero().view(-1)
    slot_K = placement.dispatch(ids_A[kept_K], torch.full_like(kept_K, rank))
    dest_K, local_K = placement.rank_of_slots(slot_K), placement.local_of_slot_S[slot_K]
    order_K = torch.sort(dest_K, stable=True).indices
    splits = tuple(torch.bincount(dest_K, minlength=placement.num_ranks).tolist())
    return kept_K[order_K].to(device), local_K[order_K].to(device), splits


def on_host(x: torch.Tensor, rows: int) -> bool:
    """Small CPU batches of a numpy-representable dtype go through numpy (the cheapest tests first: x.device.type
    alone costs ~7 µs with the caches the experts leave)."""
    return rows <= HOST_ROWS and not x.is_cuda and x.dtype in NUMPY_DTYPES


def tensor_order(routing, num_ranks: int, experts_per_rank: int, placement=None, rank: int = 0):
    """(assignment ids, local ids, send_splits) as tensors: device_order, or placed_order under a placement."""
    if placement is None:
        return device_order(routing, num_ranks, experts_per_rank)
    return placed_order(routing, placement, rank)


def permute(payload_TW, routing, num_ranks: int, experts_per_rank: int, placement=None, rank: int = 0) -> Permuted:
    """payload_TW: uint8 [T, Wp], each token encoded once -> kept assignments sorted by destination rank, each
    row its token's payload and its local expert id (under a placement: the slot its dispatch picks, as rank
    `rank`)."""
    T, k = routing.num_tokens, routing.top_k  # a host routing's [T, k] tensors are made only if asked for
    if placement is None and on_host(payload_TW, T * k):
        order, local, send_splits = host_order(routing, num_ranks, experts_per_rank)
        tokens = [a // k for a in order]
        payload = payload_TW.numpy()
        send_AW = np.empty((len(order), payload.shape[1] + ID_BYTES), np.uint8)
        for row, token in enumerate(tokens):  # row by row: no gathered temporary (~12 µs less with cold caches)
            send_AW[row, :-ID_BYTES] = payload[token]
        if send_AW.shape[1] % ID_BYTES == 0:  # each row's id is its last int64
            send_AW.view(np.int64)[:, -1] = local
        else:
            send_AW[:, -ID_BYTES:].view(np.int64)[:, 0] = local
        weights = routing.topk_weights_list
        return Permuted(from_numpy(send_AW), send_splits, tokens, [weights[a] for a in order])
    order_A, local_A, send_splits = tensor_order(routing, num_ranks, experts_per_rank, placement, rank)
    token_A = order_A // k
    send_AW = join_columns([payload_TW, local_A.view(torch.uint8).view(-1, ID_BYTES)], token_A)
    weight_A = routing.topk_weights_Tk.view(-1)[order_A]
    return Permuted(send_AW, send_splits, token_A, weight_A)


def unpack(recv_MW: torch.Tensor, k: int):
    """Rows [M, W] -> (payload [M, Wp] (a view; numpy for a small CPU batch), local expert ids [M]: a list for a
    small CPU batch)."""
    if not recv_MW.is_cuda and recv_MW.shape[0] <= HOST_ROWS:  # numpy views: ~1 µs against ~3 for torch's
        recv = recv_MW.numpy()
        if recv.shape[1] % ID_BYTES == 0:  # each row's id is its last int64: read in place, no copy
            return recv[:, :-ID_BYTES], recv.view(np.int64)[:, -1].tolist()
        return recv[:, :-ID_BYTES], recv[:, -ID_BYTES:].copy().view(np.int64).reshape(-1).tolist()
    return recv_MW[:, :-ID_BYTES], packed(recv_MW[:, -ID_BYTES:]).view(torch.int64).view(-1)


def run_experts(x_MH, ids_M, weights, cfg):
    """Each received row through its expert (k = 1, weight 1) -> (y_MH, the kernel's stats, active experts)."""
    device = x_MH.device if x_MH.is_cuda else None  # None: the host (a CPU .device is a new object per read, and
    # routing_for_rows then tests its type: 47 µs for the call against 29 after a 40 MB read on an AMD EPYC)
    routing = routing_for_rows(ids_M, weights.w_gate_EHF.shape[0], device=device)
    y_MH, stats = get_kernel(cfg.kernel)(x_MH, routing, *weights.experts, impl=cfg.impl)
    return y_MH, stats, len(set(ids_M if isinstance(ids_M, list) else ids_M.tolist()))


def unpermute(out_AH, permuted: Permuted, T: int, dtype) -> torch.Tensor:
    """y[t] = sum of token t's returned rows, each times its weight (fp32 accumulate) -> [T, H] in dtype."""
    tokens = permuted.token_A
    if type(tokens) is list and len(tokens) <= LOOP_ROWS and out_AH.dtype in NUMPY_DTYPES:  # permute's host path
        # one small GEMM: weights_TA [T, A] holds each row's weight in its token's row (fp32, so an fp16 out is
        # summed in fp32), filled as Python lists (numpy's fancy assignment costs ~15 µs with cold caches); two
        # numpy calls, where a loop over rows made two per row
        if T == 1:  # decode at batch 1: every row is token 0's
            weights_TA = [permuted.weight_A]
        else:
            weights_TA = [[0.0] * len(tokens) for _ in range(T)]
            for row, (token, weight) in enumerate(zip(tokens, permuted.weight_A)):
                weights_TA[token][row] = weight
        y = from_numpy(np.array(weights_TA, np.float32).reshape(T, len(tokens)) @ out_AH.numpy())  # T = 0 too
        return y if dtype == torch.float32 else y.to(dtype)
    device = out_AH.device
    token_A = torch.as_tensor(permuted.token_A, dtype=torch.int64, device=device)
    weight_A = torch.as_tensor(permuted.weight_A, dtype=torch.float32, device=device)
    y_TH = torch.zeros(T, out_AH.shape[1], dtype=torch.float32, device=device)
    rows_AH = out_AH.float() if out_AH.dtype != torch.float32 else out_AH
    y_TH.index_add_(0, token_A, rows_AH * weight_A[:, None].float())
    return y_TH if dtype == torch.float32 else y_TH.to(dtype)
