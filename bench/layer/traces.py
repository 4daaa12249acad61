# T = tokens, E = experts, k = experts per token, S = steps of a layer
"""Routing traces: a documented JSON format, a reader that says in one line what is wrong, replay as a
workload (`--skew trace:FILE`, or `--trace FILE`), and the recorder (`--record-trace FILE`).

Format (version 1):

    {
      "format": "moebench-routing-trace", "version": 1,
      "num_experts": E, "top_k": k,
      "model": "mixtral-8x7b-tiny",          (optional: where it came from)
      "source": "free text: how it was made", (optional)
      "layers": [
        {"layer": 0, "steps": [
          {"topk_ids": [[e, ...], ...]},       one row of k distinct expert ids per token, or
          {"counts": [c_0, ..., c_{E-1}]}      assignments per expert (k per token; sum = T * k)
        ]}
      ]
    }

A step may carry "topk_weights" ([T, k] combine weights, rows summing to 1) beside "topk_ids"; without it
the replay draws them as the forced skews do (a softmax over k seeded normal logits).

Replay of batch b on rank part r uses layer 0's step b mod S: its tokens from the rank's first row (the
tokens of the ranks before it, r*T with equal batches) on, wrapping around the step; a counts step is
expanded into T tokens whose k distinct experts are drawn with probability proportional to the counts
(Gumbel top-k, seeded). `trace:FILE@L`
replays layer L.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from moebench.bench.report import atomic_write

FORMAT = "moebench-routing-trace"
VERSION = 1


class TraceError(ValueError):
    """A trace file that cannot be read or does not fit the model; the message is one line naming the file."""


@dataclass(frozen=True)
class Trace:
    """A loaded trace: E, k, and per layer its steps, each (ids_Tk int64 [T, k], weights_Tk fp32 or None) or
    (counts_E int64 [E], None)."""

    path: str
    num_experts: int
    top_k: int
    layers: dict[int, list[tuple[str, torch.Tensor, torch.Tensor | None]]]
    model: str = ""
    source: str = ""

    def steps(self, layer: int) -> list:
        if layer not in self.layers:
            raise TraceError(f"trace {self.path}: no layer {layer} (layers: {', '.join(map(str, self.layers))})")
        return self.layers[layer]


def _fail(path, what: str):
    raise TraceError(f"trace {path}: {what}")


def _ids_step(path, where: str, step: dict, E: int, k: int):
    ids = step["topk_ids"]
    if not isinstance(ids, list) or any(not isinstance(row, list) or len(row) != k for row in ids):
        _fail(path, f"{where}: topk_ids must be a list of rows of k = {k} expert ids")
    if any(type(e) is not int for row in ids for e in row):
        _fail(path, f"{where}: topk_ids must hold integers")
    ids_Tk = torch.tensor(ids, dtype=torch.int64).view(len(ids), k)
    if ids_Tk.numel() and not (int(ids_Tk.min()) >= 0 and int(ids_Tk.max()) < E):
        _fail(path, f"{where}: expert ids must be in 0..{E - 1} (num_experts = {E})")
    if ids_Tk.numel() and (ids_Tk.sort(dim=1).values.diff(dim=1) == 0).any():
        _fail(path, f"{where}: a token lists the same expert twice")
    weights_Tk = None
    if "topk_weights" in step:
        try:
            weights_Tk = torch.tensor(step["topk_weights"], dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            _fail(path, f"{where}: topk_weights must be numbers")
        if weights_Tk.shape != ids_Tk.shape:
            _fail(path, f"{where}: topk_weights must have the shape of topk_ids {tuple(ids_Tk.shape)}")
        if weights_Tk.numel() and not (torch.isfinite(weights_Tk).all() and (weights_Tk >= 0).all()):
            _fail(path, f"{where}: topk_weights must be finite and >= 0")
    return ("ids", ids_Tk, weights_Tk)


def _counts_step(path, where: str, step: dict, E: int, k: int):
    counts = step["counts"]
    if not isinstance(counts, list) or len(counts) != E or any(not isinstance(c, int) or c < 0 for c in counts):
        _fail(path, f"{where}: counts must be {E} non-negative integers (num_experts = {E})")
    if sum(counts) % k or sum(counts) == 0:
        _fail(path, f"{where}: counts must sum to a positive multiple of k = {k} (T * k), got {sum(counts)}")
    return ("counts", torch.tensor(counts, dtype=torch.int64), None)


def parse_trace(data, path: str = "<trace>") -> Trace:
    """A Trace from decoded JSON; TraceError (one line) on anything that does not follow the format."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        _fail(path, f'not a routing trace (needs "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        _fail(path, f"version {data.get('version')!r} is not supported (this reader reads {VERSION})")
    E, k = data.get("num_experts"), data.get("top_k")
    if not isinstance(E, int) or not isinstance(k, int) or not 1 <= k <= E:
        _fail(path, "num_experts and top_k must be integers with 1 <= top_k <= num_experts")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        _fail(path, "layers must be a non-empty list")
    out = {}
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or not isinstance(layer.get("steps"), list) or not layer["steps"]:
            _fail(path, f"layers[{i}] needs a non-empty steps list")
        index = layer.get("layer", i)
        if type(index) is not int or index < 0:
            _fail(path, f"layers[{i}]: layer must be a non-negative integer, got {index!r}")
        if index in out:
            _fail(path, f"layer {index} appears twice")
        steps = []
        for j, step in enumerate(layer["steps"]):
            where = f"layer {index} step {j}"
            if isinstance(step, dict) and "topk_ids" in step:
                steps.append(_ids_step(path, where, step, E, k))
            elif isinstance(step, dict) and "counts" in step:
                steps.append(_counts_step(path, where, step, E, k))
            else:
                _fail(path, f"{where}: a step needs topk_ids or counts")
        out[index] = steps
    return Trace(path, E, k, out, str(data.get("model", "")), str(data.get("source", "")))


