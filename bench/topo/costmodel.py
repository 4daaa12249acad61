"""Cost model: an algorithm's message schedule (collectives/schedule.py) priced on a link profile.

P = world size, G = ranks per node, N = P / G nodes, L = TP degree, S = bytes a rank sends.
Each algorithm and dispatch/combine pair defines its own schedule in its own module; the cost model
only prices phases. Time of a phase = its busiest rank (routing skew shows up here). For rank r and
link class c:

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

from moebench.collectives import ALGORITHMS, DISPATCH_COMBINE
from moebench.collectives.schedule import Phase, inter_mask
from moebench.collectives.topology import Topology

CLASSES = ("intra", "inter", "copy")


# ------------------------------------------------------------------------------ profiles


@dataclass(frozen=True)
class Link:
    """One link class: alpha_us (µs, first message), bw_gbs (GB/s), gap_us (µs per further message at once)."""

    alpha_us: float
    bw_gbs: float
    gap_us: float = 0.0

    def time_us(self, nbytes, msgs=1):
        """alpha + (msgs - 1) * gap + nbytes / bw, in µs (numbers or arrays of them)."""
        return self.alpha_us + np.maximum(np.asarray(msgs) - 1, 0) * self.gap_us + self.transfer_us(nbytes)

    def transfer_us(self, nbytes):
        """nbytes / bw, in µs: the bandwidth term alone."""
        return np.asarray(nbytes) / (self.bw_gbs * 1e3)


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


def exchange_schedule(algo: str, splits, row_bytes: int, topo: Topology, plan: bool = True, backward: bool = False):
    """ALGORITHMS[algo]'s own schedule: plan (if `plan`) + forward, or backward (no plan)."""
    return ALGORITHMS[algo].schedule(np.asarray(splits), row_bytes, topo, plan, backward)


def roundtrip_schedule(pair: str, inner: str, splits, row_bytes: int, topo: Topology,
                       back_bytes: int | None = None) -> list[Phase]:  # fmt: skip
    """DISPATCH_COMBINE[pair]'s own schedule over `inner`: dispatch (rows of row_bytes) + combine (rows of
    back_bytes, default row_bytes) (splits[r]: r's send_splits)."""
    splits = np.asarray(splits, dtype=np.int64)
    return DISPATCH_COMBINE[pair].schedule(ALGORITHMS[inner], splits, row_bytes, topo, back_bytes)


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


def _dense_load(ph: Phase, topo: Topology, nics_per_node: int) -> PhaseLoad:
    """phase_load for a world phase given as a [P, P] byte matrix."""
    P, G = topo.world_size, topo.ranks_per_node
    m, inter = ph.matrix, inter_mask(topo)
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
        m = load.msgs[cls]
        comm.append(np.where(m > 0, profile.link(cls, coll=load.coll).time_us(load.xbytes[cls], m), 0.0))
    copy = np.where(load.copy_bytes > 0, profile.copy.time_us(load.copy_bytes, load.copy_chunks), 0.0)
    own = profile.self_copy if load.coll else profile.copy  # the library's local copy, or torch's (flat's step 0)
    copy = copy + own.transfer_us(load.self_bytes)
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
