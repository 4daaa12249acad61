# T = tokens per rank (T_r where ranks differ), E = experts, H = hidden, F = expert FFN width, k = experts per
# token (the model's), K = experts a router picks, P = ranks, G = ranks per node, N = P / G nodes,
# W = batches per window, A = kept assignments of a batch (all ranks)
"""Load balance, exactly (no timing): routers x placements x workloads over a simulated cluster of P ranks.

A *batch* is one step of the cluster: every rank r routes its own T_r tokens (per-rank capacity, as the
layer). Tokens are drawn per (seed, batch, rank); the gate's logits are x @ w_router of the layer's weights.
A forced skew replaces the gate's top-k with its own choice through `skews.forced_logits` (its experts become the
token's top k, in its order, with its weights as their softmax; the other experts keep the gate's order, so a
router that looks past the top k sees the gate's next-best experts).

Per (router, workload): the router routes W batches (the fit window) and W more (the next window). Each
placement is fit on the fit window's load (assignments from each node to each expert) and measured on the
evaluation window (`next`, or `same`: the fit window itself). Figures:
- max_mean_rank, max_mean_node: per batch, the busiest rank's (node's) received assignments / the mean;
  averaged over the window's batches. max_mean_expert: the same over logical experts (the router's, before
  placement).
- dropped_pct, rerouted_pct: of the window's T * k gate assignments (a router that picks K < k experts counts
  the k - K it does not send as neither).
- gate_mass: the gate probability the router's kept assignments carry / what the gate's top k carry (softmax
  over all E experts).
- out_dev: ||y - y_ref|| / ||y_ref|| over the window, y_ref = the dropless topk layer output (fp32, the
  `dynamic` kernel's torch path on all E experts).
- local_bytes, intra_bytes, inter_bytes: dispatch wire bytes per batch (mean over the window) of kept
  assignments that stay on their rank, cross ranks inside a node, cross nodes; one packed row = H * elem +
  8 bytes (the layer's row and its expert id); combine sends the same bytes back.
  inter_node_dedup_bytes: the inter-node bytes of a dispatch that sends a token once to each remote node
  holding any of its experts (DeepEP's internode path: H * elem per token and node, plus 12 bytes of id and
  weight per assignment), the bytes a node-limited gate and a node-aware placement save. rank_dedup_bytes: the
  same per destination rank (a token once to each other rank holding any of its experts: the `dedup` dispatch),
  to set beside intra + inter bytes.
- extra_weight_bytes: the most replica weight bytes a rank holds beyond its E / P experts (3 * H * F * elem
  per replica).
- correct: every invariant held (`problems` says which did not): a router's experts are in range and distinct
  per token, no expert keeps more than its capacity, rerouted assignments are kept ones; a placement gives
  every expert a slot and every rank S / P slots, dispatch sends each assignment to a slot of its own expert,
  and local + intra + inter bytes = kept assignments x row bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moebench.bench.layer.placements import Placement, fit_placement, redundant_for
from moebench.bench.layer.presets import Preset
from moebench.bench.layer.skews import Skew, forced_logits, sample_topk
from moebench.bench.layer.units.assignment import ID_BYTES  # the layer's packed row: H elements + its expert id
from moebench.bench.layer.workloads import make_expert_weights, make_router_weights, make_tokens, spread_batch_sizes
from moebench.kernels import get_kernel, route
from moebench.kernels.routers import Routed, Router, RouterInput

DEDUP_META_BYTES = 12  # per assignment in a node-deduplicated row: its expert id (int64) and gate weight (fp32)


@dataclass(frozen=True)
class BalanceConfig:
    """One balance study: the model, the cluster (P ranks, G per node), tokens per rank T (spread: each rank's
    batch drawn in T * (1 +- spread)), workloads, routers, placements, R redundant experts, W batches per
    window, which window is measured ("next" or "same"), the capacity factor, the wire dtype's bytes."""

    preset: Preset
    num_ranks: int
    ranks_per_node: int
    tokens: int
    skews: list[Skew]
    routers: list[Router]
    placements: list[str]
    redundant: int = 0
    window: int = 4
    eval_window: str = "next"
    capacity_factor: float | None = 1.25
    elem_bytes: int = 2
    seed: int = 0
    batch_spread: float = 0.0

    @property
    def num_nodes(self) -> int:
        return self.num_ranks // self.ranks_per_node


# ---------------------------------------------------------------------------------------------- workloads


