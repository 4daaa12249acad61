"""Emulated multi-node cluster on one host: network namespaces on a bridge, shaped node uplinks.

N = nodes, G = ranks per node, P = N * G ranks.

    moebench cluster --nodes 2 --ranks-per-node 2 --inter-bw 1gbit [--inter-latency 20us] \\
        collectives -b 64K -e 4M --tp 2

builds N virtual nodes and runs `python -m moebench <benchmark args>` across them under the venv's
mpiexec, node i's G ranks inside namespace i (bench/commands/cluster.py is the subcommand):

    node i = namespace <prefix>-n<i>, hostname <prefix>-node<i>, eth0 = 10.77.x.y/16
             eth0 --veth-- <prefix>v<i> --bridge <prefix>b-- the other nodes
    intra-node traffic: TCP on the namespace's own address (the namespace's loopback, unshaped)
    inter-node traffic: TCP across the bridge; each node's uplink shaped to --inter-bw in each
             direction (tbf or htb on eth0 egress and on the host-side veth egress)

The kernel here has no netem, so --inter-latency is added in user space by the communicator
(MOEBENCH_INTER_LATENCY_US), per inter-node message, and printed in every report header.

MPI: the pip MPICH (UCX) would use shared memory between namespaces, so ranks run with
MPIR_CVAR_NOLOCAL=1 UCX_TLS=tcp,self, and each node has its own UTS hostname so the communicator
groups ranks by node from hostnames. Before the benchmark a probe sends 1 MiB (less on uplinks
slower than ~8 Mbit/s) from every rank to the next node and reads the links' byte counters: an
MPI that cannot start across the namespaces, or (for the mpi backend) whose bytes do not cross the
shaped links, stops the run with one line saying so. torch backend: gloo over TCP with
GLOO_SOCKET_IFNAME=eth0; each namespace's /etc/hosts (ip netns exec bind-mounts
/etc/netns/<ns>/hosts) names every node.

Cleanup: namespaces, links, /etc/netns entries and every process inside the namespaces are removed
on exit, on Ctrl-C / SIGTERM / SIGHUP, after a failed rank and after --timeout. mpiexec gets
SIGTERM if this process dies (PR_SET_PDEATHSIG), and every run first removes what earlier runs
whose process is gone (killed with SIGKILL) left behind. Names carry this process's id, so
concurrent runs never touch each other's namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "mbn"  # every namespace, link and /etc/netns entry this module creates starts with it
NETNS_ETC = Path("/etc/netns")
SUBNET = "10.77"  # node i: 10.77.<i // 250>.<i % 250 + 1>/16, only inside our own namespaces
REQUIRED_TOOLS = ("ip", "tc", "unshare")
RATE_UNITS = {  # tc units: bit = bits/s, bps = bytes/s
    "bit": 1,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
}
TIME_UNITS = {"ns": 1e-3, "us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6}
_PR_SET_PDEATHSIG = 1


class ClusterError(ValueError):
    """The emulated cluster cannot be built here (no root, no iproute2, a failed ip/tc command)."""


# ------------------------------------------------------------------------------ arguments


def parse_rate(text: str) -> int:
    """'2gbit', '500mbit', '100mbps' (bytes/s, as tc) -> bits per second."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in RATE_UNITS:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (use e.g. 1gbit, 500mbit, 100mbps)")
    bits = int(float(m.group(1)) * RATE_UNITS[unit])
    if bits < 8000:
        raise argparse.ArgumentTypeError(f"rate too low: {text!r} (at least 8kbit)")
    return bits


