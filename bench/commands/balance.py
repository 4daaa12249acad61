# E = experts, k = experts per token, P = ranks, G = ranks per node, R = redundant experts, W = batches per window
"""Expert-parallel load balance, exactly (no timing): every router x placement x workload on a simulated cluster.

    moebench balance --model deepseek-v3-tiny --ranks 4 --ranks-per-node 2 --skew zipf:1.2,lognormal:1.0 \\
        --redundant 32 --window 4 --json balance.json

Single process. Placements are fit on one window of W batches and measured on the next (`--eval-window
same`: on the fit window). The figures and their invariants are bench/layer/balance.py's; a row whose
invariants fail is printed and the run exits 1. `--record-trace FILE` writes the topk gate's routing of the
first workload (fit and next windows, every rank's tokens in rank order per step) as a routing trace;
`--trace FILE` adds a trace to the workloads.
"""

from __future__ import annotations

import argparse
import sys

import torch

from moebench.bench import options, report
from moebench.bench.layer import balance, traces
from moebench.bench.layer.placements import PLACEMENTS, check_placements
from moebench.bench.layer.presets import get_preset
from moebench.bench.layer.skews import Skew
from moebench.bench.layer.workloads import make_router_weights
from moebench.kernels import route
from moebench.kernels.routers import ROUTERS, parse_routers

SWITCH_DROP_PCT = 1.0  # Switch Transformer (Fedus et al., 2021): < 1% of tokens dropped at capacity factor 1.25
SWITCH_CF = 1.25
COLUMNS = [
    "router", "placement", "skew", "R", "window", "max/mean rank", "max/mean node", "max/mean expert", "drop %",
    "rerouted %", "gate mass", "out dev", "local KB", "intra KB", "inter KB", "inter dedup KB", "extra weight MB",
    "ok",
]  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p)
    p.set_defaults(model="deepseek-v3-tiny")
    p.add_argument("--ranks", type=int, default=4, help="P: ranks of the simulated cluster")
    p.add_argument("--ranks-per-node", type=int, default=2, help="G: ranks per node")
    options.add_batch(p, "64")
    options.add_batch_spread(p)
    options.add_skew(p, "gate,zipf:1.2,lognormal:1.0", gate=True)
    options.add_routers(p, None)  # default: every router (topk-switch:k/2 where k > 1)
    options.add_placements(p, PLACEMENTS)  # --redundant default: E/8 rounded to a multiple of P, at least P
    p.add_argument("--window", type=int, default=4, help="W: batches in the fit window (and in the next)")
    p.add_argument("--eval-window", choices=("next", "same"), default="next",
                   help="measure on the window after the fit (next) or on the fit window (same)")  # fmt: skip
    p.add_argument("--capacity-factor", type=options.capacity_factor_list, default=[None],
                   help="one value: capacity = ceil(cf * T * k / E) per expert per rank; none = no drops")  # fmt: skip
    options.add_dtype(p, "bfloat16")
    p.add_argument("--record-trace", default=None, metavar="FILE", help="write the topk gate's routing as a trace")
    options.add_seed(p)
    options.add_output(p)


def default_routers(k: int, groups: int = 1) -> list[str]:
    """Every router: topk-switch at k/2 where k > 1; topk-group where the model has expert groups."""
    names = []
    for name, kind in ROUTERS.items():
        if name == "topk-switch":
            names += [f"{name}:{max(1, k // 2)}"] if k > 1 else []
        elif name == "topk-group":
            names += [name] if groups > 1 else []
        else:
            names.append(name if kind.check is None or kind.default == 0 else f"{name}:{kind.default:g}")
    return names


def default_redundant(E: int, P: int) -> int:
    """E/8 rounded to a multiple of P, at least P; 0 on one rank (a replica needs another rank)."""
    return 0 if P == 1 else max(P, round(E / 8 / P) * P)