def _seed(cfg: BalanceConfig, batch: int, rank: int) -> int:
    return (cfg.seed * 1_000_003 + batch) * 4099 + rank


def rank_tokens(cfg: BalanceConfig, batch: int) -> list[int]:
    """T_r of each rank in this batch: T, or T * (1 + spread * u), u uniform in [-1, 1], at least 1."""
    return spread_batch_sizes(cfg.tokens, cfg.batch_spread, cfg.num_ranks, cfg.seed, batch)


@dataclass(frozen=True)
class RankBatch:
    """One rank's share of a batch: x_TH fp32, logits_TE fp32 (forced where the workload forces), token ids [T]."""

    x_TH: torch.Tensor
    logits_TE: torch.Tensor
    token_ids_T: torch.Tensor


def make_batch(cfg: BalanceConfig, skew: Skew, w_router_HE: torch.Tensor, batch: int) -> list[RankBatch]:
    """Every rank's tokens, logits and global token ids for one batch of one workload."""
    p, out, row = cfg.preset, [], 0  # row: this rank's first token in the batch
    first_id = batch * cfg.num_ranks * cfg.tokens * 2  # global token ids: batches never overlap (spread < 1)
    for rank, T in enumerate(rank_tokens(cfg, batch)):
        seed = _seed(cfg, batch, rank)
        x_TH = make_tokens(T, p.H, seed=seed)
        logits_TE = x_TH @ w_router_HE
        if skew.kind != "gate":
            ids_Tk, weights_Tk = sample_topk(
                skew,
                T,
                p.E,
                p.k,
                seed=cfg.seed,  # one expert popularity for the cluster; each rank draws its own tokens
                batch=batch,
                part=rank,
                layout=(cfg.num_ranks, cfg.ranks_per_node),
                first_row=row,  # this rank's rows of a trace step
            )
            logits_TE = forced_logits(logits_TE, ids_Tk, weights_Tk)
        out.append(RankBatch(x_TH, logits_TE, torch.arange(first_id + row, first_id + row + T)))
        row += T
    return out


# ---------------------------------------------------------------------------------------------- one router


@dataclass
class RouterWindow:
    """What a router did over one window: per batch, each rank's Routed, the batch, and its kept assignments
    (expert_A, source_rank_A, token_A: kept_assignments, computed once)."""

    routed: list[list[Routed]]  # [batch][rank]
    batches: list[list[RankBatch]]
    kept: list[tuple]


def route_window(cfg: BalanceConfig, router: Router, batches: list[list[RankBatch]]) -> RouterWindow:
    """The router on every rank of every batch (made once per workload: make_batch)."""
    p, window = cfg.preset, RouterWindow([], batches, [])
    for ranks in batches:
        inputs = [RouterInput(r.logits_TE, p.k, cfg.capacity_factor, r.token_ids_T, None, p.groups, p.topk_groups,
                              rank, cfg.num_ranks) for rank, r in enumerate(ranks)]  # fmt: skip
        routed_P = [router(inp) for inp in inputs]
        window.routed.append(routed_P)
        window.kept.append(kept_assignments(routed_P, with_tokens=True))
    return window


def kept_assignments(routed_P: list[Routed], with_tokens: bool = False):
    """(expert_A, source_rank_A) int64 [A]: every kept assignment of one batch, rank by rank; with_tokens: also
    token_A int64 [A], the batch-wide index of each assignment's token."""
    experts, sources, tokens, first = [], [], [], 0
    for rank, r in enumerate(routed_P):
        kept_Tk = r.routing.kept_Tk
        expert_A = r.routing.topk_ids_Tk[kept_Tk]
        experts.append(expert_A)
        sources.append(torch.full_like(expert_A, rank))
        tokens.append(first + kept_Tk.nonzero()[:, 0])
        first += kept_Tk.shape[0]
    out = (torch.cat(experts), torch.cat(sources))
    return (*out, torch.cat(tokens)) if with_tokens else out


