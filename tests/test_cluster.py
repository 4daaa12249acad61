"""Emulated cluster (root only; CI runs as root): 2 nodes x 2 ranks over namespaces, a shaped uplink, cleanup.

P = 4 ranks, G = 2 ranks per node, N = 2 nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, mpi_segments

from moebench.bench import cli
from moebench.bench.topo import cluster

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
    reason="the emulated cluster needs root and iproute2 (CI runs as root)",
)
CLUSTER = [sys.executable, "-m", "moebench", "cluster", "--nodes", "2", "--ranks-per-node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# A benchmark that runs far longer than any test waits: something to kill.
# --budget 0: every row runs its 100000 iterations (the default 1 s budget per row would end the run within seconds
# of its header, before the test can signal it)
LONG_RUN = [
    "collectives",
    "-b",
    "1M",
    "-e",
    "1M",
    "-n",
    "100000",
    "-w",
    "0",
    "-c",
    "0",
    "--algos",
    "native",
    "--budget",
    "0",
]


def run_cluster(args: list[str], timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([*CLUSTER, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def leftovers(rid: str) -> list[str]:
    """Namespaces, links and /etc/netns entries run `rid` still owns."""
    names = cluster._list_netns() + cluster._list_links()
    names += os.listdir(cluster.NETNS_ETC) if cluster.NETNS_ETC.is_dir() else []
    return [n for n in names if cluster._run_of(n) == rid]


class LongRun:
    """A cluster run of LONG_RUN in the background, its output collected line by line."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [*CLUSTER, "--timeout", "120", *LONG_RUN],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # a Ctrl-C reaches it however the tests were started: a shell's background job (`make test &`) ignores
            # SIGINT, the child inherits that, and Python then never raises KeyboardInterrupt
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.rid = cluster.run_id(self.proc.pid)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_measuring(self, timeout: float = 90) -> list[int]:
        """Wait until the ranks have joined and the benchmark printed its header (timing has begun); rank pids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output
            if "moebench collectives" in self.output:
                pids = [p for ns in cluster._list_netns() if cluster._run_of(ns) == self.rid
                        for p in cluster.netns_pids(ns) if b"moebench" in _cmdline(p)]  # fmt: skip
                assert len(pids) == 4, (pids, self.output)
                return pids
            time.sleep(0.3)
        self.proc.kill()
        raise AssertionError(f"the benchmark did not start: {self.output}")

    def finish(self, timeout: float = 60) -> str:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.output


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    alive = lambda: [p for p in pids if os.path.exists(f"/proc/{p}") and b"moebench" in _cmdline(p)]
    while time.monotonic() < deadline and alive():
        time.sleep(0.2)
    assert not alive()


# ------------------------------------------------------------------------------ across the cluster


@needs_root
def test_every_algorithm_correct_and_shaped_link_slower(tmp_path):
    """mpi over TCP across 2 namespaces: every exchange and pair checked; the 200 Mbit uplink is slower."""
    out = tmp_path / "cal.json"
    args = ["--inter-bw", "200mbit", "--timeout", "140", "calibrate", "--tp", "2", "-b", "64K", "-e", "1M"]
    args += ["-f", "4", "-n", "3", "--rounds", "1", "--validate", "--sizes", "64K", "--json", str(out)]
    result = run_cluster(args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EMULATED cluster: 2 nodes x 2 ranks" in result.stdout and "EMULATED cluster: EMULATED" not in result.stdout
    data = json.loads(out.read_text())
    assert len(data["meta"]["hosts"]) == 2 and data["meta"]["G"] == 2  # nodes found from per-namespace hostnames
    checked = [r for r in data["rows"] if r["kind"] == "validate"]
    assert {r["algo"] for r in checked} == {
        "flat",
        "hierarchical",
        "native",
        *(
            f"{pair}:{inner}"
            for pair in ("plain", "coordinated", "fp8", "dedup", "fp8-dedup")
            for inner in ("flat", "hierarchical", "native")
        ),
        "ll:native",  # ll and allgather run over the library's own exchange only
        "allgather:native",
    }
    assert all(r["wrong"] == 0 and r["schedule_matches"] for r in checked)
    assert all(r["wire_inter_bytes"] > 0 for r in checked)
    pairs = {(r["class"], r["size"]): r["time_us"] for r in data["rows"] if r["kind"] == "p2p"}
    # 1 MiB both ways over a 25 MB/s uplink shared by 2 ranks: ~84 ms; over the namespace's loopback: ~2-10 ms
    assert pairs[("inter", 1 << 20)] > 3 * pairs[("intra", 1 << 20)]
    assert data["meta"]["profile"]["inter"]["bw_gbs"] < 0.04  # 200 Mbit/s = 0.025 GB/s
    assert not leftovers(data["meta"]["emulated_cluster_id"])


@needs_root
def test_moe_layer_runs_unchanged_across_the_cluster(tmp_path):
    """The full MoE forward (gate, dispatch, experts, combine) across 2 namespaces: every row checked."""
    out = tmp_path / "moe.json"
    args = ["--timeout", "140", "moe", "--model", "mixtral-8x7b-tiny", "--batch", "8", "--tp", "2", "-n", "1"]
    result = run_cluster([*args, "-w", "0", "--algos", "flat,hierarchical,coordinated", "--json", str(out)])
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["emulated_cluster"].startswith("EMULATED cluster: 2 nodes x 2 ranks")
    checked = [r for r in data["rows"] if r["correct"] is not None]
    assert {r["algo"] for r in checked} >= {"flat", "hierarchical", "coordinated:flat"}
    assert all(r["correct"] for r in checked)


# ------------------------------------------------------------------------------ cleanup


@needs_root
def test_killed_rank_ends_the_run_and_cleans_up():
    run = LongRun()
    pids = run.wait_measuring()
    os.kill(pids[-1], signal.SIGKILL)  # one rank dies mid-all-to-all; the other three are blocked in it
    output = run.finish()
    assert run.proc.returncode != 0, output
    assert not leftovers(run.rid), output
    assert_gone(pids)


@needs_root
def test_ctrl_c_stops_every_rank_and_cleans_up():
    run = LongRun()
    pids = run.wait_measuring()
    run.proc.send_signal(signal.SIGINT)
    output = run.finish()
    assert run.proc.returncode == 130, output
    assert "cluster: interrupted; stopping every rank" in output
    assert not leftovers(run.rid), output
    assert_gone(pids)


@needs_root
def test_run_after_a_killed_run_starts_clean_with_gloo(tmp_path):
    """SIGKILL the cluster process itself: mpiexec follows it (PDEATHSIG); the next run removes what is left.

    That next run is the torch backend: gloo over TCP (GLOO_SOCKET_IFNAME=eth0) across the namespaces,
    every algorithm checked."""
    run = LongRun()
    pids = run.wait_measuring()
    run.proc.kill()
    run.finish(timeout=30)
    assert leftovers(run.rid)  # nothing could clean up after SIGKILL
    out = tmp_path / "coll.json"
    args = ["--timeout", "140", "collectives", "--backend", "torch", "-b", "16K", "-e", "16K", "-n", "2", "-w", "1"]
    result = run_cluster([*args, "--tp", "2", "--json", str(out)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"removed what earlier killed runs left behind ({cluster.PREFIX}{run.rid})" in result.stdout
    assert not leftovers(run.rid)
    assert_gone(pids)
    data = json.loads(out.read_text())
    assert data["meta"]["backend"].startswith("torch") and len(data["meta"]["hosts"]) == 2
    assert all(r["wrong"] == 0 for r in data["rows"] if r["algo"] not in ("host-copy", "floor"))  # unchecked rows
    assert {r["algo"] for r in data["rows"]} >= {"flat", "hierarchical", "native", "coordinated:hierarchical"}


# ------------------------------------------------------------------------------ refusals


@needs_root
def test_mpi_that_bypasses_the_links_is_refused_in_one_line():
    """Left to its defaults, MPICH/UCX uses shared memory between namespaces: the probe sees no bytes on the
    shaped links and stops the mpi backend with one line (exit 2), the cluster removed; gloo is unaffected."""
    args = ["--mpi-transport", "library-default", "--timeout", "60", "collectives", "-b", "4K", "-e", "4K", "-n", "1"]
    proc = subprocess.Popen([*CLUSTER, *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("moebench: error: MPICH") and "does not use TCP between the namespaces" in lines[0]
    assert "--backend torch" in lines[0]
    assert "moebench collectives" not in out  # the benchmark never started
    assert not leftovers(cluster.run_id(proc.pid))


@needs_root
def test_mpi_that_cannot_start_across_namespaces_says_so(monkeypatch):
    """An MPI with no transport between the namespaces (UCX limited to `self`) fails the probe: one clear line."""
    monkeypatch.setattr(cluster, "PROBE_TIMEOUT_S", 30.0)
    segments = mpi_segments()
    layout = cluster.Layout(cluster.run_id(), 2)
    cluster.create(layout, None, "tbf")
    try:
        env = {**cluster.rank_env("probe test", 0.0, layout.rid), "UCX_TLS": "self"}
        with pytest.raises(cluster.ClusterError) as err:
            cluster.probe_mpi(layout, 1, env, "torch")
    finally:
        cluster.destroy(layout.rid)
    message = str(err.value)
    assert "\n" not in message and "it cannot use TCP between them" in message and message.startswith("MPICH")
    assert not leftovers(layout.rid)
    assert not mpi_segments() - segments  # ranks stuck in MPI_Init made files no one released: the probe removes them


def test_without_root_one_clear_line(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    assert cli.main(["cluster", "collectives"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["moebench: error: the emulated cluster needs root (network namespaces, veth, tc); run it as root"]


def test_without_iproute2_one_clear_line(monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool in ("ip", "tc") else f"/usr/bin/{tool}")
    assert cli.main(["cluster", "collectives"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs ip, tc (iproute2" in err[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--inter-bw", "fast", "collectives"], "not a rate: 'fast'"),
        (["--inter-latency", "3 parsecs", "collectives"], "not a latency"),
        (["--nodes", "0", "collectives"], "need --nodes >= 1"),
        ([], "name the benchmark to run"),
        (["cluster"], "cannot run a cluster inside a cluster"),
    ],
)
def test_bad_cluster_arguments(capsys, args, expected):
    assert cli.main(["cluster", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_probe_shrinks_on_slow_uplinks():
    """1 MiB per rank at 1 Gbit/s; on a 1 Mbit/s uplink shared by 2 ranks what it carries in ~2 s; never < 4 KiB."""
    assert cluster.probe_bytes(cluster.parse_rate("1gbit"), 2) == 1 << 20
    assert cluster.probe_bytes(None, 2) == 1 << 20
    assert cluster.probe_bytes(cluster.parse_rate("1mbit"), 2) == 125_000
    assert cluster.probe_bytes(cluster.parse_rate("8kbit"), 4) == 4096


def test_rates_and_latencies_parse():
    assert cluster.parse_rate("2gbit") == 2_000_000_000
    assert cluster.parse_rate("100mbps") == 800_000_000
    assert cluster.parse_latency("20us") == 20.0
    assert cluster.parse_latency("1.5ms") == 1500.0
    assert cluster.run_id(int("zz", 36)) == "zz"
