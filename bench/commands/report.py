"""Render stored results: tables and plots from result JSON files, without rerunning anything.

moebench report [PATH ...]: each PATH a result JSON or a folder (default: results/). From a folder every
stored run is taken (one `<benchmark>-<tag>.json` per benchmark and tag: a new run replaces the old).
Each benchmark's own subcommand renders its rows (`render`) and writes its plots beside the JSON
(`plot`): the registry is the subcommands'.
"""

from __future__ import annotations

import json
from pathlib import Path

from moebench.bench import report
from moebench.bench.commands import SUBCOMMANDS, command


def add_arguments(p) -> None:
    p.add_argument("paths", nargs="*", help="result JSON files or folders (default: results/)")
    p.add_argument("--no-plots", action="store_true", help="tables only")


def stored_runs(folder: Path) -> list[Path]:
    """Every stored run under `folder` (recursively): JSON files with `meta.benchmark` and `rows`; other JSON
    (a link profile, say) is skipped: name it explicitly to render it."""
    runs = []
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("meta"), dict) and "benchmark" in data["meta"]:
            runs.append(path)
    return runs


def resolve(paths: list[str]) -> list[Path]:
    if not paths:
        paths = [str(report.RESULTS_DIR)]
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += stored_runs(p)
        else:
            files.append(p)
    if not files:
        raise ValueError(f"no result JSON files found in {', '.join(paths)}")
    return files


def render_fields(data: dict, path: Path) -> None:
    """A benchmark without its own table: every field of every row."""
    columns = list(data["rows"][0]) if data["rows"] else []
    report.print_table(
        report.stored_title(data, path), columns, [[r.get(c, "") for c in columns] for r in data["rows"]]
    )


def run(args) -> int:
    for path in resolve(args.paths):
        data = report.load_json(path)
        name = data["meta"]["benchmark"]
        module = command(name) if name in SUBCOMMANDS else None
        plot = getattr(module, "plot", None)
        try:
            getattr(module, "render", render_fields)(data, path)
            written = plot(data["rows"], path) if plot and data["rows"] and not args.no_plots else []
        except (KeyError, TypeError) as exc:
            raise report.ResultFileError(f"{path}: rows lack a field the {name} report needs: {exc}") from None
        for png in written:
            report.console.print(f"wrote {png}")
    return 0
