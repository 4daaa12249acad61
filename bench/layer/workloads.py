# T = tokens, E = experts, H = hidden, F = expert FFN width, k = experts per token
"""Workloads: forced routing distributions (the one `--skew` grammar), tokens and weights, seeded and deterministic.

Routing distributions, each giving top-k ids with k *distinct* experts per token:
- uniform: every expert equally likely;
- zipf:S: expert popularity ~ 1 / rank^S (rank order a seeded permutation of the experts);
- hot:F: a fraction F of assignments go to a hot set of max(k, E // 16) experts, the rest spread evenly
  over the others (per token: Binomial(k, F) hot picks, then distinct experts inside each set);
- shift or shift:F: hot:F (F = 0.8 by default) whose hot set moves by one set-width per batch index.
Combine weights are a softmax over k seeded normal logits, in descending order. Where a layer has a
real router, `gate` names it instead (`parse_skew(spec, allow_gate=True)`).

Every tensor is drawn on the CPU from the seed and then moved to the device, so a run on a GPU sees the
same numbers as the CPU reference that checks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moebench.bench.layer.presets import Preset

# ---------------------------------------------------------------------------------------------- skew


@dataclass(frozen=True)
class Skew:
    """A routing distribution: kind in uniform | zipf | hot | shift (or gate: the layer's real router)."""

    kind: str
    param: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind in ("uniform", "gate") else f"{self.kind}:{self.param:g}"


SHIFT_DEFAULT_HOT = 0.8


SKEW_GRAMMAR = "uniform, zipf:S (S > 0), hot:F or shift:F (0 <= F <= 1), shift"


def parse_skew(spec: str, allow_gate: bool = False) -> Skew:
    """ "uniform" | "zipf:S" (S > 0) | "hot:F" (0 <= F <= 1) | "shift" | "shift:F" (| "gate" where
    allow_gate); ValueError otherwise."""
    kind, _, value = spec.partition(":")
    if kind in ("uniform", "gate") and not value and (kind == "uniform" or allow_gate):
        return Skew(kind)
    if kind == "shift" and not value:
        return Skew("shift", SHIFT_DEFAULT_HOT)
    if kind in ("zipf", "hot", "shift") and value:
        try:
            param = float(value)
        except ValueError:
            param = math.nan
        if kind == "zipf" and param > 0 and math.isfinite(param):
            return Skew(kind, param)
        if kind in ("hot", "shift") and 0 <= param <= 1:
            return Skew(kind, param)
    expected = ("gate (the real router), " if allow_gate else "") + SKEW_GRAMMAR
    raise ValueError(f"bad --skew {spec!r}; expected {expected}")


def hot_set_size(num_experts: int, k: int) -> int:
    return min(num_experts, max(k, num_experts // 16))


def _generator(seed: int, batch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + batch)


def _distinct_from_scores(scores_TE: torch.Tensor, k: int) -> torch.Tensor:
    """Gumbel top-k: k distinct experts per token, sampled without replacement by exp(scores)."""
    return scores_TE.topk(k, dim=-1).indices


def _gumbel(shape, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    return -torch.log(-torch.log(u))


def _hot_ids(T: int, E: int, k: int, frac: float, hot_E: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per token: Binomial(k, frac) distinct hot experts, the rest distinct cold ones."""
    n_hot = hot_E.sum().item()
    num_hot_T = torch.binomial(torch.full((T,), float(k)), torch.full((T,), frac), generator=gen).long()
    num_hot_T = num_hot_T.clamp(min=max(0, k - (E - n_hot)), max=min(k, n_hot))
    # random scores, hot experts first for the first num_hot picks: rank hot and cold sets separately
    scores_TE = _gumbel((T, E), gen)
    hot_rank_TE = torch.where(hot_E, scores_TE, -math.inf).argsort(dim=-1, descending=True)
    cold_rank_TE = torch.where(~hot_E, scores_TE, -math.inf).argsort(dim=-1, descending=True)
    slot_k = torch.arange(k)
    take_hot_Tk = slot_k[None, :] < num_hot_T[:, None]
    cold_slot_Tk = (slot_k[None, :] - num_hot_T[:, None]).clamp(min=0)
    return torch.where(take_hot_Tk, hot_rank_TE[:, :k], torch.gather(cold_rank_TE, 1, cold_slot_Tk))


def sample_topk(
    skew: Skew | str, num_tokens: int, num_experts: int, k: int, seed: int = 0, batch: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forced routing: (topk_ids_Tk int64 [T, k] with distinct experts per token, topk_weights_Tk fp32 [T, k]).

    Deterministic in (skew, T, E, k, seed, batch); `batch` moves the hot set of "shift" and reseeds.
    """
    skew = parse_skew(skew) if isinstance(skew, str) else skew
    assert skew.kind != "gate", "the real router is the layer's, not a forced distribution"
    if not 1 <= k <= num_experts:
        raise ValueError(f"k must be in 1..E={num_experts}, got k={k}")
    T, E = num_tokens, num_experts
    gen = _generator(seed, batch)
    perm_E = torch.randperm(E, generator=_generator(seed, 0))  # which experts are popular: fixed per seed
    if skew.kind == "uniform":
        ids_Tk = _distinct_from_scores(_gumbel((T, E), gen), k)
    elif skew.kind == "zipf":
        log_p_E = -skew.param * torch.log(torch.arange(1, E + 1, dtype=torch.float64))
        ids_Tk = _distinct_from_scores(log_p_E[None, :] + _gumbel((T, E), gen), k)
        ids_Tk = perm_E[ids_Tk]
    else:
        n_hot = hot_set_size(E, k)
        start = (batch * n_hot) % E if skew.kind == "shift" else 0
        hot_E = torch.zeros(E, dtype=torch.bool)
        hot_E[perm_E[(start + torch.arange(n_hot)) % E]] = True
        ids_Tk = _hot_ids(T, E, k, skew.param, hot_E, gen)
    logits_Tk = torch.randn(T, k, generator=gen).sort(dim=-1, descending=True).values
    return ids_Tk.long(), torch.softmax(logits_Tk, dim=-1)


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


def make_tokens(
    num_tokens: int, hidden: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> torch.Tensor:
    """x_TH, standard normal (drawn on the CPU)."""
    return _normal((num_tokens, hidden), seed + 1).to(device=device, dtype=dtype)
