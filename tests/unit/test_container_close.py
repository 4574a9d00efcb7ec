"""ContainerNode.close(): the engine connections the node opened are closed, once; a client it
was handed belongs to the caller and stays open. (A runner that closes nodes between groups
would otherwise leak one socket pair per node and group.)"""
from __future__ import annotations

import docker.errors

from harness.containers import node as ct
from harness.hosts.local import LocalHost
from harness.settings import Settings

PROJECT = "/srv/mooncake/tone_tests"


class _Api:
    def exec_create(self, container, cmd, stdout=True, stderr=True):
        return {"Id": "e1"}

    def exec_start(self, exec_id, demux=False):
        return b""

    def exec_inspect(self, exec_id):
        return {"ExitCode": 0}


class _Containers:
    def get(self, name):
        raise docker.errors.NotFound("no such container")


class Client:
    """Just enough of docker.DockerClient: exec through `api`, look a container up, close."""

    def __init__(self):
        self.api = _Api()
        self.containers = _Containers()
        self.closed = 0

    def close(self):
        self.closed += 1


def node_with_connector():
    opened: list[Client] = []

    def connector(**kwargs):
        opened.append(Client())
        return opened[-1]

    node = ct.ContainerNode(Settings.from_env({}), LocalHost(), PROJECT, connector=connector)
    return node, opened


def test_close_closes_every_connection_the_node_opened_once():
    node, opened = node_with_connector()
    node.exec(["true"])         # the exec connection
    assert node.running() is False  # the control connection
    assert len(opened) == 2 and [c.closed for c in opened] == [0, 0]
    node.close()
    assert [c.closed for c in opened] == [1, 1]
    node.close()
    assert [c.closed for c in opened] == [1, 1]


def test_a_closed_node_opens_fresh_connections_when_used_again():
    node, opened = node_with_connector()
    node.running()
    node.close()
    node.running()
    node.exec(["true"])
    assert len(opened) == 3 and [c.closed for c in opened] == [1, 0, 0]
    node.close()
    assert [c.closed for c in opened] == [1, 1, 1]


def test_close_before_any_use_opens_nothing():
    node, opened = node_with_connector()
    node.close()
    assert opened == []


def test_close_leaves_a_client_it_was_handed_open():
    client = Client()
    node = ct.ContainerNode(Settings.from_env({}), LocalHost(), PROJECT, client=client)
    node.exec(["true"])
    node.running()
    node.close()
    node.close()
    assert client.closed == 0


def test_a_client_that_fails_to_close_does_not_stop_the_others():
    node, opened = node_with_connector()
    node.exec(["true"])
    node.running()

    def broken():
        raise OSError("socket already gone")
    opened[0].close = broken
    node.close()
    assert opened[1].closed == 1
