# T = tokens, E = experts, k = experts per token
"""Forced routing distributions: the one `--skew` grammar, a registry of kinds (SKEWS), seeded and deterministic.

Every kind gives top-k ids with k *distinct* experts per token:
- uniform: every expert equally likely;
- zipf:S: expert popularity ~ 1 / rank^S (rank order a seeded permutation of the experts);
- lognormal:SIGMA: popularity exp(SIGMA * z_e), z_e standard normal per expert, drawn once per seed (the
  per-expert loads of real prompts fit a log-normal, as DeepEP's maintainers report for DeepSeek-V3);
- hot:F: a fraction F of assignments go to a hot set of max(k, E // 16) experts, the rest spread evenly
  over the others (per token: Binomial(k, F) hot picks, then distinct experts inside each set);
- shift or shift:F: hot:F (F = 0.8 by default) whose hot set moves by one set-width per batch index;
- sticky or sticky:P: hot:0.8 whose hot set is a Markov chain over batches: it stays the previous batch's
  with probability P (0.9 by default) and is redrawn at random otherwise (the temporal locality of decoding:
  consecutive batches reuse experts).
Popular experts are chosen sampling without replacement (Gumbel top-k over log-popularity). Combine weights
are a softmax over k seeded normal logits, in descending order. Where a layer has a real router, `gate`
names it instead (`parse_skew(spec, allow_gate=True)`).

A kind is one `SkewKind` entry: its parameter (parsed and checked), whether it changes between batches, and
its sampler `(T, E, k, param, gen, popular_E, seed, batch) -> ids_Tk`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Skew:
    """A routing distribution: kind is a key of SKEWS (or gate: the layer's real router); param its value."""

    kind: str
    param: float = 0.0

    def __str__(self) -> str:
        spec = SKEWS.get(self.kind)
        return self.kind if spec is None or spec.check is None else f"{self.kind}:{self.param:g}"


@dataclass(frozen=True)
class SkewKind:
    """One routing distribution of the grammar.

    grammar: how it is written (for errors and --help); check(param) -> bool: whether a value is valid (None:
    the kind takes no value); default: the value when written bare (None: a value is required, or none taken);
    varies_by_batch: whether the batch index changes the distribution (the layer then draws one per iteration);
    sample(T, E, k, param, gen, popular_E, seed, batch) -> ids_Tk [T, k] int64, distinct per token.
    """

    grammar: str
    sample: Callable
    check: Callable[[float], bool] | None = None
    default: float | None = None
    varies_by_batch: bool = False


def hot_set_size(num_experts: int, k: int) -> int:
    return min(num_experts, max(k, num_experts // 16))


def _generator(seed: int, batch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + batch)


def _gumbel(shape, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=gen, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    return -torch.log(-torch.log(u))


def _by_popularity(log_p_E: torch.Tensor, T: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """k distinct experts per token, sampled without replacement with probabilities ~ exp(log_p_E) (Gumbel top-k)."""
    return (log_p_E[None, :] + _gumbel((T, log_p_E.numel()), gen)).topk(k, dim=-1).indices


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


def _mask(E: int, experts) -> torch.Tensor:
    hot_E = torch.zeros(E, dtype=torch.bool)
    hot_E[experts] = True
    return hot_E


def _uniform(T, E, k, param, gen, popular_E, seed, batch):
    return _by_popularity(torch.zeros(E, dtype=torch.float64), T, k, gen)


def _zipf(T, E, k, param, gen, popular_E, seed, batch):
    log_p_E = -param * torch.log(torch.arange(1, E + 1, dtype=torch.float64))
    return popular_E[_by_popularity(log_p_E, T, k, gen)]


def lognormal_log_popularity(E: int, sigma: float, seed: int) -> torch.Tensor:
    """log popularity [E] of lognormal:SIGMA: SIGMA * z_e, z_e ~ N(0, 1), fixed per seed (every batch alike)."""
    z_E = torch.randn(E, generator=_generator(seed, -1), dtype=torch.float64)
    return sigma * z_E


def _lognormal(T, E, k, param, gen, popular_E, seed, batch):
    return _by_popularity(lognormal_log_popularity(E, param, seed), T, k, gen)


def _hot(T, E, k, param, gen, popular_E, seed, batch):
    return _hot_ids(T, E, k, param, _mask(E, popular_E[: hot_set_size(E, k)]), gen)


def _shift(T, E, k, param, gen, popular_E, seed, batch):
    n_hot = hot_set_size(E, k)
    start = (batch * n_hot) % E
    return _hot_ids(T, E, k, param, _mask(E, popular_E[(start + torch.arange(n_hot)) % E]), gen)


STICKY_HOT_FRACTION = 0.8


def sticky_hot_sets(E: int, k: int, stay: float, seed: int, batches: int) -> list[torch.Tensor]:
    """The hot sets [n_hot] of batches 0 .. batches-1: batch 0's is the seed's most popular experts; each later
    one is the previous with probability `stay`, else n_hot experts drawn afresh (the chain's own generator)."""
    n_hot = hot_set_size(E, k)
    gen = _generator(seed, -2)
    sets = [torch.randperm(E, generator=_generator(seed, 0))[:n_hot]]
    for _ in range(1, batches):
        moves = torch.rand(1, generator=gen).item() >= stay
        fresh = torch.randperm(E, generator=gen)[:n_hot]
        sets.append(fresh if moves else sets[-1])
    return sets


def _sticky(T, E, k, param, gen, popular_E, seed, batch):
    hot_set = sticky_hot_sets(E, k, param, seed, batch + 1)[-1]
    return _hot_ids(T, E, k, STICKY_HOT_FRACTION, _mask(E, hot_set), gen)


def _fraction(value: float) -> bool:
    return 0 <= value <= 1


SKEWS: dict[str, SkewKind] = {
    "uniform": SkewKind("uniform", _uniform),
    "zipf": SkewKind("zipf:S (S > 0)", _zipf, check=lambda s: s > 0 and math.isfinite(s)),
    "lognormal": SkewKind("lognormal:SIGMA (SIGMA >= 0)", _lognormal, check=lambda s: 0 <= s < math.inf),
    "hot": SkewKind("hot:F (0 <= F <= 1)", _hot, check=_fraction),
    "shift": SkewKind("shift[:F] (0 <= F <= 1, default 0.8)", _shift, _fraction, 0.8, varies_by_batch=True),
    "sticky": SkewKind("sticky[:P] (0 <= P <= 1, default 0.9)", _sticky, _fraction, 0.9, varies_by_batch=True),
}


def grammar(allow_gate: bool = False) -> str:
    """The --skew grammar, from the registry."""
    return ("gate (the real router), " if allow_gate else "") + ", ".join(kind.grammar for kind in SKEWS.values())


def parse_skew(spec: str, allow_gate: bool = False) -> Skew:
    """One skew of the grammar (or "gate" where allow_gate); ValueError naming the grammar otherwise."""
    name, colon, value = spec.partition(":")
    if name == "gate" and allow_gate and not colon:
        return Skew("gate")
    kind = SKEWS.get(name)
    if kind is not None:
        if not colon and (kind.check is None or kind.default is not None):
            return Skew(name, kind.default or 0.0)
        if colon and kind.check is not None:
            try:
                param = float(value)
            except ValueError:
                param = math.nan
            if kind.check(param):
                return Skew(name, param)
    raise ValueError(f"bad --skew {spec!r}; expected {grammar(allow_gate)}")


def varies_by_batch(skew: Skew) -> bool:
    """Whether consecutive batches of this skew differ (the layer then draws one routing per iteration)."""
    kind = SKEWS.get(skew.kind)
    return kind is not None and kind.varies_by_batch


def sample_topk(
    skew: Skew | str, num_tokens: int, num_experts: int, k: int, seed: int = 0, batch: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forced routing: (topk_ids_Tk int64 [T, k] with distinct experts per token, topk_weights_Tk fp32 [T, k]).

    Deterministic in (skew, T, E, k, seed, batch); `batch` moves the hot set of "shift" and "sticky" and reseeds.
    """
    skew = parse_skew(skew) if isinstance(skew, str) else skew
    assert skew.kind != "gate", "the real router is the layer's, not a forced distribution"
    if not 1 <= k <= num_experts:
        raise ValueError(f"k must be in 1..E={num_experts}, got k={k}")
    T, E = num_tokens, num_experts
    gen = _generator(seed, batch)
    popular_E = torch.randperm(E, generator=_generator(seed, 0))  # which experts are popular: fixed per seed
    ids_Tk = SKEWS[skew.kind].sample(T, E, k, skew.param, gen, popular_E, seed, batch)
    logits_Tk = torch.randn(T, k, generator=gen).sort(dim=-1, descending=True).values
    return ids_Tk.long(), torch.softmax(logits_Tk, dim=-1)
