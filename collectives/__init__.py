"""How bytes move between ranks: a communicator over two backends and the all-to-all algorithms.

    from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE, init_comm
    comm = init_comm(backend="mpi", ranks_per_node=None, tp=1)
    recv, recv_splits = ALGORITHMS["flat"](comm, send, send_splits)
    pair = DISPATCH_COMBINE["coordinated"]
    recv, recv_splits, handle = pair.dispatch(comm, send, send_splits, inner="flat")
    out = pair.combine(comm, processed_recv, handle)

A new algorithm is one module defining an `Algorithm` (plan, forward, backward, schedule) and one line
in ALGORITHMS; a new pair is one module defining a `DispatchCombine` and one line in DISPATCH_COMBINE.
Every benchmark, the cost model and the tests take their lists from these registries.
"""

if __name__ == "collectives":  # imported bare, from the checkout root: step aside
    import moebench

    moebench.step_aside(__name__)


from moebench.collectives import allgather, coordinated, dedup, flat, fp8, hierarchical, low_latency, native, plain
from moebench.collectives.backends import BACKENDS, init_comm
from moebench.collectives.comm import Communicator
from moebench.collectives.exchange import Algorithm, DispatchCombine
from moebench.collectives.topology import Topology, TopologyError

# The exchanges: `ALGORITHMS[name](comm, send, send_splits) -> (recv, recv_splits)`.
ALGORITHMS: dict[str, Algorithm] = {
    "flat": flat.ALGORITHM,
    "hierarchical": hierarchical.ALGORITHM,
    "native": native.ALGORITHM,
}

# Dispatch/combine pairs over any exchange (`inner=` one of ALGORITHMS).
DISPATCH_COMBINE: dict[str, DispatchCombine] = {
    "plain": plain.PAIR,
    "coordinated": coordinated.PAIR,
    "ll": low_latency.PAIR,
    "allgather": allgather.PAIR,
    "dedup": dedup.PAIR,
    "fp8": fp8.PAIR,
    "fp8-dedup": fp8.DEDUP_PAIR,
}

__all__ = [
    "ALGORITHMS",
    "BACKENDS",
    "DISPATCH_COMBINE",
    "Algorithm",
    "Communicator",
    "DispatchCombine",
    "Topology",
    "TopologyError",
    "init_comm",
]
