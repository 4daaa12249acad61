"""Reporting: rich tables on rank 0, and atomic JSON / CSV / Markdown result files.

A result file is `{"meta": {...}, "rows": [...]}`; `meta["benchmark"]` names the benchmark
(collectives, kernels, moe, ...). Every file is written to a temporary name beside its target
and renamed into place, so a crash or Ctrl-C never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Results live in the checkout (an editable install, the README's way), else under the working directory.
_CHECKOUT = Path(__file__).resolve().parent.parent
RESULTS_DIR = (_CHECKOUT if (_CHECKOUT / "pyproject.toml").exists() else Path.cwd()) / "results"
CONVENTIONS = (
    "GB = 1e9 B; time in µs; TFLOP/s = 1e12 FLOP/s; median and p99 over timed iterations "
    "(warmup excluded, barrier before each)"
)

console = Console(width=240)


class ResultFileError(ValueError):
    """A stored result file that is missing, truncated or not a moebench result."""


def machine_tag() -> str:
    """Folder name for this machine's results: `<gpu-name>` on CUDA, else `cpu-<cores>core`."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace("NVIDIA ", "").replace(" ", "-").lower()
    return f"cpu-{os.cpu_count()}core"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux: the first `model name` in /proc/cpuinfo; else platform.processor(), or
    "unknown"): the machine behind a `cpu-<cores>core` folder changes between sessions (a Xeon, an EPYC), and
    small-size timings move with it."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import mpi4py
    import numpy
    import torch
    import triton
    from mpi4py import MPI

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "triton": triton.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi": MPI.Get_library_version().splitlines()[0].strip(),
    }


