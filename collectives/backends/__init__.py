"""The backends: one module each, holding its Group and its bootstrap.

BACKENDS[name].bootstrap(ranks_per_node, tp, device) -> Communicator
"""

from __future__ import annotations

import os

import torch

from moebench.collectives.backends import mpi, torch_dist
from moebench.collectives.comm import Communicator

BACKENDS = {
    "mpi": mpi,
    "torch": torch_dist,
}


def init_comm(
    backend: str = "mpi",
    ranks_per_node: int | None = None,
    tp: int = 1,
    device: str | None = None,
    inter_latency_us: float | None = None,
) -> Communicator:
    """Join the job: `backend` "mpi" (mpi4py) or "torch" (torch.distributed: gloo on CPU, NCCL on GPU).

    ranks_per_node: G, to emulate G ranks per node on one host (default: group by hostname).
    tp: L, the TP degree (groups of L consecutive ranks). device: "cpu" or "cuda" (default: cuda
    when available). inter_latency_us: emulated latency per inter-node message (default: the
    MOEBENCH_INTER_LATENCY_US environment variable, else 0). Raises ValueError (a TopologyError)
    when G or L does not divide P.
    """
    if inter_latency_us is None:
        inter_latency_us = float(os.environ.get("MOEBENCH_INTER_LATENCY_US", "0"))
    if inter_latency_us < 0:
        raise ValueError(f"inter-node latency must be >= 0 µs, got {inter_latency_us}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    comm = BACKENDS[backend].bootstrap(ranks_per_node, tp, dev)
    comm.traffic.inter_latency_s = inter_latency_us * 1e-6
    return comm
