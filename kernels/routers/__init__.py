# T = tokens, E = experts, k = experts per token (the model's), K = experts a router picks per token
"""Routers at inference: the ROUTERS registry, one module per router, one spelling `name[:PARAM]`.

    from moebench.kernels.routers import RouterInput, parse_router

    router = parse_router("capacity-aware")
    routed = router(RouterInput(logits_TE, k=2, capacity_factor=1.0))
    routed.routing            # a Routing over all E experts (ids [T, K], weights, capacity and drops)
    routed.rerouted_Tk        # bool [T, K]: the assignment went to an expert other than the gate's choice

A router sees the gate's logits [T, E] (every router gets them, so the gate probability mass it keeps can be
compared), the model's k, the capacity factor, and, for routers that need them, each token's global id and
its request's task. It returns a Routing whose `kept_Tk` says what is dropped (capacity per expert from
these T tokens, as the layer's per-rank capacity) and which assignments it rerouted.

Routers (one module each):
- topk: the gate as trained: top-k softmax, capacity and drops in token order;
- capacity-aware: no assignment dropped while any expert has room: an assignment whose expert is full goes
  to the token's next-best expert (by logit) with room and not already chosen by the token;
- topk-switch:K2: the gate trained with k, run with K2 < k experts per token (decode's quality/latency knob);
- hash: K = k distinct experts from a fixed hash of the token id (Hash Layers), weights 1/k, no gate GEMM;
- task[:N]: every token of a request pinned to its task's fixed k experts (task-level routing), N tasks;
- task-local[:N]: the same with requests served where their task lives: rank part p serves task p * N // P
  (N defaults to P), whose experts the contiguous placement keeps on that rank;
- topk-group[:TG]: DeepSeek-V3's group-limited gate: the experts form the model's groups (contiguous blocks),
  a group scores the sum of its two best expert probabilities, a token keeps its TG best groups (default:
  the model's topk_groups) and takes its top k inside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from moebench.kernels.routers.spec import parse_value_spec
from moebench.kernels.routing import Routing


@dataclass(frozen=True)
class RouterInput:
    """What a router sees: logits_TE float [T, E] (the gate's), the model's k, the capacity factor (None: no
    drops), token_ids_T int64 [T] (global token ids: hash routing; default 0..T-1), task_T int64 [T]
    (task of each token's request: task routing; default from the token id, see routers.task), and the
    model's expert groups (group-limited routing), and which of num_parts rank parts routes them (task-local)."""

    logits_TE: torch.Tensor
    k: int
    capacity_factor: float | None = None
    token_ids_T: torch.Tensor | None = None
    task_T: torch.Tensor | None = None
    num_groups: int = 1  # expert groups (contiguous blocks of E / num_groups) of a group-limited gate
    topk_groups: int = 1  # groups a token may use there
    part: int = 0  # which rank (TP group) routes these tokens, of num_parts (task-local)
    num_parts: int = 1

    @property
    def num_tokens(self) -> int:
        return self.logits_TE.shape[0]

    @property
    def num_experts(self) -> int:
        return self.logits_TE.shape[1]

    def token_ids(self) -> torch.Tensor:
        """int64 [T] on the logits' device: token_ids_T, or 0..T-1."""
        if self.token_ids_T is not None:
            return self.token_ids_T.to(self.logits_TE.device)
        return torch.arange(self.num_tokens, device=self.logits_TE.device)


@dataclass(frozen=True)
class Routed:
    """A router's choice: routing (ids [T, K], weights [T, K], capacity and drops) and rerouted_Tk bool [T, K]."""

    routing: Routing
    rerouted_Tk: torch.Tensor


@dataclass(frozen=True)
class RouterKind:
    """One router of the registry: grammar (for errors and --help), route(inp: RouterInput, param) -> Routed,
    check(param) -> bool (None: takes no value), default value when written bare (None: required, or none)."""

    grammar: str
    route: Callable
    check: Callable[[float], bool] | None = None
    default: float | None = None


@dataclass(frozen=True)
class Router:
    """A parsed router: kind (a key of ROUTERS) and its value. Call it with a RouterInput."""

    kind: str
    param: float | None = None

    def __str__(self) -> str:
        bare = self.param is None or (self.param == 0 and ROUTERS[self.kind].default == 0)  # 0: the model's own
        return self.kind if bare else f"{self.kind}:{self.param:g}"

    def __call__(self, inp: RouterInput) -> Routed:
        return ROUTERS[self.kind].route(inp, self.param)

    def check(self, num_experts: int, k: int, groups: int = 1, topk_groups: int = 1, model: str = "the model"):
        """ValueError (one line) when this router cannot run on a model of E experts, top-k and expert groups."""
        if self.kind == "topk-switch" and not 1 <= self.param < k:
            raise ValueError(f"{self}: needs 1 <= K2 < k = {k} ({model})")
        if self.kind == "topk-group":
            keep = int(self.param) or topk_groups
            if groups < 2 or num_experts % groups or not keep <= groups or keep * (num_experts // groups) < k:
                raise ValueError(f"{self}: {model} has {groups} expert group(s); needs groups >= 2 dividing E, "
                                 f"TG <= groups and TG * E/groups >= k")  # fmt: skip


def _registry() -> dict[str, RouterKind]:
    from moebench.kernels.routers import capacity_aware, hash_layer, task, task_local, topk, topk_group, topk_switch

    return {
        "topk": RouterKind("topk", topk.route),
        "capacity-aware": RouterKind("capacity-aware", capacity_aware.route),
        "topk-switch": RouterKind("topk-switch:K2 (1 <= K2 < k)", topk_switch.route, check=_positive_int),
        "hash": RouterKind("hash", hash_layer.route),
        "task": RouterKind("task[:N] (N >= 1 tasks, default 4)", task.route, _positive_int, task.DEFAULT_TASKS),
        "task-local": RouterKind(
            "task-local[:N] (N >= 1 tasks; bare: one per rank)",
            task_local.route,
            check=_positive_int,
            default=task_local.PER_PART,
        ),
        "topk-group": RouterKind(
            "topk-group[:TG] (TG >= 1 groups; bare: the model's)",
            topk_group.route,
            check=_positive_int,
            default=topk_group.MODEL_DEFAULT,
        ),
    }


def _positive_int(value: float) -> bool:
    return value >= 1 and value == int(value)


ROUTERS: dict[str, RouterKind] = _registry()


def grammar() -> str:
    return ", ".join(kind.grammar for kind in ROUTERS.values())


def parse_router(spec: str) -> Router:
    """`name[:PARAM]` of the registry -> Router; ValueError naming the grammar otherwise."""
    parsed = parse_value_spec(spec, ROUTERS)
    if parsed is None:
        raise ValueError(f"bad router {spec!r}; expected one of: {grammar()}")
    return Router(*parsed)


def parse_routers(specs, num_experts: int, k: int, groups: int = 1, topk_groups: int = 1,
                  model: str = "the model") -> list[Router]:  # fmt: skip
    """Each spec parsed and checked against the model (E, k, expert groups): ValueError, one line."""
    routers = [parse_router(spec) for spec in specs]
    for router in routers:
        router.check(num_experts, k, groups, topk_groups, model)
    return routers


__all__ = ["ROUTERS", "Routed", "Router", "RouterInput", "RouterKind", "grammar", "parse_router", "parse_routers"]
