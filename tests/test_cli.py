"""The command line: one spelling of every shared flag in every subcommand, help that works, packages installed."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import tomllib
from conftest import REPO

from moebench.bench import cli
from moebench.bench.commands import SUBCOMMANDS

ALIASES = {"--tokens", "--router", "--placement"}  # kernels: the old name of --batch; moe/balance: singulars
SPELLINGS = {  # the spellings issue 10 fixed
    "iters": ("-n", "--iters"),
    "warmup": ("-w", "--warmup"),
    "dtype": ("-d", "--dtype"),
    "batch": ("--batch",),
    "seed": ("--seed",),
    "skew": ("--skew",),
    "capacity_factor": ("--capacity-factor",),
    "json": ("--json",),
    "save": ("--save",),
    "tag": ("--tag",),
    "backend": ("--backend",),
    "ranks_per_node": ("--ranks-per-node",),
    "check": ("-c", "--check"),
    "minbytes": ("-b", "--minbytes"),
}


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_flag_has_one_spelling_in_every_subcommand():
    spellings = defaultdict(dict)
    for name, parser in subcommand_parsers().items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                spellings[action.dest][name] = tuple(s for s in action.option_strings if s not in ALIASES)
    for dest, by_command in spellings.items():
        assert len(set(by_command.values())) == 1, f"{dest} is spelled differently: {by_command}"
    for dest, spelled in SPELLINGS.items():
        assert set(spellings[dest].values()) == {spelled}, dest
    users = {dest: sorted(by_command) for dest, by_command in spellings.items()}
    assert users["iters"] == users["warmup"] == sorted(["calibrate", "collectives", "kernels", "moe"])
    assert users["seed"] == sorted(["balance", "calibrate", "collectives", "kernels", "moe"])
    assert users["json"] == users["save"] == users["tag"] == sorted(["balance", "calibrate", "collectives", "kernels",
                                                                      "moe", "project"])  # fmt: skip
    assert set(users["batch"]) == {"balance", "kernels", "moe"}
    assert set(users["skew"]) >= {"balance", "collectives", "kernels", "moe"}


def test_kernels_takes_tokens_as_an_alias_of_batch():
    args = cli.build_parser().parse_args(["kernels", "--tokens", "1,16"])
    assert args.batch == [1, 16]


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_help_of_every_subcommand(name):
    result = subprocess.run([sys.executable, "-m", "moebench", name, "--help"], capture_output=True, text=True,
                            timeout=120, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: moebench {name}")
    for dest, spelled in SPELLINGS.items():
        if any(action.dest == dest for action in subcommand_parsers()[name]._actions):
            for flag in spelled:
                assert re.search(rf"(^|[\s\[]){re.escape(flag)}[\s,\]]", result.stdout), (flag, name)


def test_every_package_folder_is_installed():
    """pyproject lists every folder with an __init__.py under moebench.* (a non-editable install would miss one)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for root, package in roots.items():
        for init in (REPO / root).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / root)
            found.add(".".join([package, *rel.parts]))
    assert found == listed
    assert not (REPO / "kernels" / "__main__.py").exists() and (REPO / "moebench" / "__main__.py").exists()


def test_no_bare_module_is_importable_from_outside_the_checkout(tmp_path):
    code = "import importlib.util as u; print([m for m in ('collectives', 'kernels', 'bench') if u.find_spec(m)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    code = "import moebench, importlib.util as u; print([m for m in ('collectives', 'kernels') if u.find_spec(m)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr  # importing moebench takes the checkout off sys.path
    assert Path(REPO / "kernels" / "__init__.py").exists()