def base_meta(benchmark: str, argv: Sequence[str]) -> dict:
    """Fields every result file's meta carries."""
    return {
        "benchmark": benchmark,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "machine": machine_tag(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "argv": list(argv),
        "versions": library_versions(),
        "conventions": CONVENTIONS,
    }


def _fmt(value) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence], caption: str = "") -> None:
    """Print one rich table; floats get 3 significant figures at most."""
    table = Table(title=title, caption=caption, caption_justify="left", header_style="bold")
    for name in columns:
        table.add_column(name, justify="right" if name not in ("algo", "kernel", "impl", "config") else "left")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename; the file gets the usual permissions
    (0666 less the umask: mkstemp's own 0600 would leave result files unreadable to the rest of a team)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def rows_to_csv(rows: Sequence[dict]) -> str:
    """CSV text with the union of the rows' keys as columns (first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()})
    return out.getvalue()


def rows_to_markdown(columns: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> str:
    """A Markdown table (columns + formatted rows), caption below it."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    if caption:
        lines += ["", caption]
    return "\n".join(lines) + "\n"


def write_json(path: Path, meta: dict, rows: Sequence[dict]) -> None:
    """Atomically write `{"meta": meta, "rows": rows}` to `path`."""
    atomic_write(Path(path), json.dumps({"meta": meta, "rows": list(rows)}, indent=1) + "\n")


def save_run(meta: dict, rows: Sequence[dict], markdown: str, out_dir: Path | None = None) -> list[Path]:
    """Store one run under `out_dir` (default results/<machine>/) as `<benchmark>-<tag>.{json,csv,md}`, where tag
    is `meta["tag"]` (e.g. "p2") if present: a new run of the same benchmark and tag replaces the one it
    supersedes (git history keeps the old). Returns the paths written."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR / meta["machine"]
    name = meta["benchmark"] + (f"-{meta['tag']}" if meta.get("tag") else "")
    # not Path.with_suffix: a tag may hold a dot ("zipf1.2")
    paths = [out_dir / f"{name}.{ext}" for ext in ("json", "csv", "md")]
    write_json(paths[0], meta, rows)
    atomic_write(paths[1], rows_to_csv(rows))
    atomic_write(paths[2], markdown)
    return paths


def emit(args, meta: dict, rows: Sequence[dict], markdown: str) -> None:
    """A run's files, as its flags ask: `--json PATH` and `--save` (results/<machine>/); prints what it wrote."""
    if args.json:
        write_json(args.json, meta, rows)
    if args.save:
        for path in save_run(meta, rows, markdown):
            console.print(f"wrote {path}")


WHERE_FIELDS = ("size", "batch", "tokens", "algo", "kernel", "router", "placement", "skew")  # name a wrong row


def exit_status(rows: Sequence[dict], say: bool = True) -> int:
    """1 when any row is wrong (`wrong` > 0 or `correct` False) or its traffic differs from its schedule; else 0.
    Says which rows on stderr (where `say`: rank 0)."""
    bad = [r for r in rows if r.get("wrong") or r.get("correct") is False or r.get("schedule_matches") is False
           or r.get("phases_add_up") is False]  # fmt: skip
    for r in bad if say else []:
        what = "traffic differs from its schedule" if r.get("schedule_matches") is False else "WRONG result"
        what = "phases do not add up to the total" if r.get("phases_add_up") is False else what
        where = ", ".join(f"{k}={r[k]}" for k in WHERE_FIELDS if k in r)
        print(f"moebench: {what}: {where}", file=sys.stderr, flush=True)
    return 1 if bad else 0


def stored_title(data: dict, path: Path) -> str:
    meta = data["meta"]
    return f"{path}  ({meta['benchmark']}, {meta.get('time', '?')}, {meta.get('host', '?')})"


def load_json(path: Path) -> dict:
    """Read a stored result; ResultFileError (one line) if it is missing, truncated or foreign."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultFileError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"{path}: not valid JSON (truncated?): {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict) or not isinstance(data.get("rows"), list):
        raise ResultFileError(f"{path}: not a moebench result (expected {{'meta': {{...}}, 'rows': [...]}})")
    if "benchmark" not in data["meta"]:
        raise ResultFileError(f"{path}: not a moebench result (meta has no 'benchmark')")
    return data


def comm_meta(comm) -> dict:
    """The run's topology facts: backend, P, G, L, nodes, device, ranks per host vs cores, GPUs."""
    from moebench.bench.topo.cluster import cluster_meta
    from moebench.collectives.topology import gpu_info

    hosts = comm.allgather_object(socket.gethostname())
    ranks_here = hosts.count(socket.gethostname())
    topo = comm.topology
    return {
        "backend": comm.backend + (f" ({comm.info['process_group']})" if "process_group" in comm.info else ""),
        "launcher": comm.info.get("launcher"),
        "P": comm.world_size,
        "G": topo.ranks_per_node,
        "L": topo.tp,
        "nodes": topo.num_nodes,
        "nodes_emulated": topo.emulated,
        "hosts": sorted(set(hosts)),
        "ranks_per_host": ranks_here,
        "cores": os.cpu_count(),
        "oversubscribed": ranks_here > (os.cpu_count() or 1),
        "device": str(comm.device),
        "emulated_inter_latency_us": comm.traffic.inter_latency_s * 1e6,
        "gpus": gpu_info(),
        **cluster_meta(),
    }


def print_header(meta: dict) -> None:
    """The report header: backend, P, G, L, nodes, device, versions; a warning when ranks outnumber cores."""
    v = meta.get("versions", {})
    lines = [
        f"moebench {meta['benchmark']}  {meta['time']}  host {meta['host']} ({meta['cpu_count']} cores"
        f"{', ' + meta['cpu_model'] if meta.get('cpu_model') else ''})",
        "  ".join(f"{k} {v[k]}" for k in ("python", "torch", "triton", "mpi4py") if k in v),
    ]
    if "P" in meta:
        emu = " (emulated on one host by --ranks-per-node)" if meta.get("nodes_emulated") else ""
        lines.append(
            f"backend {meta['backend']}  P={meta['P']}  G={meta['G']}  L={meta['L']}  "
            f"nodes={meta['nodes']}{emu}  device {meta['device']}"
        )
        if meta.get("emulated_cluster"):
            lines.append(meta["emulated_cluster"])  # "EMULATED cluster: N nodes x G ranks, ..."
        if meta.get("emulated_inter_latency_us"):
            lat = meta["emulated_inter_latency_us"]
            lines.append(f"EMULATED inter-node latency: +{lat:g} µs per inter-node message")
        if v.get("mpi"):
            lines.append(f"MPI: {v['mpi']}")
    for gpu in meta.get("gpus", []):
        lines.append(
            f"GPU {gpu['index']}: {gpu['name']}, {gpu['memory_gb']:.0f} GB, {gpu['nvlink_active_links']} NVLinks"
        )
    console.print("\n".join(lines))
    if meta.get("oversubscribed"):
        console.print(
            f"[bold yellow]WARNING: {meta['ranks_per_host']} ranks on {meta['cores']} cores: MPI ranks busy-poll, "
            "so small-message latency here is set by the scheduler, not the algorithm. Compare algorithms at "
            "one rank per core; use these numbers for correctness and large-size ratios.[/]"
        )


def header_markdown(meta: dict) -> str:
    """The header facts as a Markdown bullet list (for saved summaries)."""
    v = meta.get("versions", {})
    cpu = f", {meta['cpu_model']}" if meta.get("cpu_model") else ""
    items = [f"- {meta['time']}, host `{meta['host']}` ({meta['cpu_count']} cores{cpu}), machine `{meta['machine']}`"]
    if "P" in meta:
        emu = " (emulated by --ranks-per-node)" if meta.get("nodes_emulated") else ""
        items.append(
            f"- backend {meta['backend']}, P={meta['P']}, G={meta['G']}, L={meta['L']}, "
            f"nodes={meta['nodes']}{emu}, device {meta['device']}"
        )
        if meta.get("emulated_cluster"):
            items.append(f"- {meta['emulated_cluster']}")
        if meta.get("oversubscribed"):
            items.append(f"- **WARNING**: {meta['ranks_per_host']} ranks on {meta['cores']} cores (busy-polling MPI)")
    items.append("- " + ", ".join(f"{k} {val}" for k, val in v.items()))
    items.append(f"- command: `{' '.join(meta.get('argv', []))}`")
    return "\n".join(items) + "\n"
