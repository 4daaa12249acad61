"""The subcommands: one thin module each, registered here by name (the name a result file's meta carries).

A subcommand module provides `add_arguments(parser)` and `run(args) -> exit status`; one whose results
`moebench report` can render also provides `render(data, path)` and, for plots, `plot(rows, base)`.
"""

from __future__ import annotations

import importlib

SUBCOMMANDS = {
    "collectives": "moebench.bench.commands.collectives",
    "kernels": "moebench.bench.commands.kernels",
    "moe": "moebench.bench.commands.moe",
    "balance": "moebench.bench.commands.balance",
    "calibrate": "moebench.bench.commands.calibrate",
    "project": "moebench.bench.commands.project",
    "cluster": "moebench.bench.commands.cluster",
    "report": "moebench.bench.commands.report",
}


def command(name: str):
    """The module of subcommand `name`."""
    return importlib.import_module(SUBCOMMANDS[name])
