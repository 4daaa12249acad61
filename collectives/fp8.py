# T = rows encoded (tokens), M = rows decoded, H = elements per row, B = ceil(H / 128) scale blocks per row,
# Wp = H + 4 B payload bytes per row
"""fp8: DeepEP's FP8 dispatch. Each row is sent as float8 e4m3 (1 byte per element) with one fp32 scale per 128
channels (the block's absolute max / 448, e4m3's largest value), H + 4 * ceil(H / 128) bytes a row, and
dequantized on arrival; combine sends the expert outputs back in bf16 (2 bytes per element). The transport is
the plain pair over any exchange: only the bytes change.

Error: e4m3 keeps 3 mantissa bits, so a value in the normal range is off by at most 2^-4 of itself, one below
2^-6 of its block's scale by at most 2^-10 x the scale (half the subnormal step); the bf16 combine adds at
most 2^-8 of the value. `elementwise_bound` is that sum, the tolerance of the round-trip check. The MoE layer's
rows are checked tightly: against the float64 reference run on `reference_values` (the inputs rounded to e4m3
by torch's own cast, apart from this module's byte layout), within 2^-8 (the bf16 combine) plus the dtype's
tolerance; their error against the exact reference is reported beside it, and stays under the stated
rel_error_bound 2 x 2^-4 + 2^-8 (the quantized input enters both input GEMMs of a SwiGLU expert).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from moebench.collectives import dedup, plain
from moebench.collectives.codec import Codec, join_columns, packed
from moebench.collectives.comm import from_numpy
from moebench.collectives.exchange import DispatchCombine

BLOCK = 128  # channels per scale
E4M3_MAX = 448.0
SCALE_BYTES = 4  # one fp32 scale
FP8 = torch.float8_e4m3fn
COMBINE_DTYPE = torch.bfloat16
# e4m3 byte -> its fp32 value: one table lookup decodes a byte ~5x faster on a CPU than torch's fp8 cast
_VALUES = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8).float()


def scale_blocks(H: int) -> int:
    """B: scales per row."""
    return -(-H // BLOCK)


def payload_bytes(H: int, elem: int = 0) -> int:
    """Bytes of one encoded row: H e4m3 values + B fp32 scales (the element size of the input plays no part)."""
    return H + SCALE_BYTES * scale_blocks(H)


def _blocked(x_TH: torch.Tensor) -> torch.Tensor:
    """fp32 [T, B, 128]: the rows, zero-padded to whole blocks."""
    T, H = x_TH.shape
    B = scale_blocks(H)
    x = x_TH.float()
    return torch.nn.functional.pad(x, (0, B * BLOCK - H)).view(T, B, BLOCK) if B * BLOCK > H else x.view(T, B, BLOCK)


def _scales(blocks_TB128: torch.Tensor) -> torch.Tensor:
    amax = blocks_TB128.abs().amax(dim=-1)
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


def block_scales(x_TH: torch.Tensor) -> torch.Tensor:
    """fp32 [T, B]: each block's absolute max / 448 (1 for an all-zero block)."""
    return _scales(_blocked(x_TH))


def encode(x_TH: torch.Tensor) -> torch.Tensor:
    """x [T, H] (any float dtype) -> uint8 [T, H + 4B]: e4m3 values, then the B fp32 scales."""
    T, H = x_TH.shape
    blocks = _blocked(x_TH)
    scale_TB = _scales(blocks)
    q = (blocks / scale_TB[:, :, None]).to(FP8).view(T, scale_blocks(H) * BLOCK)[:, :H]
    return join_columns([q.view(torch.uint8), scale_TB.view(torch.uint8).view(T, SCALE_BYTES * scale_blocks(H))])


def decode(payload_MW: torch.Tensor, dtype, H: int) -> torch.Tensor:
    """uint8 [M, H + 4B] (possibly a strided slice of wider rows) -> [M, H] in dtype: values x their block scale."""
    if isinstance(payload_MW, np.ndarray):  # a unit's host path
        payload_MW = from_numpy(np.ascontiguousarray(payload_MW))
    M, B = payload_MW.shape[0], scale_blocks(H)
    scale_MB = packed(payload_MW[:, H:]).view(torch.float32).view(M, B)
    values = _VALUES.to(payload_MW.device).index_select(0, payload_MW[:, :H].reshape(-1).int()).view(M, H)
    pad = B * BLOCK - H
    blocks = torch.nn.functional.pad(values, (0, pad)).view(M, B, BLOCK) if pad else values.view(M, B, BLOCK)
    return (blocks * scale_MB[:, :, None]).view(M, B * BLOCK)[:, :H].to(dtype).contiguous()  # kernels take dense rows


def reference_values(x_TH: torch.Tensor) -> torch.Tensor:
    """fp32 [T, H]: each value rounded to e4m3 at its block's scale and scaled back, by torch's float8 cast on the
    fp32 values (no byte packing, no lookup table): what encode + decode must give."""
    H = x_TH.shape[1]
    blocks = _blocked(x_TH)
    scale = _scales(blocks)[:, :, None]
    return ((blocks / scale).to(FP8).float() * scale).reshape(x_TH.shape[0], -1)[:, :H]


def elementwise_bound(x_TH: torch.Tensor) -> torch.Tensor:
    """fp32 [T, H]: the most an element may move on an fp8 dispatch + bf16 combine round trip (rows in fp16 also
    round to fp16 on decode: half its step, 2^-11 of the value or 2^-25 in its subnormal range)."""
    H = x_TH.shape[1]
    scale = block_scales(x_TH).repeat_interleave(BLOCK, dim=1)[:, :H]
    bound = (2.0**-4 + 2.0**-8) * x_TH.float().abs() + 2.0**-10 * scale
    return bound + 2.0**-11 * x_TH.float().abs() + 2.0**-25 if x_TH.dtype == torch.float16 else bound


CODEC = Codec("fp8", encode, decode, payload_bytes, combine_dtype=lambda dtype: COMBINE_DTYPE,
              rel_error_bound=2 * 2.0**-4 + 2.0**-8, tolerance=elementwise_bound, reference=reference_values,
              combine_error_bound=2.0**-8)  # fmt: skip

PAIR = DispatchCombine("fp8", plain.dispatch, plain.combine, plain.schedule, codec=CODEC)
# fp8 with dedup: a token once per destination rank, in e4m3.
DEDUP_PAIR = replace(dedup.PAIR, name="fp8-dedup", codec=CODEC)
