"""Render stored results: tables and plots from result JSON files, without rerunning anything.

python -m moebench report [PATH ...]: each PATH a result JSON or a folder (default: results/). From a
folder the newest JSON of each benchmark and tag is taken. Plots (PNG) are written beside each JSON:
collectives -> busbw vs size per algorithm; kernels -> time vs tokens per kernel; moe -> latency vs
batch per configuration and stacked phase bars at the smallest and largest batch.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from moebench.bench import report

STAMP = re.compile(r"-\d{8}-\d{6}$")


def add_arguments(p) -> None:
    p.add_argument("paths", nargs="*", help="result JSON files or folders (default: results/)")
    p.add_argument("--no-plots", action="store_true", help="tables only")


def newest_per_benchmark(folder: Path) -> list[Path]:
    """The newest `<name>-<timestamp>.json` for each name under `folder` (recursively); other JSON is skipped."""
    newest: dict[tuple[Path, str], Path] = {}
    for path in sorted(folder.rglob("*.json")):
        if not STAMP.search(path.stem):
            continue  # not a stored run (a link profile, say); name it explicitly to render it
        name = STAMP.sub("", path.stem)
        key = (path.parent, name)
        if key not in newest or path.stem > newest[key].stem:
            newest[key] = path
    return sorted(newest.values())


def resolve(paths: list[str]) -> list[Path]:
    if not paths:
        paths = [str(report.RESULTS_DIR)]
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += newest_per_benchmark(p)
        else:
            files.append(p)
    if not files:
        raise ValueError(f"no result JSON files found in {', '.join(paths)}")
    return files


def render_table(data: dict, path: Path) -> None:
    """Print the stored rows with the benchmark's own columns (a generic table for others)."""
    from moebench.bench import collectives_bench, kernels_bench, moe_bench

    meta, rows = data["meta"], data["rows"]
    title = f"{path}  ({meta['benchmark']}, {meta.get('time', '?')}, {meta.get('host', '?')})"
    try:
        if meta["benchmark"] == "collectives":
            report.print_table(title, collectives_bench.COLUMNS, collectives_bench.table_rows(rows))
        elif meta["benchmark"] == "kernels":
            report.print_table(title, kernels_bench.COLUMNS, [kernels_bench._table_row(r) for r in rows])
        elif meta["benchmark"] == "moe":
            report.print_table(title, moe_bench.COLUMNS, moe_bench.table_rows(rows))
            report.print_table("Best configuration per batch", *moe_bench.summary(rows))
        else:
            columns = list(rows[0]) if rows else []
            report.print_table(title, columns, [[r.get(c, "") for c in columns] for r in rows])
    except (KeyError, TypeError) as exc:
        raise report.ResultFileError(f"{path}: rows lack a field the {meta['benchmark']} report needs: {exc}") from None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_collectives(rows: list[dict], base: Path) -> list[Path]:
    plt = _pyplot()
    series = defaultdict(list)
    for r in rows:
        series[r["algo"]].append((r["size"], r["busbw_gbps"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for algo, points in series.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=algo, linestyle="--" if algo == "host-copy" else "-")
    ax.set(xscale="log", yscale="log", xlabel="bytes per rank (S)", ylabel="busbw (GB/s)", title="all-to-all busbw")
    ax.legend(fontsize=7)
    return [_save(fig, base.with_name(base.stem + "-busbw.png"))]


def plot_kernels(rows: list[dict], base: Path) -> list[Path]:
    plt = _pyplot()
    series = defaultdict(list)
    for r in rows:
        label = r["kernel"] + ("" if r.get("capacity_factor") is None else f" cf={r['capacity_factor']}")
        series[label].append((r["tokens"], r["time_us"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in series.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="time (µs, median)", title="expert kernels")
    ax.legend(fontsize=7)
    return [_save(fig, base.with_name(base.stem + "-time.png"))]


def plot_moe(rows: list[dict], base: Path) -> list[Path]:
    from moebench.bench.moe import PHASES

    plt = _pyplot()

    first = (rows[0]["skew"], rows[0]["capacity_factor"])
    rows = [r for r in rows if (r["skew"], r["capacity_factor"]) == first]
    series = defaultdict(list)
    for r in rows:
        series[f"{r['algo']} + {r['kernel']}"].append((r["batch"], r["total_us"]))
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, points in series.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="tokens per rank",
        ylabel="layer latency (µs, median)",
        title=f"MoE layer latency vs batch (skew {first[0]}, cf {first[1] or 'none'})",
    )
    ax.legend(fontsize=6, ncol=2)
    paths = [_save(fig, base.with_name(base.stem + "-latency.png"))]
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, 2 if len(batches) > 1 else 1, figsize=(13, 5.5), squeeze=False)
    for ax, batch in zip(axes[0], [batches[0], batches[-1]]):
        chosen = [r for r in rows if r["batch"] == batch]
        labels = [f"{r['algo']}\n{r['kernel']}" for r in chosen]
        bottom = [0.0] * len(chosen)
        for phase in PHASES:
            heights = [r[f"{phase}_us"] for r in chosen]
            ax.bar(labels, heights, bottom=bottom, label=phase)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set(ylabel="µs (median per phase)", title=f"phase breakdown, batch {batch} per rank")
        ax.tick_params(axis="x", labelsize=6, rotation=90)
        ax.legend(fontsize=7)
    paths.append(_save(fig, base.with_name(base.stem + "-phases.png")))
    return paths


PLOTS = {"collectives": plot_collectives, "kernels": plot_kernels, "moe": plot_moe}


def run(args) -> int:
    for path in resolve(args.paths):
        data = report.load_json(path)
        render_table(data, path)
        plot = PLOTS.get(data["meta"]["benchmark"])
        if plot and data["rows"] and not args.no_plots:
            try:
                written = plot(data["rows"], path)
            except (KeyError, TypeError) as exc:
                raise report.ResultFileError(f"{path}: rows lack a field the plot needs: {exc}") from None
            for png in written:
                report.console.print(f"wrote {png}")
    return 0
