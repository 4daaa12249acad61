"""Emulated multi-node cluster on one host: network namespaces on a bridge, shaped node uplinks; any benchmark inside.

    moebench cluster --nodes 2 --ranks-per-node 2 --inter-bw 1gbit [--inter-latency 20us] collectives -b 64K -e 4M

The machinery (namespaces, shaping, launch, the MPI probe, cleanup) is bench/topo/cluster.py.
"""

from __future__ import annotations

import argparse

from moebench.bench.topo.cluster import parse_latency, parse_rate, run_cluster


def add_arguments(p) -> None:
    p.add_argument("--nodes", type=int, default=2, help="N: emulated nodes (network namespaces)")
    p.add_argument("--ranks-per-node", type=int, default=2, help="G: ranks per node")
    p.add_argument(
        "--inter-bw", type=parse_rate, default=parse_rate("1gbit"), help="each node's uplink, per direction (tc rate)"
    )
    p.add_argument("--no-shaping", action="store_true", help="leave the inter-node links unshaped")
    p.add_argument("--shaper", choices=("tbf", "htb"), default="tbf", help="tc qdisc that shapes the uplinks")
    p.add_argument(
        "--inter-latency", type=parse_latency, default=0.0, help="added per inter-node message in user space (20us)"
    )
    p.add_argument("--timeout", type=float, default=None, help="end the run (and clean up) after this many seconds")
    # library-default: leave MPICH/UCX to pick their transports (on one host: shared memory, which the
    # probe refuses for the mpi backend); only to test that refusal
    p.add_argument("--mpi-transport", choices=("tcp", "library-default"), default="tcp", help=argparse.SUPPRESS)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark to run: e.g. collectives -b 1K -e 4M")


def validate(args) -> list[str]:
    """Checks that need no host access: ValueError on bad input; returns the benchmark's arguments."""
    bench_args = list(args.bench_args)
    if bench_args and bench_args[0] == "--":
        bench_args = bench_args[1:]
    if not bench_args:
        raise ValueError("cluster: name the benchmark to run, e.g. `cluster --nodes 2 collectives -b 1K -e 4M`")
    if bench_args[0] == "cluster":
        raise ValueError("cluster: cannot run a cluster inside a cluster")
    if args.nodes < 1 or args.ranks_per_node < 1:
        raise ValueError(f"need --nodes >= 1 and --ranks-per-node >= 1 (got {args.nodes}, {args.ranks_per_node})")
    if args.nodes > 64:
        raise ValueError(f"--nodes {args.nodes}: at most 64 emulated nodes")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError(f"--timeout must be > 0 s (got {args.timeout})")
    return bench_args


def run(args) -> int:
    bench_args = validate(args)
    rate = None if args.no_shaping else args.inter_bw
    return run_cluster(args.nodes, args.ranks_per_node, bench_args, rate, args.shaper, args.inter_latency, args.timeout,
                       args.mpi_transport)  # fmt: skip
