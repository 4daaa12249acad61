# T = tokens, E = experts, H = hidden, F = expert FFN width, k = experts per token
"""Workloads: tokens and weights, seeded and deterministic; the routing distributions are layer.skews.

Every tensor is drawn on the CPU from the seed and then moved to the device, so a run on a GPU sees the
same numbers as the CPU reference that checks it.
"""

from __future__ import annotations

import math

import torch

from moebench.bench.layer.presets import Preset

# ---------------------------------------------------------------------------------------------- tensors


def _normal(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Standard normal * scale, drawn on the CPU from `seed` (the same numbers on every device)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).mul_(scale)


def make_expert_weights(
    preset: Preset, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w_gate_EHF, w_up_EHF, w_down_EFH), normal / sqrt(fan-in), drawn on the CPU and moved to `device`."""
    E, H, F = preset.E, preset.H, preset.F
    gen = torch.Generator().manual_seed(seed)
    w_gate_EHF = torch.randn(E, H, F, generator=gen).div_(math.sqrt(H))
    w_up_EHF = torch.randn(E, H, F, generator=gen).div_(math.sqrt(H))
    w_down_EFH = torch.randn(E, F, H, generator=gen).div_(math.sqrt(F))
    return tuple(w.to(device=device, dtype=dtype) for w in (w_gate_EHF, w_up_EHF, w_down_EFH))


def make_router_weights(preset: Preset, seed: int = 0) -> torch.Tensor:
    """w_router_HE fp32 [H, E], normal / sqrt(H), drawn on the CPU from `seed` (the layer's gate)."""
    gen = torch.Generator().manual_seed(seed + 7)
    return torch.randn(preset.H, preset.E, generator=gen) / preset.H**0.5


def make_tokens(
    num_tokens: int, hidden: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> torch.Tensor:
    """x_TH, standard normal (drawn on the CPU)."""
    return _normal((num_tokens, hidden), seed + 1).to(device=device, dtype=dtype)


def spread_batch_sizes(tokens: int, spread: float, parts: int, seed: int = 0, batch: int = 0) -> list[int]:
    """Tokens of each of `parts` ranks (TP groups): T, or T * (1 + spread * u) rounded, u uniform in [-1, 1] drawn
    from (seed, batch), at least 1 (requests do not arrive evenly: per-rank batches differ)."""
    if not spread:
        return [tokens] * parts
    gen = torch.Generator().manual_seed(((seed * 1_000_003 + batch) * 4099 + 4093) % (1 << 63))
    u_P = torch.rand(parts, generator=gen, dtype=torch.float64) * 2 - 1
    return [max(1, round(tokens * (1 + spread * u))) for u in u_P.tolist()]