def parse_config(args) -> balance.BalanceConfig:
    """Every check before any work: ValueError (one line) on bad input."""
    preset = get_preset(args.model)
    P, G = args.ranks, args.ranks_per_node
    if P < 1 or G < 1 or P % G:
        raise ValueError(f"--ranks {P} must be a positive multiple of --ranks-per-node {G}")
    if preset.E % P:
        raise ValueError(f"{preset.name} has E={preset.E} experts, not divisible by P={P} ranks")
    options.check_batch(args)
    if len(args.batch) != 1:
        raise ValueError("balance takes one --batch (tokens per rank)")
    options.check_batch_spread(args)
    if args.window < 1:
        raise ValueError(f"--window must be >= 1 batch, got {args.window}")
    if len(args.capacity_factor) != 1:
        raise ValueError("balance takes one --capacity-factor")
    specs = args.routers or default_routers(preset.k, preset.groups)
    routers = parse_routers(specs, preset.E, preset.k, preset.groups, preset.topk_groups, preset.name)
    if not routers:
        raise ValueError("--routers needs at least one router")
    options.check_names(args.placements, PLACEMENTS, "placement")
    R = default_redundant(preset.E, P) if args.redundant is None else args.redundant
    if args.placements == list(PLACEMENTS) and G == 1 and R:  # the default list: per-node placements need G > 1
        args.placements = [name for name, kind in PLACEMENTS.items() if not kind.per_node]
    check_placements(args.placements, preset.E, P, G, R)
    options.check_skews(args)
    elem_bytes = torch.finfo(options.resolve_dtype(args.dtype, torch.device("cpu"))).bits // 8
    return balance.BalanceConfig(preset, P, G, args.batch[0], args.skew, routers, args.placements, R, args.window,
                                 args.eval_window, args.capacity_factor[0], elem_bytes, args.seed,
                                 args.batch_spread)  # fmt: skip


def record(cfg: balance.BalanceConfig, skew: Skew, path: str, argv: list[str]) -> None:
    """The topk gate's routing of `skew` over the fit and next windows, one step per batch, as a trace."""
    p = cfg.preset
    w_router_HE = make_router_weights(p, cfg.seed)
    steps_ids, steps_weights = [], []
    for b in range(2 * cfg.window):
        routings = [route(r.logits_TE, p.k) for r in balance.make_batch(cfg, skew, w_router_HE, b)]
        steps_ids.append(torch.cat([r.topk_ids_Tk for r in routings]))
        steps_weights.append(torch.cat([r.topk_weights_Tk for r in routings]))
    source = (f"moebench balance, the topk gate on workload {skew}, seed {cfg.seed}, {cfg.num_ranks} ranks x "
              f"{cfg.tokens} tokens per step (rank order): {' '.join(argv)}")  # fmt: skip
    traces.write_trace(path, traces.trace_document(steps_ids, steps_weights, p.E, p.k, p.name, source))


# ---------------------------------------------------------------------------------------------- report


def _table_row(r: dict) -> list:
    return [
        r["router"], r["placement"], r["skew"], r["redundant"], r["window"], r["max_mean_rank"], r["max_mean_node"],
        r["max_mean_expert"], r["dropped_pct"], r["rerouted_pct"], r["gate_mass"], r["out_dev"],
        r["local_bytes"] / 1e3, r["intra_bytes"] / 1e3, r["inter_bytes"] / 1e3, r["inter_node_dedup_bytes"] / 1e3,
        r["extra_weight_bytes"] / 1e6,
        "yes" if r["correct"] else f"NO: {r['problems']}",
    ]  # fmt: skip


def _find(rows, **want):
    return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)


def summary_lines(rows: list[dict], cfg_meta: dict) -> list[str]:
    """The comparisons the issue asks for, each beside its number (measured; nothing asserted here)."""
    lines = []
    skews = dict.fromkeys(r["skew"] for r in rows)
    for skew in skews:
        base = _find(rows, router="topk", placement="contiguous", skew=skew)
        for name in ("eplb", "hierarchical"):
            other = _find(rows, router="topk", placement=name, skew=skew)
            if base and other:
                before, after = base["max_mean_rank"] - 1, other["max_mean_rank"] - 1
                if after <= 0:
                    cut = "all of it"
                else:
                    cut = f"{before / after:.2f}x less" if before >= after else f"{after / before:.2f}x more"
                lines.append(f"{skew}: {name} R={other['redundant']} excess rank imbalance (max/mean - 1) "
                             f"{after:.3f} vs contiguous {before:.3f} ({cut}), {other['window']} window")  # fmt: skip
        for router in dict.fromkeys(r["router"] for r in rows if r["router"] in ("topk", "topk-group")):
            flat, hier = _find(rows, router=router, placement="eplb", skew=skew), \
                _find(rows, router=router, placement="hierarchical", skew=skew)  # fmt: skip
            if flat and hier and cfg_meta["P"] > cfg_meta["G"]:
                lines.append(
                    f"{skew}, {router}: inter-node KB per batch, hierarchical vs eplb: per assignment "
                    f"{hier['inter_bytes'] / 1e3:.1f} vs {flat['inter_bytes'] / 1e3:.1f}, a token once per node "
                    f"{hier['inter_node_dedup_bytes'] / 1e3:.1f} vs {flat['inter_node_dedup_bytes'] / 1e3:.1f} "
                    f"(max/mean rank {hier['max_mean_rank']:.3f} vs {flat['max_mean_rank']:.3f})")  # fmt: skip
        topk, aware = _find(rows, router="topk", skew=skew), _find(rows, router="capacity-aware", skew=skew)
        if topk and topk["placement"] == "contiguous" and topk["intra_bytes"] + topk["inter_bytes"]:
            plain = topk["intra_bytes"] + topk["inter_bytes"]
            lines.append(f"{skew}: a token once per destination rank (dedup) would send "
                         f"{topk['rank_dedup_bytes'] / 1e3:.1f} KB per batch against {plain / 1e3:.1f} "
                         f"({plain / topk['rank_dedup_bytes']:.2f}x less), topk + contiguous")  # fmt: skip
        if topk and aware and topk["capacity_factor"] is not None:
            lines.append(f"{skew}: capacity-aware drops {aware['dropped_pct']:.2f}% (rerouted "
                         f"{aware['rerouted_pct']:.2f}%) where topk drops {topk['dropped_pct']:.2f}% at cf "
                         f"{topk['capacity_factor']}")  # fmt: skip
        if topk and topk["capacity_factor"] == SWITCH_CF and skew in ("uniform", "gate"):
            lines.append(f"{skew}: Switch Transformer reports < {SWITCH_DROP_PCT:g}% dropped at cf {SWITCH_CF} "
                         f"(balanced routing); here topk drops {topk['dropped_pct']:.2f}% "
                         f"({cfg_meta['tokens']} tokens per rank, E={cfg_meta['E']}, k={cfg_meta['k']})")  # fmt: skip
    return lines