def node_load(cfg: BalanceConfig, window: RouterWindow) -> torch.Tensor:
    """float64 [N, E]: kept assignments from each source node to each expert over the window."""
    load_NE = torch.zeros(cfg.num_nodes, cfg.preset.E, dtype=torch.float64)
    for expert_A, source_A, _ in window.kept:
        load_NE.index_put_((source_A // cfg.ranks_per_node, expert_A), torch.ones_like(expert_A, dtype=torch.float64),
                           accumulate=True)  # fmt: skip
    return load_NE


def _max_mean(count_X: torch.Tensor) -> float:
    mean = count_X.double().mean().item()
    return count_X.max().item() / mean if mean > 0 else 1.0


def routing_problems(routed: Routed, num_experts: int) -> list[str]:
    """The invariants every router's output keeps (empty when all hold)."""
    routing, problems = routed.routing, []
    ids_TK = routing.topk_ids_Tk
    if ids_TK.numel() and not (int(ids_TK.min()) >= 0 and int(ids_TK.max()) < num_experts):
        problems.append("expert id out of range")
    if ids_TK.numel() and (ids_TK.sort(dim=1).values.diff(dim=1) == 0).any():
        problems.append("a token got the same expert twice")
    if routing.capacity is not None and not problems and ids_TK.numel():  # from the ids, not kept_counts_E
        kept_E = torch.bincount(ids_TK[routing.kept_Tk], minlength=num_experts)
        if int(kept_E.max()) > routing.capacity:
            problems.append("an expert kept more than its capacity")
    if (routed.rerouted_Tk & ~routing.kept_Tk).any():
        problems.append("a rerouted assignment was dropped")
    return problems


def reference_outputs(cfg: BalanceConfig, batches: list[list[RankBatch]], experts_EHF) -> list[list[torch.Tensor]]:
    """[batch][rank] y_ref_TH: the dropless topk layer output (fp32, dynamic kernel), once per workload."""
    kernel, k = get_kernel("dynamic"), cfg.preset.k
    return [[kernel(r.x_TH, route(r.logits_TE, k), *experts_EHF)[0] for r in ranks] for ranks in batches]


def router_figures(cfg: BalanceConfig, window: RouterWindow, experts_EHF, refs) -> dict:
    """The router's own figures over a window (placement-independent): expert imbalance, drops, reroutes,
    gate mass kept and the output's deviation from the dropless topk output (refs: reference_outputs);
    `problems`: broken invariants."""
    p, kernel = cfg.preset, get_kernel("dynamic")
    gate_total = kept_mass = 0.0
    dropped = rerouted = assignments = 0
    dev_sq = ref_sq = 0.0
    expert_imbalance, problems = [], set()
    for routed_P, ranks, refs_P in zip(window.routed, window.batches, refs):
        counts_E = torch.zeros(p.E, dtype=torch.int64)
        for r, rank, y_ref_TH in zip(routed_P, ranks, refs_P):
            problems.update(routing_problems(r, p.E))
            routing = r.routing
            counts_E += routing.kept_counts_E
            assignments += rank.x_TH.shape[0] * p.k
            dropped += int(routing.num_dropped)
            rerouted += int((r.rerouted_Tk & routing.kept_Tk).sum())
            prob_TE = torch.softmax(rank.logits_TE.double(), dim=-1)
            gate_total += prob_TE.topk(p.k, dim=-1).values.sum().item()
            kept_mass += (torch.gather(prob_TE, 1, routing.topk_ids_Tk) * routing.kept_Tk).sum().item()
            y_TH, _ = kernel(rank.x_TH, routing, *experts_EHF)
            dev_sq += (y_TH.double() - y_ref_TH.double()).pow(2).sum().item()
            ref_sq += y_ref_TH.double().pow(2).sum().item()
        expert_imbalance.append(_max_mean(counts_E))
    return {
        "max_mean_expert": sum(expert_imbalance) / len(expert_imbalance),
        "dropped_pct": 100.0 * dropped / max(1, assignments),
        "rerouted_pct": 100.0 * rerouted / max(1, assignments),
        "gate_mass": kept_mass / gate_total if gate_total else 1.0,
        "out_dev": (dev_sq / ref_sq) ** 0.5 if ref_sq else 0.0,
        "problems": sorted(problems),
    }


def placement_problems(placement: Placement) -> list[str]:
    problems = []
    if any(not slots for slots in placement.slots_E):
        problems.append("an expert has no slot")
    if len({len(held) for held in placement.experts_P}) != 1:
        problems.append("ranks hold different slot counts")
    return problems


def placement_figures(cfg: BalanceConfig, placement: Placement, window: RouterWindow) -> dict:
    """Rank and node imbalance and dispatch bytes of a placement over a window, and its extra weight bytes."""
    p, G = cfg.preset, cfg.ranks_per_node
    row_bytes = p.H * cfg.elem_bytes + ID_BYTES
    rank_imbalance, node_imbalance, problems = [], [], set(placement_problems(placement))
    local = intra = inter = kept = inter_rows = remote_rows = 0
    expert_S = torch.tensor(placement.expert_S, dtype=torch.int64)
    for expert_A, source_A, token_A in window.kept:
        slot_A = placement.dispatch(expert_A, source_A)
        if not torch.equal(expert_S[slot_A], expert_A):
            problems.add("dispatch sent an assignment to another expert's slot")
        kept += expert_A.numel()
        dest_A = placement.rank_of_slots(slot_A)
        rank_load_P = torch.bincount(dest_A, minlength=cfg.num_ranks)
        rank_imbalance.append(_max_mean(rank_load_P))
        node_imbalance.append(_max_mean(rank_load_P.view(cfg.num_nodes, G).sum(1)))
        same_rank_A, same_node_A = dest_A == source_A, dest_A // G == source_A // G
        local += int(same_rank_A.sum())
        intra += int((same_node_A & ~same_rank_A).sum())
        inter += int((~same_node_A).sum())
        remote_A = ~same_node_A  # a token crosses once to each remote node that holds any of its experts
        inter_rows += torch.unique(token_A[remote_A] * cfg.num_nodes + dest_A[remote_A] // G).numel()
        off_rank_A = ~same_rank_A  # a token once to each other rank holding any of its experts (issue 13's dedup)
        remote_rows += torch.unique(token_A[off_rank_A] * cfg.num_ranks + dest_A[off_rank_A]).numel()
    batches = len(window.routed)
    if local + intra + inter != kept:
        problems.add("dispatch bytes do not add up to the kept assignments")
    return {
        "problems": sorted(problems),
        "max_mean_rank": sum(rank_imbalance) / batches,
        "max_mean_node": sum(node_imbalance) / batches,
        "local_bytes": local * row_bytes / batches,
        "intra_bytes": intra * row_bytes / batches,
        "inter_bytes": inter * row_bytes / batches,
        "inter_node_dedup_bytes": (inter_rows * p.H * cfg.elem_bytes + inter * DEDUP_META_BYTES) / batches,
        "rank_dedup_bytes": (remote_rows * p.H * cfg.elem_bytes + (intra + inter) * DEDUP_META_BYTES) / batches,
        "extra_weight_bytes": placement.extra_slots_per_rank() * 3 * p.H * p.F * cfg.elem_bytes,
        "slots_per_rank": len(placement.experts_P[0]),
    }


def study(cfg: BalanceConfig) -> list[dict]:
    """Every router x placement x workload of the config: one row each (module doc for the figures)."""
    p = cfg.preset
    w_router_HE = make_router_weights(p, cfg.seed)
    experts_EHF = make_expert_weights(p, torch.float32, "cpu", cfg.seed)
    fit_batches = range(cfg.window)
    eval_batches = fit_batches if cfg.eval_window == "same" else range(cfg.window, 2 * cfg.window)
    rows = []
    for skew in cfg.skews:
        made = {b: make_batch(cfg, skew, w_router_HE, b) for b in (*fit_batches, *eval_batches)}
        fit_windows, eval_windows = [made[b] for b in fit_batches], [made[b] for b in eval_batches]
        refs = reference_outputs(cfg, eval_windows, experts_EHF)
        for router in cfg.routers:
            fit = route_window(cfg, router, fit_windows)
            evaluated = fit if cfg.eval_window == "same" else route_window(cfg, router, eval_windows)
            load_NE = node_load(cfg, fit)
            figures = router_figures(cfg, evaluated, experts_EHF, refs)
            for name in cfg.placements:
                R = redundant_for(name, cfg.redundant)
                placement = fit_placement(name, load_NE, cfg.num_ranks, cfg.ranks_per_node, R, p.groups)
                placed = placement_figures(cfg, placement, evaluated)
                problems = sorted({*figures["problems"], *placed["problems"]})
                rows.append({
                    "router": str(router), "placement": name, "skew": str(skew), "P": cfg.num_ranks,
                    "G": cfg.ranks_per_node, "redundant": R, "window": cfg.eval_window, "batches": cfg.window,
                    "tokens": cfg.tokens, "capacity_factor": cfg.capacity_factor,
                    **placed, **figures, "problems": "; ".join(problems), "correct": not problems,
                })  # fmt: skip
    return rows
