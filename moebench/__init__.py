"""moebench: communication and kernel benchmarks for Mixture-of-Experts inference.

The project's folders install under this one namespace: `moebench.collectives`, `moebench.kernels`,
`moebench.bench` (see pyproject.toml's package-dir). No bare `collectives`, `kernels` or `bench` module
reaches site-packages: `kernels` is Hugging Face's package, which transformers 5 imports.

A process started in the checkout has the checkout first on sys.path, where those folders would
shadow packages of the same name. Two guards: importing moebench takes the checkout off sys.path
(moebench reaches its own modules through the install), and a folder imported under its bare name
(`import kernels` from the checkout root, as transformers does) steps aside for the package of that
name installed elsewhere, or fails as if it were not there (`step_aside`).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from pkgutil import extend_path

# A non-editable install: the checkout's moebench/ (first on sys.path when run from the root) holds
# only this file and __main__; the installed copy holds the rest.
__path__ = extend_path(__path__, __name__)

_CHECKOUT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _CHECKOUT]

__version__ = "0.2.0"


def step_aside(bare_name: str) -> None:
    """Called by a project folder imported under its bare name: let that name be the installed package of the
    same name (Hugging Face's `kernels`, say), or raise ModuleNotFoundError where there is none."""
    del sys.modules[bare_name]
    sys.modules[bare_name] = importlib.import_module(bare_name)  # the checkout is off sys.path by now
