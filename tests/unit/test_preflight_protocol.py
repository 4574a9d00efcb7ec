"""Which protocol the Mooncake pre-flight moves bytes over (PREFLIGHT_PROTOCOL), and the free
ports it asks the local host for."""
from __future__ import annotations

from types import SimpleNamespace

from harness.hosts.local import Completed
from harness.run import preflight
from harness.settings import Settings


class Node:
    """A node whose RDMA device folder lists `devices` (None: no such folder)."""

    def __init__(self, devices: str | None, address: str = "10.0.0.1") -> None:
        self.devices, self.address, self.asked = devices, address, []

    def exec(self, argv, check=True, timeout=None):
        self.asked.append(argv)
        if argv[0] == "python3":  # the free-port probe
            return Completed(list(argv), 0, "40001 40002 40003\n")
        if self.devices is None:
            return Completed(list(argv), 2, "ls: cannot access '/sys/class/infiniband'\n")
        return Completed(list(argv), 0, self.devices)


def ctx(*nodes: Node, **env: str) -> SimpleNamespace:
    return SimpleNamespace(settings=Settings.from_env(env), nodes=list(nodes))


def test_auto_is_rdma_only_when_every_host_has_an_rdma_device():
    assert preflight._protocol(ctx(Node("erdma_0\n"), Node("erdma_0\n"))) == "rdma"
    assert preflight._protocol(ctx(Node("erdma_0\n"), Node(""))) == "tcp"
    assert preflight._protocol(ctx(Node("erdma_0\n"), Node(None))) == "tcp"


def test_an_asked_protocol_is_taken_without_looking():
    node = Node(None)
    assert preflight._protocol(ctx(node, PREFLIGHT_PROTOCOL="rdma")) == "rdma"
    assert preflight._protocol(ctx(node, PREFLIGHT_PROTOCOL="tcp")) == "tcp"
    assert node.asked == []


def test_free_ports_are_asked_of_the_node_on_its_own_address():
    node = Node(None, "10.9.9.9")
    assert preflight._free_ports(node, 3) == [40001, 40002, 40003]
    assert node.asked[0][-2:] == ["10.9.9.9", "3"]


def test_the_ladder_stops_at_the_cap_and_ends_with_it():
    assert preflight.ladder(1 << 30) == [4096, 1 << 20, 64 << 20, 1 << 30]
    assert preflight.ladder(64 << 20) == [4096, 1 << 20, 64 << 20]
    assert preflight.ladder(10 << 20) == [4096, 1 << 20, 10 << 20]
    assert preflight.ladder(4096) == [4096]