@lru_cache(maxsize=16)
def load_trace(path: str) -> Trace:
    """Read and check a trace file (cached by path); TraceError (one line) when missing, truncated or malformed."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        _fail(path, f"cannot read it ({exc.strerror or exc})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(path, f"not valid JSON (truncated?): {exc.msg} at line {exc.lineno}")
    return parse_trace(data, path)


def split_spec(spec: str) -> tuple[str, int]:
    """'FILE' or 'FILE@L' -> (FILE, L)."""
    file, at, layer = spec.rpartition("@")
    if at and layer.isdigit():
        return file, int(layer)
    return spec, 0


def replay(trace: Trace, layer: int, T: int, E: int, k: int, batch: int, first: int, gen: torch.Generator):
    """(ids_Tk int64 [T, k], weights_Tk fp32 [T, k] or None) of batch `batch`: the step's rows first.. (wrapping;
    a rank's first row is the tokens of the ranks before it)."""
    if (trace.num_experts, trace.top_k) != (E, k):
        raise TraceError(f"trace {trace.path}: made for E = {trace.num_experts}, k = {trace.top_k}; "
                         f"this model has E = {E}, k = {k}")  # fmt: skip
    steps = trace.steps(layer)
    kind, data, weights = steps[batch % len(steps)]
    if kind == "counts":
        log_p_E = data.double().clamp_min(1e-9).log()
        u_TE = torch.rand((T, E), generator=gen, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
        return (log_p_E[None, :] - torch.log(-torch.log(u_TE))).topk(k, dim=-1).indices, None
    n = data.shape[0]
    if n == 0:
        raise TraceError(f"trace {trace.path}: layer {layer} step {batch % len(steps)} has no tokens")
    rows_T = (first + torch.arange(T)) % n
    return data[rows_T], None if weights is None else weights[rows_T]


def trace_document(steps_ids: list[torch.Tensor], steps_weights: list[torch.Tensor] | None, num_experts: int,
                   k: int, model: str = "", source: str = "", layer: int = 0) -> dict:  # fmt: skip
    """A version-1 trace of one layer: one step per [T, k] ids tensor (weights rounded to 6 digits)."""
    steps = []
    for i, ids_Tk in enumerate(steps_ids):
        step = {"topk_ids": ids_Tk.tolist()}
        if steps_weights is not None:
            step["topk_weights"] = [[round(w, 6) for w in row] for row in steps_weights[i].tolist()]
        steps.append(step)
    return {"format": FORMAT, "version": VERSION, "num_experts": num_experts, "top_k": k, "model": model,
            "source": source, "layers": [{"layer": layer, "steps": steps}]}  # fmt: skip


def write_trace(path, document: dict) -> None:
    """Write a trace atomically (compact JSON)."""
    parse_trace(document, str(path))  # never write what the reader would refuse
    atomic_write(Path(path), json.dumps(document, separators=(",", ":")) + "\n")
