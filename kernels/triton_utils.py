"""Where Triton kernels can run, and the constexprs every expert kernel takes."""

from __future__ import annotations

import torch

# Tile shape of the expert GEMMs (rows come from the routing's block_size). On GPU, 64 x 32 tiles give
# wgmma on sm_90 and mma.sync on sm_80 (tests/test_triton_compile.py). The CPU interpreter pays per
# program and per loop step, not per element, so there the tiles are larger.
BLOCK_N = 64
BLOCK_K = 32
INTERPRETER_BLOCK_N = 128
INTERPRETER_BLOCK_K = 128
NUM_WARPS = 4


def interpreter_active() -> bool:
    """True when triton was imported with TRITON_INTERPRET=1 (kernels then run on CPU tensors)."""
    import triton.language.standard as tl_standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl_standard.sigmoid, InterpretedFunction)


def require_triton(x: torch.Tensor) -> None:
    """ValueError unless Triton kernels can run on x's device."""
    if x.device.type == "cpu" and not interpreter_active():
        raise ValueError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"impl='triton' runs on cuda (or cpu under TRITON_INTERPRET=1), not {x.device.type}")


def triton_flags(x: torch.Tensor) -> dict:
    """Launch options every expert GEMM kernel takes.

    The tile shape; UPCAST: the CPU interpreter gets bf16 arithmetic wrong, so operands go to fp32 there
    (on GPU they stay 16-bit for the tensor cores, accumulating in fp32); DOT_PREC: fp32 inputs use
    full-precision "ieee" dots, not tf32.
    """
    return {
        "BLOCK_N": INTERPRETER_BLOCK_N if x.device.type == "cpu" else BLOCK_N,
        "BLOCK_K": INTERPRETER_BLOCK_K if x.device.type == "cpu" else BLOCK_K,
        "num_warps": NUM_WARPS,
        "UPCAST": x.device.type == "cpu",
        "DOT_PREC": "ieee" if x.dtype == torch.float32 else "tf32",
    }
