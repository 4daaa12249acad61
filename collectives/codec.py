# T = rows encoded (tokens), M = rows decoded, H = elements per row, Wp = payload bytes per row
"""How a dispatch/combine pair writes rows on the wire: the payload codec.

A codec turns the rows a pair dispatches into bytes and back: encode(x[T, H]) -> payload[T, Wp] (uint8),
decode(payload[M, Wp], dtype, H) -> x[M, H] in dtype; combine rows travel in combine_dtype(dtype). The MoE
layer encodes each token once (before permute copies it per destination) and decodes what it received, and
times both as their own phases; the round-trip benchmark wraps a pair's dispatch and combine in them.
`RAW` is the rows' own bytes (a view, no arithmetic); `fp8` (collectives/fp8.py) quantizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from moebench.collectives.comm import from_numpy

NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.uint8: np.uint8}


@dataclass(frozen=True)
class Codec:
    """encode(x[T, H]) -> uint8 [T, payload_bytes(H, elem)]; decode(payload[M, Wp], dtype, H) -> [M, H] (payload:
    a uint8 tensor, or a numpy array where a unit's host path unpacked the rows);
    combine_dtype(dtype): the dtype combine rows travel in; rel_error_bound: the relative error (2-norm) the
    encoding may add to the layer's output, stated by the codec (0: exact); tolerance(x[T, H]) -> [T, H]: the
    most each element may move on a dispatch + combine round trip (None: not at all); reference(x): the values
    a correct encode + decode yields, computed without the codec's byte layout (the MoE check runs the float64
    reference on them and allows only combine_error_bound more)."""

    name: str
    encode: Callable
    decode: Callable
    payload_bytes: Callable  # (H, element bytes) -> bytes per encoded row
    combine_dtype: Callable = lambda dtype: dtype
    rel_error_bound: float = 0.0
    tolerance: Callable | None = None
    reference: Callable | None = None  # x[T, H] -> the values decode must give, computed apart from encode/decode
    combine_error_bound: float = 0.0  # the relative error (2-norm) combine_dtype adds to the layer's output

    @property
    def exact(self) -> bool:
        return self.tolerance is None


def packed(t: torch.Tensor) -> torch.Tensor:
    """t, or a contiguous copy of it starting at offset 0 when it is a slice (viewing bytes as a wider dtype needs
    a contiguous tensor at an aligned offset; a one-row column slice is contiguous but starts mid-row)."""
    return t if t.is_contiguous() and t.storage_offset() == 0 else t.clone(memory_format=torch.contiguous_format)


WORDS = (torch.int64, torch.int32, torch.int16)  # the integer words join_columns copies bytes in, widest first
SMALL_JOIN_BYTES = 1 << 18  # join_columns' outputs up to this size take one torch.cat (256 rows of 1 KiB: a tie)


def _word(parts) -> torch.dtype:
    """The widest of WORDS that every part's bytes can be viewed as (row width, row stride and address all
    multiples of its size; an empty part's strides are arbitrary: only its width counts), else uint8."""
    for word in WORDS:
        n = word.itemsize
        if all(p.shape[1] % n == 0 and (p.numel() == 0 or (p.stride(0) % n == 0 and p.data_ptr() % n == 0))
               for p in parts):  # fmt: skip
            return word
    return torch.uint8


def join_columns(parts: list[torch.Tensor], index_R: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [R, W_0 + W_1 + ...]: byte columns parts[i] (uint8 [R, W_i], unit column stride) side by side; with
    index_R, parts[0] is [T, W_0] and row r takes its row index_R[r] (a gather, in the same pass on the CPU).
    Up to SMALL_JOIN_BYTES, one torch.cat (2-5 us at 2-16 rows, where the word path's views and copies take
    12-14); beyond, copied in the widest integer word dividing every width: torch.cat of uint8 columns can move a
    byte at a time (a gather and cat of [8192, 1024] and [8192, 8] bytes took 4.4 ms; in int64 words 0.65)."""
    R = parts[0].shape[0] if index_R is None else index_R.shape[0]
    W = sum(p.shape[1] for p in parts)
    if R * W <= SMALL_JOIN_BYTES:  # one gather and one cat: fewer calls than the word path's views and copies
        return torch.cat([parts[0] if index_R is None else parts[0].index_select(0, index_R), *parts[1:]], dim=1)
    out_RW = torch.empty(R, W, dtype=torch.uint8, device=parts[0].device)
    if out_RW.numel() == 0:  # no rows or no columns: nothing to copy
        return out_RW
    word = _word([out_RW, *parts])
    out = out_RW.view(word)
    col = 0
    for i, part in enumerate(parts):
        width = part.shape[1] // word.itemsize
        if width == 0:  # a part of no columns
            continue
        src, dst = part.view(word), out[:, col : col + width]
        if i == 0 and index_R is not None:
            if part.is_cuda:  # the gather then a copy: out= into a strided view is exercised on the CPU only
                dst.copy_(src.index_select(0, index_R))
            else:
                torch.index_select(src, 0, index_R, out=dst)
        else:
            dst.copy_(src)
        col += width
    return out_RW


def raw_encode(x_TH: torch.Tensor) -> torch.Tensor:
    """x [T, H] -> its bytes [T, H * element bytes] (a view; numpy's on the CPU: ~1 µs against ~5 for torch's)."""
    if not x_TH.is_cuda and x_TH.dtype in NUMPY_DTYPES:  # is_cuda: cheaper than device.type (a new object)
        return from_numpy((x_TH if x_TH.is_contiguous() else x_TH.contiguous()).numpy().view(np.uint8))
    return x_TH.contiguous().view(torch.uint8).reshape(x_TH.shape[0], x_TH.shape[1] * x_TH.element_size())


def raw_decode(payload_MW, dtype, H: int) -> torch.Tensor:
    """bytes [M, H * element bytes] (a tensor, or for a small CPU batch a numpy array; possibly a strided slice of
    wider rows) -> x [M, H] in dtype (one copy)."""
    if isinstance(payload_MW, np.ndarray):
        if dtype in NUMPY_DTYPES:
            return from_numpy(np.ascontiguousarray(payload_MW).view(NUMPY_DTYPES[dtype]))
        payload_MW = from_numpy(np.ascontiguousarray(payload_MW))
    if not payload_MW.is_cuda and dtype in NUMPY_DTYPES:
        return from_numpy(np.ascontiguousarray(payload_MW.numpy()).view(NUMPY_DTYPES[dtype]))
    return packed(payload_MW).view(dtype)


RAW = Codec("raw", raw_encode, raw_decode, lambda H, elem: H * elem)