def parse_latency(text: str) -> float:
    """'20us', '1.5ms', '0' -> microseconds (a bare number is µs)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Zµ]*)\s*", text)
    unit = (m.group(2).lower() or "us") if m else ""
    if not m or unit not in TIME_UNITS:
        raise argparse.ArgumentTypeError(f"not a latency: {text!r} (use e.g. 20us, 0.5ms)")
    return float(m.group(1)) * TIME_UNITS[unit]


def format_rate(bits: int) -> str:
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits}bit"


# ------------------------------------------------------------------------------ names


def run_id(pid: int | None = None) -> str:
    """This run's id: the owning process id in base 36 (short enough for 15-character link names)."""
    pid = os.getpid() if pid is None else pid
    digits = ""
    while True:
        pid, d = divmod(pid, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[d] + digits
        if pid == 0:
            return digits


def owner_pid(rid: str) -> int:
    return int(rid, 36)


@dataclass(frozen=True)
class Layout:
    """Names and addresses of one run's N nodes."""

    rid: str
    nodes: int

    @property
    def tag(self) -> str:
        return f"{PREFIX}{self.rid}"

    @property
    def bridge(self) -> str:
        return f"{self.tag}b"

    def netns(self, i: int) -> str:
        return f"{self.tag}-n{i}"

    def host_veth(self, i: int) -> str:
        return f"{self.tag}v{i}"

    def hostname(self, i: int) -> str:
        return f"{self.tag}-node{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i // 250}.{i % 250 + 1}"


def describe(nodes: int, G: int, rate_bits: int | None, shaper: str, latency_us: float) -> str:
    """One line naming the emulated topology (printed, and passed to the ranks as MOEBENCH_CLUSTER)."""
    link = f"{shaper} {format_rate(rate_bits)} per node uplink each direction" if rate_bits else "unshaped"
    lat = f", +{latency_us:g} µs per inter-node message (user space)" if latency_us else ""
    return (
        f"EMULATED cluster: {nodes} nodes x {G} ranks, one network namespace per node; intra-node: TCP on the "
        f"namespace's own address; inter-node: TCP over veth+bridge, {link}{lat}"
    )


# ------------------------------------------------------------------------------ host commands


def check_host() -> None:
    """ClusterError (one line) unless this is Linux with root and iproute2."""
    if not sys.platform.startswith("linux"):
        raise ClusterError("the emulated cluster needs Linux network namespaces")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        raise ClusterError(
            f"the emulated cluster needs {', '.join(missing)} (iproute2 / util-linux); install iproute2 and util-linux"
        )
    if os.geteuid() != 0:
        raise ClusterError("the emulated cluster needs root (network namespaces, veth, tc); run it as root")


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one host command; ClusterError with its stderr when `check` and it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed: {result.stderr.strip() or result.returncode}")
    return result


def in_ns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


def shape(dev: str, rate_bits: int, shaper: str, ns: str | None = None) -> None:
    """Limit `dev`'s egress to rate_bits/s with tbf or htb (in namespace `ns`, or on the host)."""
    run = (lambda *c: in_ns(ns, *c)) if ns else sh
    # Burst: at least 64 KiB (a GSO segment) and ~1 ms at the rate. Queue: up to 1 s at the rate, so that a
    # node's flows (several MB each) wait in the shaper instead of being dropped into TCP retransmissions.
    burst = max(65536, rate_bits // 8 // 1000)
    if shaper == "tbf":
        run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_bits}bit", "burst", str(burst),
            "latency", "1s")  # fmt: skip
    else:
        run("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
        run(
            "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
            "rate", f"{rate_bits}bit", "ceil", f"{rate_bits}bit", "burst", str(burst), "cburst", str(burst),
        )  # fmt: skip


def create(layout: Layout, rate_bits: int | None, shaper: str) -> None:
    """Bridge + N namespaces, each joined by a veth pair, uplinks shaped, /etc/netns/<ns>/hosts written."""
    hosts = "127.0.0.1 localhost\n" + "".join(
        f"{layout.address(i)} {layout.hostname(i)}\n" for i in range(layout.nodes)
    )
    sh("ip", "link", "add", layout.bridge, "type", "bridge")
    sh("ip", "link", "set", layout.bridge, "up")
    for i in range(layout.nodes):
        ns, veth = layout.netns(i), layout.host_veth(i)
        etc = NETNS_ETC / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(hosts)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        sh("ip", "link", "set", f"{veth}p", "netns", ns)
        in_ns(ns, "ip", "link", "set", f"{veth}p", "name", "eth0")
        in_ns(ns, "ip", "addr", "add", f"{layout.address(i)}/16", "dev", "eth0")
        in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "link", "set", veth, "master", layout.bridge)
        sh("ip", "link", "set", veth, "up")
        if rate_bits:
            shape("eth0", rate_bits, shaper, ns=ns)  # node -> bridge
            shape(veth, rate_bits, shaper)  # bridge -> node


