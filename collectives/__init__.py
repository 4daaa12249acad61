"""How bytes move between ranks: a communicator over two backends and the all-to-all algorithms.

from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE, init_comm
comm = init_comm(backend="mpi", ranks_per_node=None, tp=1)
recv, recv_splits = ALGORITHMS["flat"](comm, send, send_splits)
recv, recv_splits, handle = DISPATCH_COMBINE["coordinated"].dispatch(comm, send, send_splits, inner="flat")
out = DISPATCH_COMBINE["coordinated"].combine(comm, processed_recv, handle)
"""

from moebench.collectives import coordinated, flat, hierarchical, native, plain
from moebench.collectives.comm import BACKENDS, Communicator, init_comm
from moebench.collectives.topology import Topology, TopologyError

# The exchanges: one module each, `ALGORITHMS[name](comm, send, send_splits) -> (recv, recv_splits)`.
ALGORITHMS = {
    "flat": flat.ALGORITHM,
    "hierarchical": hierarchical.ALGORITHM,
    "native": native.ALGORITHM,
}

# Dispatch/combine pairs over any exchange (`inner=` one of ALGORITHMS).
DISPATCH_COMBINE = {
    "plain": plain,
    "coordinated": coordinated,
}

__all__ = ["ALGORITHMS", "BACKENDS", "DISPATCH_COMBINE", "Communicator", "Topology", "TopologyError", "init_comm"]
