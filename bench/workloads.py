# T = tokens, E = experts, H = hidden, I = expert FFN, k = active
"""Workloads: model presets (DESIGN.md §4) and forced routing distributions, seeded and deterministic.

Presets are the real shapes; each has a `-tiny` variant for a 2-core CPU: H and I divided by 16, E, k
and the activation unchanged (mixtral-8x7b-tiny is H=256, I=896: one SwiGLU forward of T=4096 tokens
is ~11 GFLOP, a few hundred ms here).

Routing distributions (`--skew`), each giving top-k ids with k *distinct* experts per token:
- uniform: every expert equally likely;
- zipf:S: expert popularity ~ 1 / rank^S (rank order a seeded permutation of the experts);
- hot:F: a fraction F of assignments go to a hot set of max(k, E // 16) experts, the rest spread evenly
  over the others (per token: Binomial(k, F) hot picks, then distinct experts inside each set);
- shift or shift:F: hot:F (F = 0.8 by default) whose hot set moves by one set-width per batch index.
Combine weights are a softmax over k seeded normal logits, in descending order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Preset:
    """An MoE layer's shape: hidden size H, expert FFN size I, E experts, top-k, expert activation."""

    name: str
    H: int
    I: int  # noqa: E741 (the shape legend's name for the expert FFN size)
    E: int
    k: int
    act: str
    note: str = ""

    @property
    def tiny(self) -> bool:
        return self.name.endswith("-tiny")


_FULL = (
    Preset("mixtral-8x7b", 4096, 14336, 8, 2, "swiglu"),
    Preset("deepseek-v3", 7168, 2048, 256, 8, "swiglu", "+1 shared expert (optional, not in the routed experts)"),
    Preset("qwen3-30b-a3b", 2048, 768, 128, 8, "swiglu"),
    Preset("switch-base-128", 768, 3072, 128, 1, "gelu", "2-matrix GELU expert in the original"),
)
TINY_DIVISOR = 16


def _tiny(p: Preset) -> Preset:
    return Preset(f"{p.name}-tiny", p.H // TINY_DIVISOR, p.I // TINY_DIVISOR, p.E, p.k, p.act, f"H, I / {TINY_DIVISOR}")


PRESETS: dict[str, Preset] = {p.name: p for full in _FULL for p in (full, _tiny(full))}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or ValueError listing the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


# ---------------------------------------------------------------------------------------------- skew


@dataclass(frozen=True)
class Skew:
    """A routing distribution: kind in uniform | zipf | hot | shift, with its parameter."""

    kind: str
    param: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind == "uniform" else f"{self.kind}:{self.param:g}"


SHIFT_DEFAULT_HOT = 0.8


def parse_skew(spec: str) -> Skew:
    """ "uniform" | "zipf:S" (S > 0) | "hot:F" (0 <= F <= 1) | "shift" | "shift:F"; ValueError otherwise."""
    kind, _, value = spec.partition(":")
    if kind == "uniform" and not value:
        return Skew("uniform")
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
    raise ValueError(f"bad --skew {spec!r}; expected uniform, zipf:S (S > 0), hot:F or shift:F (0 <= F <= 1), shift")


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


def make_expert_weights(
    preset: Preset, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w_gate_EHI, w_up_EHI, w_down_EIH), normal / sqrt(fan-in), generated on `device`."""
    gen = torch.Generator(device=device).manual_seed(seed)
    E, H, FFN = preset.E, preset.H, preset.I
    w_gate_EHI = torch.randn(E, H, FFN, generator=gen, device=device).div_(math.sqrt(H)).to(dtype)
    w_up_EHI = torch.randn(E, H, FFN, generator=gen, device=device).div_(math.sqrt(H)).to(dtype)
    w_down_EIH = torch.randn(E, FFN, H, generator=gen, device=device).div_(math.sqrt(FFN)).to(dtype)
    return w_gate_EHI, w_up_EHI, w_down_EIH


def make_tokens(
    num_tokens: int, hidden: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> torch.Tensor:
    """x_TH, standard normal."""
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    return torch.randn(num_tokens, hidden, generator=gen, device=device).to(dtype)
