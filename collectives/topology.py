"""Topology: which ranks share a node, which share a tensor-parallel (TP) group, and the GPUs.

P = world size, G = ranks per node, N = P / G nodes, L = TP degree.
Rank r sits on node r // G at local index r % G; its TP group is the L consecutive ranks
[r // L * L, r // L * L + L). Nodes come from hostnames unless `ranks_per_node` overrides them
(to emulate G ranks per node on one host).
"""

from __future__ import annotations

from dataclasses import dataclass


class TopologyError(ValueError):
    """A topology the suite cannot form (G or L not dividing P, uneven nodes)."""


@dataclass(frozen=True)
class Topology:
    """Node and TP grouping of P ranks.

    world_size: P; ranks_per_node: G; tp: L; emulated: True when G came from --ranks-per-node
    rather than hostnames.
    """

    world_size: int
    ranks_per_node: int
    tp: int = 1
    emulated: bool = False

    def __post_init__(self):
        P, G, L = self.world_size, self.ranks_per_node, self.tp
        if G < 1 or P % G:
            raise TopologyError(f"ranks per node G={G} must divide the world size P={P}")
        if L < 1 or P % L:
            raise TopologyError(f"TP degree L={L} must divide the world size P={P}")

    @property
    def num_nodes(self) -> int:
        return self.world_size // self.ranks_per_node

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def local_index(self, rank: int) -> int:
        return rank % self.ranks_per_node

    def node_ranks(self, node: int) -> list[int]:
        """The G ranks of one node."""
        G = self.ranks_per_node
        return list(range(node * G, node * G + G))

    def cross_ranks(self, local_index: int) -> list[int]:
        """The N ranks, one per node, that share a local index (the inter-node group)."""
        return list(range(local_index, self.world_size, self.ranks_per_node))

    def tp_ranks(self, tp_group: int) -> list[int]:
        """The L consecutive ranks of one TP group."""
        L = self.tp
        return list(range(tp_group * L, tp_group * L + L))

    def same_node(self, a: int, b: int) -> bool:
        return self.node_of(a) == self.node_of(b)

    def describe(self) -> str:
        src = "emulated by --ranks-per-node" if self.emulated else "from hostnames"
        return f"P={self.world_size} G={self.ranks_per_node} ({src}) nodes={self.num_nodes} L={self.tp}"


def from_hostnames(hostnames: list[str], ranks_per_node: int | None, tp: int) -> Topology:
    """Build the topology from every rank's hostname, or from an explicit `ranks_per_node`."""
    P = len(hostnames)
    if ranks_per_node is not None:
        return Topology(P, ranks_per_node, tp, emulated=True)
    G = hostnames.count(hostnames[0])
    blocks = [hostnames[i : i + G] for i in range(0, P, G)]
    if P % G or any(len(set(b)) != 1 for b in blocks) or len({b[0] for b in blocks}) != len(blocks):
        raise TopologyError(
            "ranks must be placed in equal, contiguous blocks per host (got hosts "
            f"{hostnames}); use --ranks-per-node to override"
        )
    return Topology(P, G, tp)


def gpu_info() -> list[dict]:
    """NVML facts per visible GPU: name, memory, NVLink peers. [] where there is no GPU or NVML."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        bus_ids = [_text(pynvml.nvmlDeviceGetPciInfo(h).busId).lower() for h in handles]
        gpus = []
        for i, handle in enumerate(handles):
            peers = _nvlink_peers(pynvml, handle, bus_ids)
            gpus.append(
                {
                    "index": i,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "memory_gb": pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1e9,
                    "nvlink_active_links": len(peers),
                    "nvlink_peers": sorted(set(peers)),
                }
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _nvlink_peers(pynvml, handle, bus_ids: list[str]) -> list[str]:
    """For each active NVLink: the peer GPU's index ("gpu3"), or "switch" (an NVSwitch or unseen device)."""
    peers = []
    for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
        try:
            if pynvml.nvmlDeviceGetNvLinkState(handle, link) != pynvml.NVML_FEATURE_ENABLED:
                continue
            remote = _text(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId).lower()
        except pynvml.NVMLError:
            break
        peers.append(f"gpu{bus_ids.index(remote)}" if remote in bus_ids else "switch")
    return peers