def title(meta: dict) -> str:
    tiny = " [TINY: H, F scaled down]" if meta["model"].endswith("-tiny") else ""
    return (f"load balance — {meta['model']}{tiny}, P={meta['P']} (G={meta['G']}), {meta['tokens']} tokens per rank, "
            f"cf {meta['capacity_factor']}, W={meta['window']} batches, {meta['dtype']} rows")  # fmt: skip


CAPTION = (
    "Exact counts, no timing. Each rank routes its own tokens (per-rank capacity). Placements are fit on the fit "
    "window's load and measured on the `window` column's window. max/mean rank (node, expert): the busiest "
    "rank's (node's, logical expert's) kept assignments / the mean, per batch, averaged over the window. drop % "
    "and rerouted %: of the gate's T*k assignments. gate mass: the gate probability (softmax over all E) the kept "
    "assignments carry / what the gate's top k carry. out dev: ||y - y_ref|| / ||y_ref||, y_ref the dropless topk "
    "output (a proxy, not a quality claim). local / intra / inter KB: dispatch bytes per batch that stay on the "
    "rank / cross ranks in a node / cross nodes (row = H * elem + 8 B; combine returns the same); inter dedup KB: "
    "the inter-node bytes when a token crosses once to each remote node holding its experts (H * elem per token "
    "and node + 12 B per assignment, DeepEP's internode path). Dispatch: each "
    "rank sends each assignment to the replica it has sent fewest so far in the batch (ties: its node). extra "
    "weight MB: replica weights the fullest rank holds beyond its E/P experts. ok: every invariant held."
)


def render(data: dict, path) -> None:
    report.print_table(report.stored_title(data, path), COLUMNS, [_table_row(r) for r in data["rows"]])


def run(args) -> int:
    cfg = parse_config(args)
    p = cfg.preset
    meta = report.base_meta("balance", sys.argv) | {
        "tag": args.tag, "model": p.name, "H": p.H, "F": p.F, "E": p.E, "k": p.k, "P": cfg.num_ranks,
        "G": cfg.ranks_per_node, "tokens": cfg.tokens, "batch_spread": cfg.batch_spread, "window": cfg.window,
        "eval_window": cfg.eval_window, "capacity_factor": cfg.capacity_factor, "redundant": cfg.redundant,
        "dtype": args.dtype, "seed": cfg.seed,
    }  # fmt: skip
    if args.record_trace:
        record(cfg, cfg.skews[0], args.record_trace, sys.argv[1:])
        report.console.print(f"wrote trace {args.record_trace}")
    rows = balance.study(cfg)
    table = [_table_row(r) for r in rows]
    report.print_table(title(meta), COLUMNS, table, CAPTION)
    lines = summary_lines(rows, meta)
    for line in lines:
        report.console.print(line)
    meta["summary"] = lines
    markdown = f"## {title(meta)}\n\n" + report.rows_to_markdown(COLUMNS, table, CAPTION)
    markdown += "\n" + "".join(f"- {line}\n" for line in lines)
    report.emit(args, meta, rows, markdown)
    return report.exit_status(rows)
