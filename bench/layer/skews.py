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
  consecutive batches reuse experts);
- nodeskew:S: balanced across nodes, skewed across the ranks of a node: the experts that the first rank of
  each node holds (under the contiguous placement) are (1 + S) times as popular as the others; needs the
  cluster's shape (P ranks, G per node), so only the multi-rank benchmarks (moe, balance) take it;
- trace:FILE[@L]: replay a recorded routing trace (layer.traces: the format, and which tokens a rank gets).
Popular experts are chosen sampling without replacement (Gumbel top-k over log-popularity). Combine weights
are a softmax over k seeded normal logits, in descending order. Where a layer has a real router, `gate`
names it instead (`parse_skew(spec, allow_gate=True)`).

A kind is one `SkewKind` entry: its parameter (parsed and checked), whether it changes between batches, and
its sampler `(ctx: Draw) -> ids_Tk` (or (ids_Tk, weights_Tk) where the kind has its own weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moebench.bench.layer import traces
from moebench.kernels.routers.spec import parse_value_spec


@dataclass(frozen=True)
class Skew:
    """A routing distribution: kind is a key of SKEWS (or gate: the layer's real router); param its value."""

    kind: str
    param: float = 0.0
    source: str = ""  # trace:FILE[@L]: the file (and layer)

    def __str__(self) -> str:
        if self.source:
            return f"{self.kind}:{self.source}"
        spec = SKEWS.get(self.kind)
        return self.kind if spec is None or spec.check is None else f"{self.kind}:{self.param:g}"


@dataclass(frozen=True)
class Draw:
    """What a sampler draws from: T tokens, E experts, k per token, the skew's param (and source), the batch's
    generator, the seed's expert popularity order popular_E [E], the seed, the batch index, the rank part
    (which of the cluster's ranks draws: traces give each its own tokens) and the cluster's shape (P ranks,
    G per node; 0 where unknown)."""

    T: int
    E: int
    k: int
    param: float
    gen: torch.Generator
    popular_E: torch.Tensor
    seed: int
    batch: int
    part: int = 0
    source: str = ""
    num_ranks: int = 0
    ranks_per_node: int = 0
    first_row: int | None = None  # a trace replay's first row of the step (default part * T)


@dataclass(frozen=True)
class SkewKind:
    """One routing distribution of the grammar.

    grammar: how it is written (for errors and --help); check(param) -> bool: whether a value is valid (None:
    the kind takes no value); default: the value when written bare (None: a value is required, or none taken);
    varies_by_batch: whether the batch index changes the distribution (the layer then draws one per iteration);
    sample(draw: Draw) -> ids_Tk [T, k] int64, distinct per token, or (ids_Tk, weights_Tk or None).
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


def _mix(seed: int, batch: int, part: int) -> int:
    return ((seed * 1_000_003 + batch) * 1_000_033 + part) % (1 << 63)


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


def _uniform(d: Draw):
    return _by_popularity(torch.zeros(d.E, dtype=torch.float64), d.T, d.k, d.gen)


def _zipf(d: Draw):
    log_p_E = -d.param * torch.log(torch.arange(1, d.E + 1, dtype=torch.float64))
    return d.popular_E[_by_popularity(log_p_E, d.T, d.k, d.gen)]


def lognormal_log_popularity(E: int, sigma: float, seed: int) -> torch.Tensor:
    """log popularity [E] of lognormal:SIGMA: SIGMA * z_e, z_e ~ N(0, 1), fixed per seed (every batch alike)."""
    z_E = torch.randn(E, generator=_generator(seed, -1), dtype=torch.float64)
    return sigma * z_E


def _lognormal(d: Draw):
    return _by_popularity(lognormal_log_popularity(d.E, d.param, d.seed), d.T, d.k, d.gen)


def _hot(d: Draw):
    return _hot_ids(d.T, d.E, d.k, d.param, _mask(d.E, d.popular_E[: hot_set_size(d.E, d.k)]), d.gen)


def _shift(d: Draw):
    n_hot = hot_set_size(d.E, d.k)
    start = (d.batch * n_hot) % d.E
    return _hot_ids(d.T, d.E, d.k, d.param, _mask(d.E, d.popular_E[(start + torch.arange(n_hot)) % d.E]), d.gen)


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


def _sticky(d: Draw):
    hot_set = sticky_hot_sets(d.E, d.k, d.param, d.seed, d.batch + 1)[-1]
    return _hot_ids(d.T, d.E, d.k, STICKY_HOT_FRACTION, _mask(d.E, hot_set), d.gen)


def nodeskew_log_popularity(E: int, num_ranks: int, ranks_per_node: int, skew: float) -> torch.Tensor:
    """log popularity [E] of nodeskew:S: log(1 + S) for the experts of each node's first rank (contiguous)."""
    if num_ranks < 1 or ranks_per_node < 1 or num_ranks % ranks_per_node or E % num_ranks:
        raise ValueError("nodeskew needs the cluster's shape: P ranks (dividing E), G per node (dividing P); "
                         "only the multi-rank benchmarks (moe, balance) take it")  # fmt: skip
    first_of_node_E = (torch.arange(E) // (E // num_ranks)) % ranks_per_node == 0
    return torch.where(first_of_node_E, math.log1p(skew), 0.0).double()


def _nodeskew(d: Draw):
    return _by_popularity(nodeskew_log_popularity(d.E, d.num_ranks, d.ranks_per_node, d.param), d.T, d.k, d.gen)


def _trace(d: Draw):
    file, layer = traces.split_spec(d.source)
    first = d.part * d.T if d.first_row is None else d.first_row
    return traces.replay(traces.load_trace(file), layer, d.T, d.E, d.k, d.batch, first, d.gen)


def _fraction(value: float) -> bool:
    return 0 <= value <= 1


SKEWS: dict[str, SkewKind] = {
    "uniform": SkewKind("uniform", _uniform),
    "zipf": SkewKind("zipf:S (S > 0)", _zipf, check=lambda s: s > 0 and math.isfinite(s)),
    "lognormal": SkewKind("lognormal:SIGMA (SIGMA >= 0)", _lognormal, check=lambda s: 0 <= s < math.inf),
    "hot": SkewKind("hot:F (0 <= F <= 1)", _hot, check=_fraction),
    "shift": SkewKind("shift[:F] (0 <= F <= 1, default 0.8)", _shift, _fraction, 0.8, varies_by_batch=True),
    "sticky": SkewKind("sticky[:P] (0 <= P <= 1, default 0.9)", _sticky, _fraction, 0.9, varies_by_batch=True),
    "nodeskew": SkewKind("nodeskew:S (S >= 0)", _nodeskew, check=lambda s: 0 <= s < math.inf),
    "trace": SkewKind("trace:FILE[@LAYER]", _trace, varies_by_batch=True),
}


def grammar(allow_gate: bool = False) -> str:
    """The --skew grammar, from the registry."""
    return ("gate (the real router), " if allow_gate else "") + ", ".join(kind.grammar for kind in SKEWS.values())


def parse_skew(spec: str, allow_gate: bool = False) -> Skew:
    """One skew of the grammar (or "gate" where allow_gate); ValueError naming the grammar otherwise."""
    name, colon, value = spec.partition(":")
    if name == "gate" and allow_gate and not colon:
        return Skew("gate")
    if name == "trace" and value:
        traces.load_trace(traces.split_spec(value)[0])  # a bad file fails here, in one line
        return Skew("trace", source=value)
    parsed = parse_value_spec(spec, SKEWS) if name != "trace" else None
    if parsed is None:
        raise ValueError(f"bad --skew {spec!r}; expected {grammar(allow_gate)}")
    return Skew(parsed[0], parsed[1] or 0.0)


def varies_by_batch(skew: Skew) -> bool:
    """Whether consecutive batches of this skew differ (the layer then draws one routing per iteration)."""
    kind = SKEWS.get(skew.kind)
    return kind is not None and kind.varies_by_batch


def sample_topk(
    skew: Skew | str,
    num_tokens: int,
    num_experts: int,
    k: int,
    seed: int = 0,
    batch: int = 0,
    part: int = 0,
    layout: tuple[int, int] = (0, 0),
    first_row: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forced routing: (topk_ids_Tk int64 [T, k] with distinct experts per token, topk_weights_Tk fp32 [T, k]).

    Deterministic in (skew, T, E, k, seed, batch, part). The seed fixes which experts are popular (the same for
    every part); `batch` moves the hot set of "shift" and "sticky" and reseeds; `part` (the drawing rank) draws
    its own tokens (and picks a trace's: rows first_row.., default part * T); layout (P, G) is the cluster's shape
    (nodeskew).
    """
    skew = parse_skew(skew) if isinstance(skew, str) else skew
    assert skew.kind != "gate", "the real router is the layer's, not a forced distribution"
    if not 1 <= k <= num_experts:
        raise ValueError(f"k must be in 1..E={num_experts}, got k={k}")
    T, E = num_tokens, num_experts
    # one popularity (and hot-set chain) per seed for every rank; each rank part draws its own tokens
    gen = _generator(seed, batch) if part == 0 else torch.Generator().manual_seed(_mix(seed, batch, part))
    popular_E = torch.randperm(E, generator=_generator(seed, 0))  # which experts are popular: fixed per seed
    draw = Draw(T, E, k, skew.param, gen, popular_E, seed, batch, part, skew.source, *layout, first_row)
    ids_Tk = SKEWS[skew.kind].sample(draw)
    ids_Tk, weights_Tk = ids_Tk if isinstance(ids_Tk, tuple) else (ids_Tk, None)
    if weights_Tk is None:
        logits_Tk = torch.randn(T, k, generator=gen).sort(dim=-1, descending=True).values
        weights_Tk = torch.softmax(logits_Tk, dim=-1)
    return ids_Tk.long(), weights_Tk.float()


def forced_logits(logits_TE: torch.Tensor, ids_Tk: torch.Tensor, weights_Tk: torch.Tensor) -> torch.Tensor:
    """Logits [T, E] whose top k are ids_Tk in order with softmax weights_Tk, the rest in the gate's order.

    Chosen expert j gets m_t + 1 + log(w_j / w_min) (m_t: the token's largest logit outside its choice), so the
    chosen are above every other expert and their softmax over themselves is weights_Tk."""
    out_TE = logits_TE.float().clone()
    chosen_TE = torch.zeros_like(out_TE, dtype=torch.bool).scatter_(1, ids_Tk, True)
    others_T = out_TE.masked_fill(chosen_TE, -torch.inf).amax(dim=1)
    others_T = torch.where(torch.isfinite(others_T), others_T, torch.zeros_like(others_T))  # k = E: none left
    log_w_Tk = weights_Tk.double().clamp_min(1e-30).log()
    lifted_Tk = others_T[:, None].double() + 1 + (log_w_Tk - log_w_Tk.amin(dim=1, keepdim=True))
    return out_TE.scatter_(1, ids_Tk, lifted_Tk.float())
