"""dedup: DeepEP's and pplx-kernels' dispatch, a token once per destination rank.

The MoE layer's rows for this pair are tokens, not (token, expert) assignments: a token travels once to each
rank that holds any of its kept experts, carrying that rank's local expert ids and gate weights in a header
(bench/layer/units/token.py); the receiver runs every one of them and sums their weighted outputs, so combine
sends one row back per token and rank. Wire bytes fall by the mean number of a token's experts per
destination rank (less the header). The transport is the plain pair over any exchange (so `dedup:hierarchical`
is the two-level exchange of deduplicated rows); its schedule is plain's at the deduplicated split counts.
"""

from __future__ import annotations

from moebench.collectives import plain
from moebench.collectives.exchange import DispatchCombine

PAIR = DispatchCombine("dedup", plain.dispatch, plain.combine, plain.schedule, unit="token")
