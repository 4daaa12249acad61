"""Node and TP grouping, and what NVML reports (a stand-in NVML with two linked GPUs; none here)."""

from __future__ import annotations

import sys
import types

import pytest

from moebench.collectives.topology import Topology, TopologyError, from_hostnames, gpu_info


def test_hostname_grouping_and_override():
    topo = from_hostnames(["a", "a", "b", "b"], None, tp=2)
    assert (topo.ranks_per_node, topo.num_nodes, topo.emulated) == (2, 2, False)
    assert topo.node_ranks(1) == [2, 3] and topo.cross_ranks(1) == [1, 3] and topo.tp_ranks(1) == [2, 3]
    assert from_hostnames(["a"] * 4, 1, tp=1).num_nodes == 4


@pytest.mark.parametrize(("hosts", "G", "L"), [(["a", "b", "a", "b"], None, 1), (["a"] * 4, 3, 1), (["a"] * 4, 2, 3)])
def test_bad_topologies_raise(hosts, G, L):
    with pytest.raises(TopologyError):
        from_hostnames(hosts, G, L)


def test_topology_rejects_zero():
    with pytest.raises(TopologyError):
        Topology(4, 0)


def test_gpu_info_silent_without_gpu():
    assert gpu_info() == []


def test_gpu_info_reports_nvlink_peers(monkeypatch):
    class NVMLError(Exception):
        pass

    bus = ["0000:01:00.0", "0000:02:00.0"]
    links = {0: [1, None], 1: [0, None]}  # link 0 of each GPU goes to the other, link 1 is down
    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_FEATURE_ENABLED=1,
        NVML_NVLINK_MAX_LINKS=2,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetPciInfo=lambda h: types.SimpleNamespace(busId=bus[h].encode()),
        nvmlDeviceGetName=lambda h: b"NVIDIA H200",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=141e9),
        nvmlDeviceGetNvLinkState=lambda h, link: int(links[h][link] is not None),
        nvmlDeviceGetNvLinkRemotePciInfo=lambda h, link: types.SimpleNamespace(busId=bus[links[h][link]]),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus = gpu_info()
    assert [g["name"] for g in gpus] == ["NVIDIA H200", "NVIDIA H200"]
    assert gpus[0]["nvlink_peers"] == ["gpu1"] and gpus[1]["nvlink_peers"] == ["gpu0"]
    assert gpus[0]["memory_gb"] == pytest.approx(141)
