"""The one `name[:VALUE]` grammar of the registries that take a value (routers here; the workloads' skews)."""

from __future__ import annotations

import math


def parse_value_spec(spec: str, kinds: dict) -> tuple[str, float | None] | None:
    """`name` or `name:VALUE` against a registry whose kinds carry `check` (None: takes no value) and `default`
    (the value of a bare name; None: a value is required). Returns (name, value) (value None for a kind that
    takes none), or None when the name is unknown or the value missing, not a number or out of range."""
    name, colon, text = spec.strip().partition(":")
    kind = kinds.get(name)
    if kind is None:
        return None
    if not colon:
        if kind.check is None:
            return name, None
        return (name, float(kind.default)) if kind.default is not None else None
    if kind.check is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    return (name, value) if kind.check(value) else None
