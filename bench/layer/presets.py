"""Model presets (DESIGN.md §4): the real MoE layer shapes, and a `-tiny` variant of each for a 2-core CPU.

H = hidden, F = expert FFN width, E = experts, k = experts per token; groups / topk_groups: the expert groups of a
group-limited gate and how many a token may use (DeepSeek-V3's n_group = 8, topk_group = 4; 1 / 1 elsewhere).
A `-tiny` variant divides H and F by 16 and keeps E, k and the activation (mixtral-8x7b-tiny is
H=256, F=896: one SwiGLU forward of T=4096 tokens is ~11 GFLOP, a few hundred ms here).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """An MoE layer's shape: hidden size H, expert FFN width F, E experts, top-k, expert activation."""

    name: str
    H: int
    F: int
    E: int
    k: int
    act: str
    note: str = ""
    groups: int = 1  # expert groups of a group-limited gate (DeepSeek-V3: 8 groups of 32 experts)
    topk_groups: int = 1  # groups a token may use under that gate (DeepSeek-V3: 4)

    @property
    def tiny(self) -> bool:
        return self.name.endswith("-tiny")

    def describe(self) -> str:
        """'mixtral-8x7b-tiny (H=256 F=896 E=8 k=2)'."""
        return f"{self.name} (H={self.H} F={self.F} E={self.E} k={self.k})"


_FULL = (
    Preset("mixtral-8x7b", 4096, 14336, 8, 2, "swiglu"),
    Preset(
        "deepseek-v3",
        7168,
        2048,
        256,
        8,
        "swiglu",
        "+1 shared expert (optional, not in the routed experts)",
        groups=8,
        topk_groups=4,
    ),
    Preset("qwen3-30b-a3b", 2048, 768, 128, 8, "swiglu"),
    Preset("switch-base-128", 768, 3072, 128, 1, "gelu", "2-matrix GELU expert in the original"),
)
TINY_DIVISOR = 16


def _tiny(p: Preset) -> Preset:
    return Preset(f"{p.name}-tiny", p.H // TINY_DIVISOR, p.F // TINY_DIVISOR, p.E, p.k, p.act, f"H, F / {TINY_DIVISOR}",
                  p.groups, p.topk_groups)  # fmt: skip


PRESETS: dict[str, Preset] = {p.name: p for full in _FULL for p in (full, _tiny(full))}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or ValueError listing the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]
