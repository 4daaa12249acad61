"""Cost model: schedules equal what the algorithms send, the fit recovers known links, the timing rules hold.

P = world size, G = ranks per node, N = nodes, L = TP degree, S = bytes a rank sends.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, mpirun

from moebench.bench.topo import costmodel
from moebench.bench.topo.calibration import pair_schedule
from moebench.bench.topo.costmodel import Link, Profile
from moebench.bench.topo.profiles import BUILTIN, load_profile
from moebench.bench.topo.projection import crossovers, exchange_time
from moebench.bench.units import busbw_gbs
from moebench.collectives.schedule import phase, traffic
from moebench.collectives.topology import Topology

PROFILE = Profile("test", Link(10, 100), Link(20, 10, gap_us=1.0), Link(1, 1000), ranks_per_node=2, nics_per_node=1)


# ------------------------------------------------------------------ schedules vs real traffic


@pytest.mark.parametrize(("backend", "G", "L"), [("mpi", 2, 2), ("torch", 1, 4)])
def test_schedules_match_counted_traffic(mpiexec_available, backend, G, L):
    """Every exchange and dispatch/combine pair, skewed splits with empty chunks: model == comm.traffic per rank."""
    args = ["-m", "moebench", "calibrate", "--check-schedules", "--backend", backend, "--ranks-per-node", str(G)]
    result = mpirun(4, [*args, "--tp", str(L)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"schedules checked P=4 G={G} L={L} {backend}: 14 cases, 0 mismatches" in result.stdout  # 3 + 3 x 3 + 2


def test_message_counts_follow_the_structure():
    """flat: P - 1 messages per rank; hierarchical: (G - 1) + (N - 1); both move every off-rank byte."""
    P, G = 16, 4
    topo = Topology(P, G)
    splits = costmodel.uniform_splits(P, P * 10)
    flat = traffic(costmodel.exchange_schedule("flat", splits, 1, topo, plan=False), topo)
    hier = traffic(costmodel.exchange_schedule("hierarchical", splits, 1, topo, plan=False), topo)
    assert (flat[:, 2] + flat[:, 3] == P - 1).all()
    assert (hier[:, 2] == G - 1).all() and (hier[:, 3] == P // G - 1).all()
    assert (flat[:, 1] == hier[:, 1]).all()  # the same inter-node bytes, in fewer, larger messages
    assert (hier[:, 0] == 10 * (G - 1) * (P // G)).all()  # intra-node carries N x more (the forwarding)


def test_coordinated_sends_one_lth_of_the_exchange():
    P, G, L = 8, 4, 4
    topo = Topology(P, G, L)
    splits = costmodel.uniform_splits(P, P * 40)
    data = lambda schedule: [ph for ph in schedule if ph.name == "alltoallv"]  # no counts, no TP all-gather
    plain = traffic(data(costmodel.roundtrip_schedule("plain", "native", splits, 1, topo)), topo)
    coord = traffic(data(costmodel.roundtrip_schedule("coordinated", "native", splits, 1, topo)), topo)
    assert coord[:, :2].sum() * L == plain[:, :2].sum()


# ------------------------------------------------------------------ fit


@pytest.mark.parametrize(("alpha", "bw"), [(25.0, 12.5), (3.0, 370.0), (2000.0, 0.125)])
def test_fit_recovers_known_alpha_beta(alpha, bw):
    x = np.array([2.0**k for k in range(10, 24, 2)])
    rng = np.random.default_rng(0)
    t = (alpha + x / (bw * 1e3)) * rng.uniform(0.97, 1.03, len(x))  # 3% measurement noise
    fit = costmodel.fit_link(x, t)
    assert fit.link.alpha_us == pytest.approx(alpha, rel=0.1)
    assert fit.link.bw_gbs == pytest.approx(bw, rel=0.06)
    assert fit.median_abs_err < 0.05


def test_fit_through_uplink_sharing_recovers_nic_bandwidth():
    """Inter-node pairs of a G=2 node share one NIC: effective bytes are 2S, so the fit returns the NIC rate."""
    topo = Topology(4, 2)
    nic = Link(alpha_us=50.0, bw_gbs=0.125)
    sizes = [1 << k for k in range(10, 23, 2)]
    xs = [costmodel.effective_bytes(pair_schedule(topo, "inter", s)[0], topo, "inter") for s in sizes]
    assert xs == [2.0 * s for s in sizes]
    fit = costmodel.fit_link(xs, [nic.time_us(x) for x in xs])
    assert fit.link.bw_gbs == pytest.approx(0.125, rel=1e-6)
    assert fit.link.alpha_us == pytest.approx(50.0, rel=1e-6)


def test_fit_needs_two_sizes():
    with pytest.raises(ValueError, match="two distinct sizes"):
        costmodel.fit_link([1024, 1024], [1.0, 2.0])


# ------------------------------------------------------------------ timing rules


def test_uplink_sharing_and_nics():
    """Two ranks of a node sending inter-node at once take twice as long on one NIC as on one NIC each."""
    topo = Topology(4, 2)
    sched = pair_schedule(topo, "inter", 1 << 20)[0]
    one_nic = costmodel.predict(sched, topo, PROFILE)
    two_nics = costmodel.predict(sched, topo, Profile(**{**PROFILE.__dict__, "nics_per_node": 2}))
    assert one_nic - PROFILE.inter.alpha_us == pytest.approx(2 * (two_nics - PROFILE.inter.alpha_us))


def test_skew_busiest_rank_decides():
    """The same total bytes, all bound for one rank, take longer than spread evenly."""
    topo = Topology(4, 2)
    even = np.full((4, 4), 250_000)
    hot = np.zeros((4, 4), dtype=int)
    hot[:, 3] = 1_000_000
    t_even = costmodel.predict(costmodel.exchange_schedule("native", even, 4, topo), topo, PROFILE)
    t_hot = costmodel.predict(costmodel.exchange_schedule("native", hot, 4, topo), topo, PROFILE)
    assert t_hot > 1.8 * t_even  # node 1 receives 8 MB inter-node instead of 4 MB


def test_layout_copies_and_gap_enter_hierarchical():
    topo = Topology(8, 2)
    splits = costmodel.uniform_splits(8, 1 << 20)
    names = [ph.name for ph in costmodel.exchange_schedule("hierarchical", splits, 1, topo)]
    assert names == ["counts intra", "counts inter", "transform 1", "intra a2a", "transform 2", "inter a2a"]
    slow_copy = Profile(**{**PROFILE.__dict__, "copy": Link(1, 1.0)})
    base = costmodel.predict(costmodel.exchange_schedule("hierarchical", splits, 1, topo), topo, PROFILE)
    assert costmodel.predict(costmodel.exchange_schedule("hierarchical", splits, 1, topo), topo, slow_copy) > base
    no_gap = Profile(**{**PROFILE.__dict__, "inter": Link(20, 10)})
    native = costmodel.exchange_schedule("native", splits, 1, topo)
    assert costmodel.predict(native, topo, PROFILE) > costmodel.predict(native, topo, no_gap)


def test_library_self_copy_prices_own_chunks_of_library_phases_only():
    """native's own chunk is copied by the library (self_coll link); flat's step 0 by torch (copy link)."""
    topo = Topology(2, 1)
    splits = np.array([[1 << 20, 0], [0, 1 << 20]])  # every row stays on its rank
    slow_self = Profile(**{**PROFILE.__dict__, "self_coll": Link(5, 0.5)})
    for algo, changes in (("native", True), ("flat", False)):
        sched = costmodel.exchange_schedule(algo, splits, 1, topo, plan=False)
        base, slow = costmodel.predict(sched, topo, PROFILE), costmodel.predict(sched, topo, slow_self)
        if changes:  # bandwidth only: the call's latency is the collective's alpha
            assert slow - base == pytest.approx((1 << 20) / 0.5e3 - (1 << 20) / 1000e3)
        else:
            assert slow == base == pytest.approx((1 << 20) / 1000e3 + PROFILE.inter.alpha_us)  # + empty step 1
    assert PROFILE.self_copy == PROFILE.copy and slow_self.self_copy == Link(5, 0.5)


def test_overlap_sums_or_overlaps_link_classes():
    topo = Topology(4, 2)
    ring = [phase("ring", 4, np.arange(4), (np.arange(4) + 1) % 4, np.full(4, 1e6), blocking=True)]
    both = costmodel.predict(ring, topo, PROFILE)
    serial = costmodel.predict(ring, topo, Profile(**{**PROFILE.__dict__, "overlap": 0.0}))
    assert serial == pytest.approx(both + PROFILE.intra.time_us(1e6))


# ------------------------------------------------------------------ profiles and projection


def test_profile_json_round_trip(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(BUILTIN["h100-8gpu"].to_dict()))
    assert load_profile(str(path)) == BUILTIN["h100-8gpu"]
    path.write_text(json.dumps({"meta": {"benchmark": "calibrate", "profile": PROFILE.to_dict()}, "rows": []}))
    assert load_profile(str(path)) == PROFILE
    path.write_text('{"name": "x"}')
    with pytest.raises(ValueError, match="not a link profile"):
        load_profile(str(path))


def test_projection_matches_nccl_plateau_and_names_a_crossover():
    h100 = BUILTIN["h100-8gpu"]
    t = exchange_time(h100, "native", 1, 1 << 28)
    assert 330 <= busbw_gbs(1 << 28, t, 8) <= 372
    times = lambda N: {f"{a}_us": exchange_time(h100, a, N, 1 << 24) for a in ("hierarchical", "native")}
    rows = [{"nodes": N, "gpus": 8 * N, "size": 1 << 24, **times(N)} for N in (1, 2, 4, 8, 16, 32, 64)]
    assert crossovers(rows, "hierarchical", "native")[0]["from_gpus"] == 256


def test_project_command_writes_rows_and_rejects_unknown_profile(tmp_path):
    out = tmp_path / "p.json"
    cmd = [sys.executable, "-m", "moebench", "project", "--nodes", "1,2", "--sizes", "1M", "--json", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["kind"] for r in rows} >= {"exchange", "pairs", "crossover", "field"}
    assert all(r["native_us"] > 0 for r in rows if r["kind"] == "exchange")
    bad = subprocess.run([*cmd[:4], "--profile", "tpu-v9"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "moebench: error: unknown profile 'tpu-v9': use a built-in (h100-8gpu, h200-8gpu, a100-8gpu) or a calibrated "
        "JSON file"
    ]


def test_report_renders_a_stored_projection_and_its_plots(tmp_path):
    out = tmp_path / "project-t.json"
    cmd = [sys.executable, "-m", "moebench", "project", "--profile", "h100-8gpu", "--nodes", "1,2,4", "--sizes", "1M",
           "--tp", "2,4", "--json", str(out)]  # fmt: skip
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120).returncode == 0
    result = subprocess.run([sys.executable, "-m", "moebench", "report", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "projected all-to-all, h100-8gpu" in result.stdout and "TP4 saving" in result.stdout
    assert all(f" {pair} " in result.stdout for pair in ("coordinated", "fp8", "dedup", "fp8-dedup", "ll"))
    assert "dedup under routing skew" in result.stdout
    for suffix in ("time-vs-gpus", "busbw", "coordinated"):
        assert (tmp_path / f"project-h100-8gpu-t-{suffix}.png").stat().st_size > 1000


def test_pipelined_layer_model_bounds_and_edges():
    """The overlap modes' layer model: one chunk is the sequential layer; with nothing to compute the link's calls
    add up, with nothing to send the chunks' compute does; otherwise the layer lies between max(comm, compute) and
    their sum; and one step worked by hand."""
    from moebench.bench.layer.overlap.pipeline import predicted_layer_us

    assert predicted_layer_us([1, 2, 3], [5]) == 11
    assert predicted_layer_us([1, 2, 2, 3, 3], [0, 0]) == 11
    assert predicted_layer_us([0, 0, 0, 0, 0, 0, 0], [2, 2, 2]) == 6
    # C = 2, d = b = 1, x = 2: d0 | x0 beside d1 | b0 beside x1 | b1 -> 1 + 2 + 2 + 1
    assert predicted_layer_us([0, 1, 1, 1, 1], [2, 2]) == 6
    # a lead (the shared experts) hides under chunk 0's dispatch, and only the part longer than it shows
    assert predicted_layer_us([0, 1, 1, 1, 1], [2, 2], lead_us=0.5) == 6
    assert predicted_layer_us([0, 1, 1, 1, 1], [2, 2], lead_us=3) == 8
    # a tail (the shared experts' second half) hides under the last combine: 1 + 2 + 2 + max(1, tail)
    assert predicted_layer_us([0, 1, 1, 1, 1], [2, 2], tail_us=0.5) == 6
    assert predicted_layer_us([0, 1, 1, 1, 1], [2, 2], lead_us=1, tail_us=1) == 6
    assert predicted_layer_us([0, 1, 1, 1, 1], [2, 2], lead_us=1, tail_us=3) == 8
    # one chunk: the tail hides under the only combine, the lead under the only dispatch
    assert predicted_layer_us([1, 2, 3], [5], lead_us=2, tail_us=3) == 11
    rng = np.random.default_rng(3)
    for C in (2, 3, 8):
        phases, compute = rng.uniform(0, 5, 1 + 2 * C).tolist(), rng.uniform(0, 5, C).tolist()
        t = predicted_layer_us(phases, compute)
        assert max(sum(phases), phases[0] + phases[1] + sum(compute)) <= t + 1e-9
        assert t <= sum(phases) + sum(compute) + 1e-9


def test_project_predicts_every_overlap_mode(tmp_path):
    """`project` prices each overlap mode from its own schedule: C dispatches and combines cost at least the
    sequential round trip, the pipelined layer at least max(comm, compute) and at most their sum plus the extra
    calls, and the stored run renders its overlap table."""
    out = tmp_path / "project-o.json"
    cmd = [sys.executable, "-m", "moebench", "project", "--profile", "h100-8gpu", "--nodes", "1,4", "--sizes",
           "1M,64M", "--overlap", "chunks:2,chunks:4,dual", "--overlap-compute", "2", "--no-field"]  # fmt: skip
    cmd += ["--json", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [r for r in json.loads(out.read_text())["rows"] if r["kind"] == "overlap"]
    assert len(rows) == 4
    for r in rows:
        assert r["compute_us"] == pytest.approx(2 * r["comm_us"])
        for mode in ("chunks:2", "chunks:4", "dual"):
            comm, layer = r[f"{mode}_comm_us"], r[f"{mode}_layer_us"]
            assert comm >= r["comm_us"] - 1e-6
            assert max(comm, r["compute_us"]) - 1e-6 <= layer <= comm + r["compute_us"] + 1e-6
            eff = (r["comm_us"] + r["compute_us"] - layer) / r["comm_us"]
            assert r[f"{mode}_efficiency"] == pytest.approx(eff)
        assert r["dual_layer_us"] == r["chunks:2_layer_us"]  # dual's schedule is the two-chunk pipeline's
    big = next(r for r in rows if r["nodes"] == 4 and r["size"] == 64 << 20)
    assert big["chunks:4_efficiency"] > big["chunks:2_efficiency"] > 0.3  # bandwidth-bound: more chunks hide more
    shown = subprocess.run([sys.executable, "-m", "moebench", "report", "--no-plots", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0 and "overlap, h100-8gpu" in shown.stdout and "chunks:4 eff" in shown.stdout


def test_every_committed_result_renders():
    """`make bench` ends in `moebench report`: every stored run under results/ must render from its JSON."""
    result = subprocess.run([sys.executable, "-m", "moebench", "report", "--no-plots", "results"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_committed_result_plots(tmp_path):
    """`make bench` ends in `moebench report` with plots: every stored run under results/ must plot too (from
    copies, so the committed PNGs stay as they are), older runs included (a phase they did not time draws as 0)."""
    for machine in (REPO / "results").iterdir():
        for path in machine.glob("*.json"):
            (tmp_path / machine.name).mkdir(exist_ok=True)
            shutil.copy(path, tmp_path / machine.name / path.name)
    result = subprocess.run([sys.executable, "-m", "moebench", "report", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(tmp_path.rglob("moe-*-phases.png"))) >= len(list(tmp_path.rglob("moe-*.json")))


def test_calibrate_on_one_host_writes_predicted_and_measured(mpiexec_available, tmp_path):
    out, prof = tmp_path / "cal.json", tmp_path / "profile.json"
    args = ["-m", "moebench", "calibrate", "--ranks-per-node", "1", "-b", "4K", "-e", "64K", "-n", "3", "--rounds", "1"]
    args += ["--validate", "--sizes", "4K,32K", "--algos", "flat,hierarchical,native", "--pairs", "none"]
    args += ["--json", str(out)]
    result = mpirun(2, [*args, "--profile-out", str(prof)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "median |error|" in result.stdout
    data = json.loads(out.read_text())
    rows = [r for r in data["rows"] if r["kind"] == "validate"]
    assert {r["algo"] for r in rows} == {"flat", "hierarchical", "native"}
    assert all(r["predicted_us"] > 0 and r["measured_us"] > 0 and r["wrong"] == 0 for r in rows)
    assert all(r["schedule_matches"] for r in rows)
    profile = load_profile(str(prof))
    assert profile.inter.bw_gbs > 0 and profile.self_coll.bw_gbs > 0
    assert {r["class"] for r in data["rows"] if r["kind"] == "p2p"} >= {"inter", "inter-coll", "copy", "self-coll"}
