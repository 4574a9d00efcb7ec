"""One container node over two transports (issue 8 item 11): the same lifecycle, the same
answers, whether the engine is reached with the docker SDK on this machine or with the docker
CLI over the harness's SSH connection (the test sshd on 127.0.0.2, same engine).

The same scenario runs on both: pull as IMAGE_PULL says (one log line, one message), start over
a stale container, restart between cases, stop at the end of a run (the container stays, as
exited), start again (replaced), remove, leftovers of the run.
"""
from __future__ import annotations

import logging
import uuid

import pytest

from harness.containers.node import ContainerNode, remote_container_node
from harness.errors import DockerError
from harness.results.steps import Skipped
from harness.hosts.local import LocalHost
from harness.hosts.ssh import SSHHost

pytestmark = [pytest.mark.docker, pytest.mark.ssh]

TEST_OFF = {"CONTAINER_PRIVILEGED": "false", "CONTAINER_MEMLOCK": "0", "CONTAINER_GPUS": "none",
            "CONTAINER_SHM_SIZE": "1g", "INSTALL_ERDMA": "false"}


@pytest.fixture(params=["docker-sdk", "docker-cli-over-ssh"])
def node(request, remote_settings, docker_client, tmp_path):
    name = f"mh-test-node-{uuid.uuid4().hex[:10]}"
    project = tmp_path / "project"
    project.mkdir()
    settings = remote_settings(CONTAINER_NAME=name, REMOTE_CONTAINER_NAME=name,
                               MODEL_CACHE=tmp_path / "cache", RDMA_DEVICES="/dev/zero",
                               REMOTE_TEST_DIR=project, **TEST_OFF)
    host = None
    if request.param == "docker-sdk":
        made = ContainerNode(settings, LocalHost("local", "127.0.0.1"), project, name="remote")
    else:
        host = SSHHost(settings, settings.remote_ip)
        made = remote_container_node(settings, host, project)
    made.run_id = f"mh-test-{uuid.uuid4().hex[:10]}"
    try:
        yield made
    finally:
        made.close()
        if host is not None:
            host.close()
        for container in docker_client.containers.list(all=True):
            if container.name == name or \
                    container.labels.get("mooncake-harness.run-id") == made.run_id:
                container.remove(force=True)


def test_one_lifecycle_over_either_transport(node, docker_client, test_image, caplog):
    assert type(node) is ContainerNode
    caplog.set_level(logging.INFO)
    assert node.pull(test_image, "missing") == \
        Skipped(f"IMAGE_PULL=missing and {test_image} is present")  # the run's step tells it
    with pytest.raises(DockerError) as err:
        node.pull("mooncake-harness-test:no-such-tag", "never")
    assert str(err.value) == ("[step pull-image, host remote] image "
                              "mooncake-harness-test:no-such-tag is not present and "
                              "IMAGE_PULL=never")

    docker_client.containers.create(test_image, name=node.container_name, entrypoint=["true"])
    assert node.status() == "created"
    node.start(test_image, node.run_id)                 # the stale one is replaced
    first = node.container_id()
    assert node.running() and node.exec(["cat", "/proc/1/comm"]).ok
    started = docker_client.containers.get(first).attrs["State"]["StartedAt"]
    node.restart()
    assert node.running()
    assert docker_client.containers.get(first).attrs["State"]["StartedAt"] != started

    node.stop_container()                               # the end of a run: kept, stopped
    assert node.status() == "exited" and node.container_id() == first
    node.stop_container()                               # twice is fine
    node.start(test_image, node.run_id)                 # the next run replaces it
    assert node.running() and node.container_id() != first
    node.stop_container()
    assert node.remove_leftovers(node.run_id) == [node.container_name]
    assert node.status() is None
    node.remove()                                       # nothing there: nothing to do
    with pytest.raises(DockerError, match="does not exist"):
        node.restart()
