"""Cost model: every algorithm's message schedule, and its time on a link profile.

P = world size, G = ranks per node, N = P / G nodes, L = TP degree, S = bytes a rank sends.
splits[s, d] = rows rank s sends rank d ([P, P], row s = rank s's send_splits); row_bytes = bytes a row.

Schedule. An algorithm is a list of phases that run one after another (each waits for the one
before: a blocking sendrecv step, a library all-to-all, a layout copy). Inside a phase all
messages go at once. The schedules mirror collectives/ exactly — the count exchanges of `plan`,
the pairwise steps of flat, the two layout transforms and two sub-all-to-alls of hierarchical,
the 1/L slices and the TP all-gather of coordinated — so that the messages and bytes per rank
and link class equal what `comm.traffic` counts in a real run (tests/test_costmodel.py checks).

Time of a phase = its busiest rank (routing skew shows up here). For rank r and link class c:

    t_c(r) = alpha_c + (m_c(r) - 1) * gap_c + X_c(r) / bw_c          (0 if r has no class-c message)
    intra: X = max(bytes r sends, bytes r receives) inside its node
    inter: X = max(bytes r sends, bytes r receives, node uplink bytes / NICs, node downlink bytes / NICs)
           -- the G ranks of a node share its NICs (one NIC per node in the emulated cluster)
    copy:  t_copy(r) = alpha_copy + (chunks - 1) * gap_copy + copied bytes / bw_copy
           (+ own chunk / bw_self where a library all-to-all / all-gather copies it locally: the
           library's own local copy, calibrated apart - MPICH moves it through its messaging
           path at a fraction of a memcpy's speed; a profile without it uses bw_copy)
    t(r) = max(t_intra, t_inter) + (1 - overlap) * min(t_intra, t_inter) + t_copy(r)

m_c = messages r sends or receives in class c (max of the two); alpha = latency of a phase's
first message, gap = LogGP's g, the cost of each further message issued at once; bw in GB/s
(1e9 B/s). Times are in µs. A blocking pairwise step with nothing to send still costs alpha.
Each class has two links: the point-to-point path (blocking sendrecv: flat's steps) and the
library collective path (all-to-all-v, all-gather: native, hierarchical's levels, the count
exchanges), whose per-call overhead differs (LogGP's o); a profile may give only the first.
overlap = 1 where intra- and inter-node transfers run at once (NVLink and NIC), 0 where one CPU
drives both (TCP on an emulated cluster); calibration fits it where a phase mixes the classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from moebench.collectives.topology import Topology

COUNT_BYTES = 8  # one int64 split count
CLASSES = ("intra", "inter", "copy")


# ------------------------------------------------------------------------------ profiles


@dataclass(frozen=True)
class Link:
    """One link class: alpha_us (µs, first message), bw_gbs (GB/s), gap_us (µs per further message at once)."""

    alpha_us: float
    bw_gbs: float
    gap_us: float = 0.0

    def time_us(self, nbytes: float, msgs: int = 1) -> float:
        """alpha + (msgs - 1) * gap + nbytes / bw, in µs."""
        return self.alpha_us + max(msgs - 1, 0) * self.gap_us + nbytes / (self.bw_gbs * 1e3)


@dataclass(frozen=True)
class Profile:
    """Link classes of one system, G ranks per node sharing `nics_per_node` NICs, and where the numbers come from."""

    name: str
    intra: Link
    inter: Link
    copy: Link
    ranks_per_node: int
    nics_per_node: int = 1
    intra_coll: Link | None = None  # library collective path (None: same as intra)
    inter_coll: Link | None = None
    self_coll: Link | None = None  # the library collective's copy of a rank's own chunk (None: same as copy)
    overlap: float = 1.0
    source: str = ""
    fit: dict = field(default_factory=dict)  # calibration fit errors, per class

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        try:
            links = {c: Link(**d[c]) for c in CLASSES}
            colls = {c: Link(**d[c]) if d.get(c) else None for c in ("intra_coll", "inter_coll", "self_coll")}
            return cls(
                name=d["name"],
                **links,
                **colls,
                ranks_per_node=int(d["ranks_per_node"]),
                nics_per_node=int(d.get("nics_per_node", 1)),
                overlap=float(d.get("overlap", 1.0)),
                source=d.get("source", ""),
                fit=d.get("fit", {}),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a link profile (missing or bad field: {exc})") from None

    def link(self, cls: str, coll: bool = False) -> Link:
        """The link of class `cls` ("intra", "inter", "copy"); its library-collective path when `coll`."""
        return (getattr(self, f"{cls}_coll", None) if coll else None) or getattr(self, cls)

    @property
    def self_copy(self) -> Link:
        """The library collective's local copy of a rank's own chunk (the copy link where not calibrated)."""
        return self.self_coll or self.copy


# ------------------------------------------------------------------------------ schedules


@dataclass
class Phase:
    """Messages sent at once (src[M] -> dst[M], nbytes[M], global ranks) and per-rank copies ([P] each).

    blocking: a pairwise sendrecv step (the point-to-point path) — a zero-byte message still
    costs alpha (it is still a round trip); otherwise a library collective, which skips empty
    messages.
    """

    name: str
    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray
    copy_bytes: np.ndarray | None = None
    copy_chunks: np.ndarray | None = None
    blocking: bool = False
    matrix: np.ndarray | None = None  # [P, P] bytes s -> d instead of src/dst/nbytes (world phases)
    self_bytes: np.ndarray | None = None  # [P] each rank's own chunk, copied locally by the library (no alpha)


def _phase(name, P, src=(), dst=(), nbytes=(), copy_bytes=None, copy_chunks=None, blocking=False) -> Phase:
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    nbytes = np.asarray(nbytes, dtype=np.float64)
    keep = src != dst  # a rank's chunk for itself never crosses a link
    return Phase(name, src[keep], dst[keep], nbytes[keep], copy_bytes, copy_chunks, blocking)


def group_exchange(name: str, groups: list[list[int]], nbytes: float, P: int) -> Phase:
    """Calibration: a library all-to-all inside each group, nbytes from every member to every other."""
    return _group_exchange(name, groups, lambda a, b: nbytes, P)


def _group_exchange(name: str, groups: list[list[int]], bytes_fn, P: int, blocking=False) -> Phase:
    """One all-to-all inside each group (equal sizes): member a sends bytes_fn(a, b) to member b.

    bytes_fn takes arrays of global ranks a[M], b[M] and returns bytes[M]."""
    members = np.asarray(groups, dtype=np.int64)  # [groups, k]
    k = members.shape[1]
    a = np.repeat(members, k, axis=1).ravel()  # every (a, b) pair of each group
    b = np.tile(members, (1, k)).ravel()
    off = a != b
    a, b = a[off], b[off]
    return _phase(
        name, P, a, b, np.broadcast_to(np.asarray(bytes_fn(a, b), dtype=np.float64), a.shape), blocking=blocking
    )


def _no_messages() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty, np.zeros(0)


def _dense_exchange(name: str, matrix: np.ndarray) -> Phase:
    """All-to-all over the world: rank s sends matrix[s, d] bytes to d (the diagonal stays local)."""
    m = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(m, 0.0)
    return Phase(name, *_no_messages(), matrix=m)


def _with_self(phase: Phase, self_bytes: np.ndarray) -> Phase:
    phase.self_bytes = np.asarray(self_bytes, dtype=np.float64)
    return phase


def _counts_phase(name: str, groups: list[list[int]], per_peer: int, P: int) -> Phase:
    return _group_exchange(name, groups, lambda a, b: per_peer * COUNT_BYTES, P)


def _world_counts(P: int) -> Phase:
    return _dense_exchange("counts", np.full((P, P), COUNT_BYTES, dtype=np.float64))


def flat_schedule(splits: np.ndarray, row_bytes: int, topo: Topology, plan: bool = True) -> list[Phase]:
    """collectives.flat: counts (world alltoall), then P - 1 blocking steps r -> (r + i) % P (step 0 a local copy)."""
    P = splits.shape[0]
    B = np.asarray(splits, dtype=np.float64) * row_bytes
    ranks = np.arange(P)
    phases = [_world_counts(P)] if plan and P > 1 else []
    # step 0: the rank's own chunk, copied by torch (not the library): the copy link's bandwidth
    phases.append(Phase("self copy", *_no_messages(), self_bytes=np.diag(B).copy(), blocking=True))
    for step in range(1, P):
        dst = (ranks + step) % P
        phases.append(_phase(f"step {step}", P, ranks, dst, B[ranks, dst], blocking=True))
    return phases


def native_schedule(splits: np.ndarray, row_bytes: int, topo: Topology, plan: bool = True) -> list[Phase]:
    """collectives.native: counts (world alltoall), then one library all-to-all-v of every message at once."""
    P = splits.shape[0]
    B = np.asarray(splits, dtype=np.float64) * row_bytes
    phases = [_world_counts(P)] if plan and P > 1 else []
    a2a = _dense_exchange("alltoallv", B)
    a2a.self_bytes = np.diag(B).copy()
    return [*phases, a2a]


def _grids(splits: np.ndarray, topo: Topology):
    """Row counts of hierarchical's stages, for every rank r.

    mine[r, n', g'], intra[r, g_src, n'], inter[r, n_src, g_src]: as collectives.hierarchical.Counts.
    """
    P, G = topo.world_size, topo.ranks_per_node
    N = P // G
    S = np.asarray(splits, dtype=np.int64)
    mine = S.reshape(P, N, G)  # mine[r, n', g'] = rows r sends rank (n', g')
    # intra[(n, g), g_src, n'] = rows local peer (n, g_src) sends me in step 2, bound for (n', g)
    intra = S.reshape(N, G, N, G).transpose(0, 3, 1, 2).reshape(P, G, N)
    # inter[(n, g), n_src, g_src] = rows rank (n_src, g_src) finally sends me = splits[(n_src, g_src), r]
    inter = S.T.reshape(P, N, G)
    return mine, intra, inter


def hierarchical_schedule(
    splits: np.ndarray, row_bytes: int, topo: Topology, plan: bool = True, backward: bool = False
) -> list[Phase]:
    """collectives.hierarchical: counts intra, counts inter; transform, intra a2a, transform, inter a2a.

    backward: the four data steps undone in reverse order, no counts.
    """
    P, G = topo.world_size, topo.ranks_per_node
    N = P // G
    mine, intra, _ = _grids(splits, topo)
    node_groups = [topo.node_ranks(n) for n in range(N)]
    cross_groups = [topo.cross_ranks(g) for g in range(G)]
    phases = []
    if plan:
        if G > 1:
            phases.append(_counts_phase("counts intra", node_groups, N, P))
        if N > 1:
            phases.append(_counts_phase("counts inter", cross_groups, G, P))
    transform = G > 1 and N > 1
    rows_sent = mine.sum(axis=(1, 2)).astype(np.float64)  # [P]
    rows_arrived = intra.sum(axis=(1, 2)).astype(np.float64)  # [P] rows held after step 2

    def t1():
        return _phase("transform 1", P, copy_bytes=rows_sent * row_bytes, copy_chunks=np.full(P, N * G))

    def t2(rows):
        return _phase("transform 2", P, copy_bytes=rows * row_bytes, copy_chunks=np.full(P, N * G))

    # step 2: (n, g) -> local peer (n, g'): every row bound for local index g' on any node
    to_local = mine.sum(axis=1).astype(np.float64) * row_bytes  # [P, G]
    intra_bytes = lambda a, b: to_local[a, b % G]
    # step 4: (n, g) -> (n', g): rows from every local source bound for (n', g)
    to_node = intra.sum(axis=1).astype(np.float64) * row_bytes  # [P, N]
    inter_bytes = lambda a, b: to_node[a, b // G]
    ranks = np.arange(P)
    keep_intra, keep_inter = intra_bytes(ranks, ranks), inter_bytes(ranks, ranks)  # own chunks, copied locally
    if not backward:
        if transform:
            phases.append(t1())
        if G > 1:
            phases.append(_with_self(_group_exchange("intra a2a", node_groups, intra_bytes, P), keep_intra))
        if transform:
            phases.append(t2(rows_arrived))
        if N > 1:
            phases.append(_with_self(_group_exchange("inter a2a", cross_groups, inter_bytes, P), keep_inter))
        return phases
    # backward: the same routes in reverse, so a -> b carries what b sent a going forward
    if N > 1:
        back = _group_exchange("inter a2a back", cross_groups, lambda a, b: inter_bytes(b, a), P)
        phases.append(_with_self(back, keep_inter))
    if transform:
        phases.append(t2(rows_arrived))
    if G > 1:
        back = _group_exchange("intra a2a back", node_groups, lambda a, b: intra_bytes(b, a), P)
        phases.append(_with_self(back, keep_intra))
    if transform:
        phases.append(t1())
    return phases


def exchange_schedule(
    algo: str, splits: np.ndarray, row_bytes: int, topo: Topology, plan: bool = True, backward: bool = False
) -> list[Phase]:
    """ALGORITHMS[algo]: plan (if `plan`) + forward, or backward (rows return along the same routes, no plan)."""
    splits = np.asarray(splits)
    if algo == "hierarchical":
        return hierarchical_schedule(splits, row_bytes, topo, plan=plan and not backward, backward=backward)
    if backward:
        splits = splits.T
    if algo == "flat":
        return flat_schedule(splits, row_bytes, topo, plan=plan and not backward)
    if algo == "native":
        return native_schedule(splits, row_bytes, topo, plan=plan and not backward)
    raise ValueError(f"no schedule for algorithm {algo!r}; choose from flat, hierarchical, native")


def split_parts(send_splits: np.ndarray, L: int) -> np.ndarray:
    """[P, L]: as collectives.coordinated.split_parts (the first s mod L parts one row longer)."""
    s = np.asarray(send_splits, dtype=np.int64)[:, None]
    return s // L + (np.arange(L)[None, :] < s % L)


def roundtrip_schedule(pair: str, inner: str, splits: np.ndarray, row_bytes: int, topo: Topology) -> list[Phase]:
    """DISPATCH_COMBINE[pair] dispatch + combine over `inner`; splits[r] is r's TP group's (identical) send_splits.

    plain: plan + forward + backward with every rank's full rows. coordinated: TP rank t cuts out
    part t of every chunk (one copy), plan + forward + backward with 1/L of the rows, then an
    all-gather of the returned parts inside the TP group and one copy to restore the row order.
    """
    P, L = topo.world_size, topo.tp
    splits = np.asarray(splits, dtype=np.int64)
    if pair == "plain" or L == 1:
        if pair not in ("plain", "coordinated"):
            raise ValueError(f"unknown dispatch/combine pair {pair!r}")
        return [
            *exchange_schedule(inner, splits, row_bytes, topo),
            *exchange_schedule(inner, splits, row_bytes, topo, backward=True),
        ]
    if pair != "coordinated":
        raise ValueError(f"unknown dispatch/combine pair {pair!r}")
    t = (np.arange(P) % L)[:, None]  # my TP rank
    part = splits // L + (t < splits % L)  # [P, P]: rows r moves to d (split_parts' column t, per rank)
    part_rows = part.sum(axis=1).astype(np.float64)
    full_rows = splits.sum(axis=1).astype(np.float64)
    tp_groups = [topo.tp_ranks(t) for t in range(P // L)]
    return [
        _phase("slice", P, copy_bytes=part_rows * row_bytes, copy_chunks=np.full(P, P)),
        *exchange_schedule(inner, part, row_bytes, topo),
        *exchange_schedule(inner, part, row_bytes, topo, backward=True),
        _with_self(
            _group_exchange("tp allgather", tp_groups, lambda a, b: part_rows[a] * row_bytes, P), part_rows * row_bytes
        ),
        _phase("unslice", P, copy_bytes=full_rows * row_bytes, copy_chunks=np.full(P, L * P)),
    ]


def pair_schedule(topo: Topology, cls: str, nbytes: int) -> tuple[list[Phase], np.ndarray]:
    """Calibration: every rank with a partner in class `cls` exchanges nbytes with it, all pairs at once.

    intra: local index g pairs with g ^ 1 (G even; an odd last rank idles); inter: node n pairs
    with node n ^ 1 at the same local index. Returns ([phase], partner[P], -1 where idle).
    """
    P, G = topo.world_size, topo.ranks_per_node
    partner = np.full(P, -1)
    for r in range(P):
        n, g = divmod(r, G)
        q = n * G + (g ^ 1) if cls == "intra" else (n ^ 1) * G + g
        if 0 <= q < P and topo.node_of(q) == (n if cls == "intra" else n ^ 1) and q != r:
            partner[r] = q
    active = np.flatnonzero(partner >= 0)
    phase = _phase(f"pairs {cls}", P, active, partner[active], np.full(len(active), nbytes), blocking=True)
    return [phase], partner


# ------------------------------------------------------------------------------ counting


def traffic(schedule: list[Phase], topo: Topology) -> np.ndarray:
    """[P, 4] per rank: intra bytes, inter bytes, intra messages, inter messages it sends (nonzero ones),

    the same quantities (and convention) as collectives.comm.Traffic."""
    P = topo.world_size
    out = np.zeros((P, 4))
    inter_mask = _inter_mask(topo)
    for ph in schedule:
        if ph.matrix is not None:
            m = ph.matrix
            out[:, 0] += np.where(inter_mask, 0, m).sum(axis=1)
            out[:, 1] += np.where(inter_mask, m, 0).sum(axis=1)
            out[:, 2] += ((m > 0) & ~inter_mask).sum(axis=1)
            out[:, 3] += ((m > 0) & inter_mask).sum(axis=1)
            continue
        keep = ph.nbytes > 0
        src, dst, nb = ph.src[keep], ph.dst[keep], ph.nbytes[keep]
        inter = (src // topo.ranks_per_node) != (dst // topo.ranks_per_node)
        out[:, 0] += np.bincount(src[~inter], nb[~inter], minlength=P)
        out[:, 1] += np.bincount(src[inter], nb[inter], minlength=P)
        out[:, 2] += np.bincount(src[~inter], minlength=P)
        out[:, 3] += np.bincount(src[inter], minlength=P)
    return out


# ------------------------------------------------------------------------------ timing


@dataclass(frozen=True)
class PhaseLoad:
    """What one phase asks of each rank ([P] arrays): messages and effective bytes per class, copies."""

    msgs: dict  # cls -> [P] messages (max of sent, received)
    xbytes: dict  # cls -> [P] bytes that set the class's time (sharing included)
    copy_bytes: np.ndarray
    copy_chunks: np.ndarray
    coll: bool  # a library collective (else blocking point-to-point)
    self_bytes: np.ndarray  # the library's local copy of each rank's own chunk


def _inter_mask(topo: Topology) -> np.ndarray:
    """[P, P] True where s and d sit on different nodes."""
    node = np.arange(topo.world_size) // topo.ranks_per_node
    return node[:, None] != node[None, :]


def _dense_load(ph: Phase, topo: Topology, nics_per_node: int) -> PhaseLoad:
    """phase_load for a world phase given as a [P, P] byte matrix."""
    P, G = topo.world_size, topo.ranks_per_node
    m, inter = ph.matrix, _inter_mask(topo)
    msgs, xbytes = {}, {}
    for cls, mask in (("intra", ~inter), ("inter", inter)):
        b = np.where(mask, m, 0.0)
        sent, recvd = b.sum(axis=1), b.sum(axis=0)
        msgs[cls] = np.maximum((b > 0).sum(axis=1), (b > 0).sum(axis=0))
        x = np.maximum(sent, recvd)
        if cls == "inter":
            up = sent.reshape(-1, G).sum(axis=1) / nics_per_node
            down = recvd.reshape(-1, G).sum(axis=1) / nics_per_node
            x = np.maximum(x, np.repeat(np.maximum(up, down), G))
        xbytes[cls] = x
    return _load(ph, msgs, xbytes, P)


def _load(ph: Phase, msgs: dict, xbytes: dict, P: int) -> PhaseLoad:
    zeros = np.zeros(P)
    as_array = lambda v: zeros if v is None else np.asarray(v, dtype=np.float64)
    return PhaseLoad(
        msgs, xbytes, as_array(ph.copy_bytes), as_array(ph.copy_chunks), not ph.blocking, as_array(ph.self_bytes)
    )


def phase_load(ph: Phase, topo: Topology, nics_per_node: int) -> PhaseLoad:
    """Messages and effective bytes per rank and class, and copies, of one phase (see the module docstring)."""
    if ph.matrix is not None:
        return _dense_load(ph, topo, nics_per_node)
    P, G = topo.world_size, topo.ranks_per_node
    N = P // G
    counted = np.ones_like(ph.nbytes, dtype=bool) if ph.blocking else ph.nbytes > 0
    src, dst, nb = ph.src[counted], ph.dst[counted], ph.nbytes[counted]
    inter = (src // G) != (dst // G)
    msgs, xbytes = {}, {}
    for cls, mask in (("intra", ~inter), ("inter", inter)):
        s, d, b = src[mask], dst[mask], nb[mask]
        sent, recvd = np.bincount(s, b, minlength=P), np.bincount(d, b, minlength=P)
        msgs[cls] = np.maximum(np.bincount(s, minlength=P), np.bincount(d, minlength=P))
        x = np.maximum(sent, recvd)
        if cls == "inter":
            up = np.bincount(s // G, b, minlength=N) / nics_per_node
            down = np.bincount(d // G, b, minlength=N) / nics_per_node
            x = np.maximum(x, np.repeat(np.maximum(up, down), G))
        xbytes[cls] = x
    return _load(ph, msgs, xbytes, P)


def rank_times(load: PhaseLoad, profile: Profile) -> np.ndarray:
    """[P] µs each rank spends in the phase (see the module docstring)."""
    comm = []
    for cls in ("intra", "inter"):
        link, m = profile.link(cls, coll=load.coll), load.msgs[cls]
        t = link.alpha_us + np.maximum(m - 1, 0) * link.gap_us + load.xbytes[cls] / (link.bw_gbs * 1e3)
        comm.append(np.where(m > 0, t, 0.0))
    c = profile.copy
    copy = np.where(
        load.copy_bytes > 0,
        c.alpha_us + np.maximum(load.copy_chunks - 1, 0) * c.gap_us + load.copy_bytes / (c.bw_gbs * 1e3),
        0.0,
    )
    own = profile.self_copy if load.coll else c  # the library's local copy, or torch's (flat's step 0)
    copy = copy + load.self_bytes / (own.bw_gbs * 1e3)
    both = np.maximum(comm[0], comm[1]) + (1 - profile.overlap) * np.minimum(comm[0], comm[1])
    return both + copy


def predict(schedule: list[Phase], topo: Topology, profile: Profile) -> float:
    """Predicted µs of a schedule: the sum over phases of the busiest rank's time."""
    return float(sum(phase_times(schedule, topo, profile)))


def phase_times(schedule: list[Phase], topo: Topology, profile: Profile) -> list[float]:
    return [float(rank_times(phase_load(ph, topo, profile.nics_per_node), profile).max()) for ph in schedule]


# ------------------------------------------------------------------------------ fitting


@dataclass(frozen=True)
class Fit:
    """An alpha-beta fit t = alpha + x / bw (+ gap per further message) and its relative errors."""

    link: Link
    median_abs_err: float  # median |pred - meas| / meas over the points
    max_abs_err: float
    points: int


def fit_link(xbytes, t_us, rounds: int = 3) -> Fit:
    """Fit t = alpha + x / bw: alpha from the latency-bound sizes, bw from the large half, each a median.

    xbytes[i]: effective bytes of point i (sharing included); t_us[i]: its measured time (µs).
    bw is the median over the sizes at or above the median size of x / (t - alpha); alpha is the
    median of t - x / bw over the sizes whose byte term is under half their time (else the
    smallest size); the two are refined in turn a few `rounds`. Medians, not least squares, so a
    shaper's initial burst or one noisy point on a shared host does not tilt the line. Exact on
    exact data. Raises ValueError with fewer than two distinct sizes.
    """
    x = np.asarray(xbytes, dtype=np.float64)
    t = np.asarray(t_us, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("a fit needs at least two distinct sizes")
    large = x >= np.median(x)
    if large.sum() < 2:
        large = x >= np.sort(x)[-2]
    alpha = 0.0
    for _ in range(rounds):
        spare = t[large] - alpha
        ok = spare > 0
        per_byte = float(np.median(spare[ok] / x[large][ok])) if ok.any() else 1e-12  # µs per byte
        bound = per_byte * x < 0.5 * t
        residual = t - per_byte * x
        alpha = float(max(np.median(residual[bound]) if bound.any() else residual[np.argmin(x)], 0.0))
    link = Link(alpha_us=alpha, bw_gbs=1e-3 / per_byte)
    err = np.abs(alpha + per_byte * x - t) / t
    return Fit(link, float(np.median(err)), float(err.max()), len(x))


def effective_bytes(schedule: list[Phase], topo: Topology, cls: str, nics_per_node: int = 1) -> float:
    """The bytes that set class `cls`'s time in a one-phase schedule (busiest rank, sharing included)."""
    (ph,) = schedule
    return float(phase_load(ph, topo, nics_per_node).xbytes[cls].max())


# ------------------------------------------------------------------------------ workloads


def uniform_splits(P: int, nbytes: int, row_bytes: int = 1) -> np.ndarray:
    """[P, P] rows: each rank sends nbytes // row_bytes rows spread evenly over the P ranks (self included)."""
    rows = max(nbytes // row_bytes, 0)
    base = np.full((P, P), rows // P, dtype=np.int64)
    base[:, : rows % P] += 1
    return base


def busbw_gbs(nbytes: float, time_us: float, P: int) -> float:
    """nccl-tests bus bandwidth of an all-to-all: nbytes / time x (P - 1) / P, GB/s."""
    return nbytes / (time_us * 1e3) * (P - 1) / P if time_us > 0 and P > 1 else 0.0