def _list_netns() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _list_links() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False).stdout
    return [m.group(1) for m in re.finditer(r"^\d+:\s+([^:@\s]+)", out, flags=re.M)]


def _run_of(name: str) -> str | None:
    """The run id in one of our names (mbn<rid>-n0, mbn<rid>v0, mbn<rid>b), else None."""
    m = re.fullmatch(rf"{PREFIX}([0-9a-z]+?)(?:-n\d+|v\d+p?|b)", name)
    return m.group(1) if m else None


def existing_runs() -> set[str]:
    """Run ids that still own a namespace, link or /etc/netns entry on this host."""
    names = _list_netns() + _list_links() + (os.listdir(NETNS_ETC) if NETNS_ETC.is_dir() else [])
    return {rid for rid in map(_run_of, names) if rid is not None}


def run_alive(rid: str) -> bool:
    """True while the process that created run `rid` is still a `bench cluster` process."""
    try:
        cmdline = Path(f"/proc/{owner_pid(rid)}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    return b"cluster" in cmdline and any(b"moebench" in arg for arg in cmdline)


def netns_pids(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_netns_processes(ns: str) -> None:
    """SIGKILL every process inside namespace `ns`, and wait (briefly) until they are gone."""
    for _ in range(50):
        pids = netns_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def destroy(rid: str) -> None:
    """Remove everything run `rid` created: processes in its namespaces, namespaces, links, /etc/netns."""
    tag = f"{PREFIX}{rid}"
    for ns in [n for n in _list_netns() if _run_of(n) == rid]:
        kill_netns_processes(ns)
        sh("ip", "netns", "del", ns, check=False)  # takes the veth pair with it
    for link in [n for n in _list_links() if _run_of(n) == rid]:
        sh("ip", "link", "del", link, check=False)
    if NETNS_ETC.is_dir():
        for entry in NETNS_ETC.iterdir():
            if _run_of(entry.name) == rid:
                shutil.rmtree(entry, ignore_errors=True)
    left = [n for n in _list_netns() + _list_links() if _run_of(n) == rid]
    if left:
        print(f"cluster: could not remove {', '.join(left)} (run {tag}); the next run retries", file=sys.stderr)


def remove_stale() -> list[str]:
    """Remove what earlier runs, now dead (e.g. SIGKILLed), left behind; return their ids."""
    stale = sorted(rid for rid in existing_runs() if not run_alive(rid))
    for rid in stale:
        destroy(rid)
    return stale


# ------------------------------------------------------------------------------ launch


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the cluster process dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def mpiexec_path() -> str:
    """The venv's mpiexec (beside this Python), else one on PATH."""
    venv = Path(sys.executable).parent / "mpiexec"
    found = str(venv) if venv.exists() else shutil.which("mpiexec")
    if not found:
        raise ClusterError("no mpiexec found: install the mpi extra (`make install` brings mpich)")
    return found


def rank_env(description: str, latency_us: float, rid: str = "", mpi_transport: str = "tcp") -> dict[str, str]:
    """Environment of every rank: MPICH/UCX over TCP only, gloo on eth0, the emulated latency."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    if mpi_transport == "tcp":
        env.update(MPIR_CVAR_NOLOCAL="1", UCX_TLS="tcp,self")  # never shared memory: ranks sit in different "nodes"
    else:
        for key in ("MPIR_CVAR_NOLOCAL", "UCX_TLS"):
            env.pop(key, None)
    env.update(
        GLOO_SOCKET_IFNAME="eth0",
        PYTHONUNBUFFERED="1",
        MOEBENCH_CLUSTER=description,
        MOEBENCH_CLUSTER_ID=rid,
        MOEBENCH_INTER_LATENCY_US=f"{latency_us:g}",
    )
    return env


def launch_command(layout: Layout, G: int, bench_args: list[str], python_args: list[str] | None = None) -> list[str]:
    """mpiexec with one MPMD section per node: `-n G ip netns exec NS unshare --uts sh -c ...`.

    Each rank runs `python -m moebench <bench_args>` (or `python <python_args>` where given: the probe)."""
    cmd = [mpiexec_path()]
    for i in range(layout.nodes):
        if i:
            cmd.append(":")
        enter = f'hostname {layout.hostname(i)} && exec "$@"'
        cmd += ["-n", str(G), "ip", "netns", "exec", layout.netns(i), "unshare", "--uts", "sh", "-c", enter, "sh"]
        cmd += [sys.executable, *(python_args or ["-m", "moebench", *bench_args])]
    return cmd


# ------------------------------------------------------------------------------ MPI probe

PROBE_BYTES = 1 << 20  # each rank sends up to this much to the next node before the benchmark starts
PROBE_SECONDS = 2.0  # ... or what the node's shaped uplink carries in this time, if less (at least 4 KiB)
PROBE_TIMEOUT_S = 90.0  # a probe still unfinished after this: MPI cannot talk across the namespaces


def probe_bytes(rate_bits: int | None, G: int) -> int:
    """Bytes each rank sends in the probe: 1 MiB, less on slow uplinks so the probe stays ~2 s."""
    if not rate_bits:
        return PROBE_BYTES
    return int(min(PROBE_BYTES, max(4096, rate_bits / 8 * PROBE_SECONDS / G)))


def probe_rank(nbytes: int, G: int) -> None:
    """One rank of the probe (under mpiexec): send `nbytes` to the rank with the same local index on the
    next node, receive from the previous node's, and check what arrived. Ranks are node-major (MPMD order)."""
    import numpy as np
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    r, P = world.Get_rank(), world.Get_size()
    N = P // G
    n, g = divmod(r, G)
    send = np.full(nbytes, r % 251, dtype=np.uint8)
    recv = np.empty(nbytes, dtype=np.uint8)
    source = (n - 1) % N * G + g
    world.Sendrecv(send, (n + 1) % N * G + g, 7, recv, source, 7)
    if not (recv == source % 251).all():
        raise SystemExit(f"probe: rank {r} received wrong bytes from rank {source}")
    world.Barrier()


def uplink_bytes(layout: Layout) -> list[int]:
    """Bytes each node has sent into the bridge so far (its host-side veth's receive counter)."""
    return [int(Path(f"/sys/class/net/{layout.host_veth(i)}/statistics/rx_bytes").read_text())
            for i in range(layout.nodes)]  # fmt: skip


def benchmark_backend(bench_args: list[str]) -> str:
    """The --backend the benchmark arguments select (mpi when absent)."""
    for i, arg in enumerate(bench_args):
        if arg == "--backend" and i + 1 < len(bench_args):
            return bench_args[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return "mpi"


def mpi_version_line() -> str:
    try:
        import mpi4py

        mpi4py.rc.initialize = mpi4py.rc.finalize = False  # this process is no rank: read the version only
        from mpi4py import MPI

        return " ".join(MPI.Get_library_version().splitlines()[0].split())
    except Exception:  # only a label for the error message
        return "MPI"


SEGMENT_SETTLE_S = 2.0  # a file younger than this may belong to a job between creating and mapping it


def remove_orphan_segments(since: float) -> list[str]:
    """Unlink MPICH's shared-memory files (/dev/shm/mpich_*) made since `since` (time.time()) that no live process
    maps, and return their paths: what ranks killed before they left MPI_Init left behind (the backends release
    the names once every rank is in; a probe that cannot start across the namespaces never gets there). A file
    of a job still running is mapped, so it stays; one younger than SEGMENT_SETTLE_S (its job may not have
    mapped it yet) is looked at again once it is that old, and removed only if still unmapped and the same file."""
    from moebench.collectives.comm import unmapped_mpi_segments  # here: no torch until needed

    first = unmapped_mpi_segments(since)
    if not first:
        return []
    wait = max(info.st_mtime for info in first.values()) + SEGMENT_SETTLE_S - time.time()
    if wait > 0:
        time.sleep(min(wait, SEGMENT_SETTLE_S))
    removed = []
    for path, info in unmapped_mpi_segments(since).items():
        if path in first and first[path].st_ino == info.st_ino:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def probe_mpi(layout: Layout, G: int, env: dict[str, str], backend: str, nbytes: int = PROBE_BYTES) -> None:
    """Before the benchmark: MPI must start across the namespaces and, for the mpi backend, carry the
    inter-node messages over TCP through the shaped links. ClusterError (one line) where it cannot."""
    if layout.nodes < 2:
        return
    code = (
        "import sys; from moebench.bench.topo.cluster import probe_rank; probe_rank(int(sys.argv[1]), int(sys.argv[2]))"
    )
    python_args = ["-c", code, str(nbytes), str(G)]
    before, started = uplink_bytes(layout), time.time() - 1.0  # file times have the kernel tick's resolution
    proc = subprocess.Popen(launch_command(layout, G, [], python_args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_die_with_parent)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop(proc)
        remove_orphan_segments(started)
        raise ClusterError(
            f"{mpi_version_line()} did not finish a {nbytes:,}-byte exchange between the namespaces "
            f"in {PROBE_TIMEOUT_S:g} s: it cannot use TCP between them here"
        ) from None
    if proc.returncode != 0:
        remove_orphan_segments(started)
        last = next((line.strip() for line in reversed(out.splitlines()) if line.strip()), f"exit {proc.returncode}")
        raise ClusterError(
            f"{mpi_version_line()} could not run across the namespaces (it cannot use TCP between them here): {last}"
        )
    crossed = [a - b for a, b in zip(uplink_bytes(layout), before)]
    if backend == "mpi" and min(crossed) < G * nbytes:
        raise ClusterError(
            f"{mpi_version_line()} sent {min(crossed):,} of its {G * nbytes:,} probe bytes per node over "
            "the shaped links: it does not use TCP between the namespaces (shared memory?), so the mpi backend "
            "cannot measure this cluster; run the benchmark with --backend torch (gloo over TCP)"
        )


class _Terminated(Exception):
    """SIGTERM or SIGHUP reached the cluster process."""


def _raise_terminated(signum, frame):
    raise _Terminated(signal.Signals(signum).name)


def _stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM mpiexec's process group, then SIGKILL after `grace_s`."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, grace_s)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)


def run_cluster(nodes: int, G: int, bench_args: list[str], rate_bits: int | None, shaper: str, latency_us: float,
                timeout_s: float | None, mpi_transport: str = "tcp") -> int:  # fmt: skip
    """Build the cluster, run `python -m moebench <bench_args>` across it, tear it down. Returns mpiexec's status."""
    check_host()
    stale = remove_stale()
    if stale:
        print(f"cluster: removed what earlier killed runs left behind ({', '.join(PREFIX + s for s in stale)})")
    layout, started = Layout(run_id(), nodes), time.time() - 1.0
    description = describe(nodes, G, rate_bits, shaper, latency_us)
    old = {s: signal.signal(s, _raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    proc = None
    try:
        create(layout, rate_bits, shaper)
        print(description, flush=True)
        print(
            "cluster: "
            + ", ".join(f"{layout.hostname(i)} = {layout.netns(i)} {layout.address(i)}" for i in range(nodes)),
            flush=True,
        )
        env = rank_env(description, latency_us, layout.rid, mpi_transport)
        probe_mpi(layout, G, env, benchmark_backend(bench_args), probe_bytes(rate_bits, G))
        proc = subprocess.Popen(launch_command(layout, G, bench_args), env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)  # fmt: skip
        try:
            status = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"cluster: timed out after {timeout_s:g} s; stopping every rank", file=sys.stderr, flush=True)
            status = 124
        if status < 0:
            print(f"cluster: mpiexec ended by signal {-status}", file=sys.stderr, flush=True)
            status = 128 - status
        return status
    except KeyboardInterrupt:
        print("cluster: interrupted; stopping every rank", file=sys.stderr, flush=True)
        return 130
    except _Terminated as exc:
        print(f"cluster: {exc}; stopping every rank", file=sys.stderr, flush=True)
        return 143
    finally:
        # Teardown must finish even if a second Ctrl-C arrives.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if proc is not None:
                _stop(proc)
            destroy(layout.rid)
            remove_orphan_segments(started)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for s, handler in old.items():
                signal.signal(s, handler)


def cluster_meta() -> dict:
    """For benchmarks running inside a cluster: the emulated topology line (empty dict elsewhere)."""
    line = os.environ.get("MOEBENCH_CLUSTER")
    return {"emulated_cluster": line, "emulated_cluster_id": os.environ.get("MOEBENCH_CLUSTER_ID", "")} if line else {}
