"""PNG plots of stored rows (matplotlib, files only): one line per configuration, and stacked phase bars."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write the figure through a temporary name and a rename (never a half-written PNG)."""
    plt = _pyplot()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def series(rows, base: Path, suffix: str, *, x: str, y: str, label, xlabel: str, ylabel: str, title: str,
           logy: bool = True) -> list[Path]:  # fmt: skip
    """One line per label(row) of y against x (log x), written beside `base` as <stem>-<suffix>.png."""
    plt = _pyplot()
    lines = defaultdict(list)
    for r in rows:
        lines[label(r)].append((r[x], r[y]))
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, points in lines.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name, linestyle="--" if name in ("host-copy", "floor") else "-")
    ax.set(xscale="log", yscale="log" if logy else "linear", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=6, ncol=2)
    return [save(fig, base.with_name(f"{base.stem}-{suffix}.png"))]


def phase_bars(groups: dict, phases, base: Path, suffix: str, ylabel: str) -> list[Path]:
    """Stacked bars of each row's phases, one panel per group: {panel title: [(bar label, row), ...]}. A phase a
    stored run did not time on its own (an older run, before the phase existed) draws as zero."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 5.5), squeeze=False)
    for ax, (panel, bars) in zip(axes[0], groups.items()):
        labels = [label for label, _ in bars]
        bottom = [0.0] * len(bars)
        for phase in phases:
            heights = [row.get(f"{phase}_us", 0.0) for _, row in bars]
            ax.bar(labels, heights, bottom=bottom, label=phase)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set(ylabel=ylabel, title=panel)
        ax.tick_params(axis="x", labelsize=6, rotation=90)
        ax.legend(fontsize=7)
    return [save(fig, base.with_name(f"{base.stem}-{suffix}.png"))]
