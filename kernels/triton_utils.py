# H = hidden, F = expert FFN width; a GEMM tile is BLOCK_M rows x BLOCK_N columns, its K loop steps BLOCK_K
"""Where Triton kernels can run, the constexprs every expert kernel takes, and the tile loops they share."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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


# ---------------------------------------------------------------------------------------------- tile loops


@triton.jit
def load_rows(row_ptrs, row_mask, ks, width, UPCAST: tl.constexpr):
    """[BLOCK_M, BLOCK_K] tile: columns ks of the rows (width elements each) that start at row_ptrs
    [BLOCK_M]; rows outside row_mask and columns >= width read 0."""
    a = tl.load(row_ptrs[:, None] + ks[None, :], mask=row_mask[:, None] & (ks[None, :] < width), other=0.0)
    if UPCAST:
        a = a.to(tl.float32)
    return a


@triton.jit
def load_weight_tile(w_ptr, ks, cols, num_rows, num_cols, UPCAST: tl.constexpr):
    """[BLOCK_K, BLOCK_N] tile: rows ks x columns cols of the row-major [num_rows, num_cols] matrix at
    w_ptr; entries outside it read 0."""
    mask = (ks[:, None] < num_rows) & (cols[None, :] < num_cols)
    w = tl.load(w_ptr + ks[:, None] * num_cols + cols[None, :], mask=mask, other=0.0)
    if UPCAST:
        w = w.to(tl.float32)
    return w


@triton.jit
def swiglu_tile(
    row_ptrs,  # [BLOCK_M] start of each row of A [BLOCK_M, H]
    row_mask,  # [BLOCK_M] rows that exist
    w_gate_ptr,  # one expert's [H, F]
    w_up_ptr,  # one expert's [H, F]
    cols,  # [BLOCK_N] columns of the tile, in 0 .. F
    H,
    F,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """fp32 [BLOCK_M, BLOCK_N]: silu(A @ w_gate[:, cols]) * (A @ w_up[:, cols]), the K loop over H."""
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = load_rows(row_ptrs, row_mask, ks, H, UPCAST)
        b_gate = load_weight_tile(w_gate_ptr, ks, cols, H, F, UPCAST)
        b_up = load_weight_tile(w_up_ptr, ks, cols, H, F, UPCAST)
        acc_gate = tl.dot(a, b_gate, acc_gate, input_precision=DOT_PREC)
        acc_up = tl.dot(a, b_up, acc_up, input_precision=DOT_PREC)
    return acc_gate * tl.sigmoid(acc_gate) * acc_up


@triton.jit
def down_tile(
    row_ptrs,  # [BLOCK_M] start of each row of h [BLOCK_M, F]
    row_mask,  # [BLOCK_M] rows that exist
    w_down_ptr,  # one expert's [F, H]
    cols,  # [BLOCK_N] columns of the tile, in 0 .. H
    H,
    F,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """fp32 [BLOCK_M, BLOCK_N]: h @ w_down[:, cols], the K loop over F."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, F, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = load_rows(row_ptrs, row_mask, ks, F, UPCAST)
        acc = tl.dot(a, load_weight_tile(w_down_ptr, ks, cols, F, H, UPCAST), acc, input_precision=DOT_PREC)
    return acc
