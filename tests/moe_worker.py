# T = tokens per rank, E = experts, k = active, P = ranks, L = TP degree
"""Multi-rank checks of the MoE layer against the single-process reference, launched under mpiexec.

usage: moe_worker.py BACKEND G L IMPL
Every algorithm and pair (dedup, fp8 among them) x kernel, with and without drops, on routings that stress the
layout: the real gate, all tokens to rank 0's experts, experts that no token chose, T = 1, k = E.
"""

from __future__ import annotations

import sys

import torch

from moebench.bench.cli import guarded, open_comm
from moebench.bench.commands.moe import DEFAULT_ALGOS, rel_error
from moebench.bench.layer import forward as moe
from moebench.bench.layer.overlap import parse_overlap
from moebench.bench.layer.presets import Preset
from moebench.bench.layer.workloads import make_tokens
from moebench.kernels import BASELINES, EXPERT_KERNELS

MICRO = Preset("micro-test", 32, 48, 8, 2, "swiglu", "test shape")
ALGOS = [moe.parse_algo(a) for a in DEFAULT_ALGOS]  # every exchange (plain) and every pair over flat


def routings(T: int, preset: Preset, P: int, seed: int):
    """name -> forced (ids_Tk, weights_Tk) or None (the real gate)."""
    g = torch.Generator().manual_seed(seed)
    per_rank = preset.E // P
    weights = torch.softmax(torch.randn(T, preset.k, generator=g), dim=-1)
    rank0 = torch.stack([torch.randperm(per_rank, generator=g)[: preset.k] for _ in range(T)])
    cases = {"gate": None}
    if preset.k <= per_rank:
        cases["rank0-only"] = (rank0, weights)
    if preset.k == 2:
        cases["idle-experts"] = (torch.tensor([1, preset.E - 1]).repeat(T, 1), weights)  # the others idle
    return cases


def check(comm, impl: str) -> int:
    P, L = comm.world_size, comm.tp.size
    failures = 0
    cases = [(MICRO, 5), (MICRO, 1), (Preset("micro-k=E", 16, 24, P * 2, P * 2, "swiglu"), 3)]
    kernels = list(EXPERT_KERNELS) + ([] if impl == "triton" else list(BASELINES))
    for preset, T in cases:
        weights = moe.make_weights(preset, torch.float32, "cpu", 3, comm.rank * (preset.E // P), preset.E // P)
        seed = 17 + comm.rank // L  # TP groups share tokens
        x_TH = make_tokens(T, preset.H, seed=seed)
        for name, forced in routings(T, preset, P, seed).items():
            for cf in (None, 1.0):
                ref = moe.reference_forward(x_TH, preset, cf, 3, forced)
                for pair, inner in ALGOS:
                    for kernel in kernels:
                        kernel_impl = impl if kernel in EXPERT_KERNELS else "torch"
                        layer = moe.LayerConfig(preset, pair, inner, kernel, kernel_impl, cf, max_rows=T * preset.k)
                        y = moe.forward(comm, x_TH, weights, layer, lambda: None, forced)
                        err = rel_error(y, ref)
                        codec = layer.pair.codec
                        if not codec.exact:  # fp8: tight against the reference on the e4m3-rounded inputs
                            ref_q = moe.reference_forward(
                                x_TH, preset, cf, 3, forced, expert_input=codec.reference(x_TH)
                            )
                            err = rel_error(y, ref_q) if rel_error(y, ref) > 1e-5 else 1.0  # really quantized
                        bound = 1e-5 + codec.combine_error_bound
                        if not err <= bound:
                            failures += 1
                            where = f"{preset.name} T={T} {name} cf={cf} {layer.label}+{kernel}"
                            print(f"rank {comm.rank}: {where}: {err:.2e}")
    failures += check_overlap(comm, impl)
    if comm.rank == 0:
        print(f"moe checked P={P} L={L} {impl}: {failures} failures", flush=True)
    return 1 if failures else 0


OVERLAPS = ("chunks:2", "chunks:3", "dual")
PIPELINED = ("plain", "dedup", "fp8", "fp8-dedup")


def check_overlap(comm, impl: str) -> int:
    """Every overlap mode x the pairs it pipelines, with and without a shared expert: T = 1 (one chunk), T = 5
    (chunks of 2, 2, 1), a peer with no rows (rank 0's experts only), against the reference."""
    P, L, failures = comm.world_size, comm.tp.size, 0
    for shared in (0, 1):
        weights = moe.make_weights(MICRO, torch.float32, "cpu", 3, comm.rank * (MICRO.E // P), MICRO.E // P,
                                   shared=shared)  # fmt: skip
        for T in (1, 5):
            seed = 29 + comm.rank // L
            x_TH = make_tokens(T, MICRO.H, seed=seed)
            for name, forced in routings(T, MICRO, P, seed).items():
                ref = moe.reference_forward(x_TH, MICRO, None, 3, forced, shared=shared)
                for mode in OVERLAPS:
                    for pair in PIPELINED:
                        layer = moe.LayerConfig(MICRO, pair, "native", "dynamic", impl, None,
                                                overlap=parse_overlap(mode))  # fmt: skip
                        y = moe.run_layer(comm, x_TH, weights, layer, lambda: None, forced)
                        codec = layer.pair.codec
                        if not codec.exact:  # tight, against the reference on the e4m3-rounded inputs
                            ref_used = moe.reference_forward(x_TH, MICRO, None, 3, forced, shared=shared,
                                                             expert_input=codec.reference(x_TH))  # fmt: skip
                        err = rel_error(y, ref if codec.exact else ref_used)
                        if not err <= 1e-5 + codec.combine_error_bound:
                            failures += 1
                            print(f"rank {comm.rank}: shared={shared} T={T} {name} {mode} {pair}: {err:.2e}")
    return failures


def main() -> int:
    backend, G, L, impl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    return guarded(lambda: check(open_comm(backend, G or None, L), impl))


if __name__ == "__main__":
    raise SystemExit(main())
