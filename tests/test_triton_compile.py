"""Every Triton kernel compiles for Hopper (sm_90) and Ampere (sm_80) on this CPU-only machine, and the
PTX holds the matrix instructions we expect: wgmma on sm_90 and mma.sync on sm_80 for 16-bit inputs.

Compilation needs triton's real JIT, so it runs in a subprocess without TRITON_INTERPRET (the other
kernel tests import triton in interpreter mode).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

BLOCK = 64  # representative: the default routing block size and GEMM tile rows


def _gemm_kernels(dtype: str) -> dict:
    """(kernel, signature, constexprs) for every expert GEMM kernel, pointers of `dtype`."""
    from moebench.kernels import block_sparse, dynamic, padded
    from moebench.kernels.triton_utils import BLOCK_K, BLOCK_N

    p, i64 = f"*{dtype}", "*i64"
    common = {
        "BLOCK_N": BLOCK_N,
        "BLOCK_K": BLOCK_K,
        "UPCAST": False,
        "DOT_PREC": "ieee" if dtype == "fp32" else "tf32",
    }
    return {
        "padded_gate_up": (
            padded._padded_gate_up_kernel,
            {"x_ptr": p, "w_gate_ptr": p, "w_up_ptr": p, "h_ptr": p, "C": "i32", "H": "i32", "F": "i32"},
            {"BLOCK_M": BLOCK, **common},
        ),
        "padded_down": (
            padded._padded_down_kernel,
            {"h_ptr": p, "w_down_ptr": p, "out_ptr": p, "C": "i32", "H": "i32", "F": "i32"},
            {"BLOCK_M": BLOCK, **common},
        ),
        "dynamic_gate_up": (
            dynamic._dynamic_gate_up_kernel,
            {
                "x_ptr": p, "sort_idx_ptr": i64, "tile_expert_ptr": i64, "tile_row_ptr": i64, "offsets_ptr": i64,
                "w_gate_ptr": p, "w_up_ptr": p, "h_ptr": p, "H": "i32", "F": "i32", "TOP_K": "i32",
            },
            {"BLOCK_M": BLOCK, **common},
        ),
        "dynamic_down": (
            dynamic._dynamic_down_kernel,
            {
                "h_ptr": p, "sort_idx_ptr": i64, "tile_expert_ptr": i64, "tile_row_ptr": i64, "offsets_ptr": i64,
                "w_down_ptr": p, "weights_ptr": "*fp32", "out_ptr": "*fp32", "H": "i32", "F": "i32",
            },
            {"BLOCK_M": BLOCK, **common},
        ),
        "sdd_gate_up": (
            block_sparse._sdd_gate_up_kernel,
            {
                "x_ptr": p, "column_indices_ptr": i64, "w_gate_ptr": p, "w_up_ptr": p, "data_ptr": p,
                "H": "i32", "F": "i32", "J": "i32",
            },
            {"Q": BLOCK, **common},
        ),
        "dsd_down": (
            block_sparse._dsd_down_kernel,
            {
                "data_ptr": p, "column_indices_ptr": i64, "row_offsets_ptr": i64, "w_down_ptr": p, "out_ptr": p,
                "H": "i32", "F": "i32", "J": "i32",
            },
            {"Q": BLOCK, **common},
        ),
    }  # fmt: skip


def _gate_kernel() -> tuple:
    from moebench.kernels import routing

    signature = {"logits_ptr": "*fp32", "ids_ptr": "*i64", "weights_ptr": "*fp32", "T": "i32", "E": "i32",
                 "stride_t": "i32"}  # fmt: skip
    return routing._topk_softmax_kernel, signature, {"TOP_K": 8, "TOP_K_PAD": 8, "BLOCK_T": 16, "BLOCK_E": 256}


def _matrix_instructions(ptx: str) -> list[str]:
    return sorted(set(re.findall(r"(wgmma\.mma_async\.[\w.]+|mma\.sync\.[\w.]+)", ptx)))


def compile_report(capability: int) -> dict:
    """name -> matrix instructions in its PTX, compiled for sm_<capability>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", capability, 32)
    jobs = {"topk_softmax": _gate_kernel()}
    for dtype in ("bf16", "fp16", "fp32"):
        jobs.update({f"{name}[{dtype}]": job for name, job in _gemm_kernels(dtype).items()})
    report = {}
    for name, (fn, signature, constexprs) in jobs.items():
        signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
        compiled = triton.compile(ASTSource(fn, signature, constexprs), target=target)
        report[name] = _matrix_instructions(compiled.asm["ptx"])
    return report


CAPABILITIES = (90, 80)


@pytest.fixture(scope="module")
def reports() -> dict[int, dict]:
    """Both targets compiled at once, in two subprocesses (one per core)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {
        cap: subprocess.Popen([sys.executable, __file__, str(cap)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        for cap in CAPABILITIES
    }  # fmt: skip
    out = {}
    for cap, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        out[cap] = json.loads(stdout.splitlines()[-1])
    return out


@pytest.fixture(params=CAPABILITIES)
def report(request, reports) -> tuple[int, dict]:
    return request.param, reports[request.param]


def test_every_kernel_compiles(report):
    _, found = report
    assert "topk_softmax" in found
    assert len(found) == 1 + 6 * 3, sorted(found)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_16bit_gemms_use_tensor_cores(report, dtype):
    capability, found = report
    expect = "wgmma.mma_async" if capability == 90 else "mma.sync"
    input_type = {"bf16": "bf16", "fp16": "f16"}[dtype]
    for name, instructions in found.items():
        if name.endswith(f"[{dtype}]"):
            assert any(i.startswith(expect) and f".{input_type}." in i for i in instructions), (name, instructions)


def test_fp32_gemms_stay_full_precision(report):
    """fp32 inputs use input_precision='ieee' (FMA), not tf32 tensor cores, so they meet the 1e-5 bar."""
    _, found = report
    for name, instructions in found.items():
        if name.endswith("[fp32]"):
            assert instructions == [], (name, instructions)


if __name__ == "__main__":
    print(json.dumps(compile_report(int(sys.argv[1]))))
