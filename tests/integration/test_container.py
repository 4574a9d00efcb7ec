"""ContainerNode and the prep steps on the real Docker engine with the offline test image.

Every container is named `mh-test-<random>` and labelled with a run id unique to the test; the
`made` fixture removes them all (any state) afterwards.
"""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import docker.errors
import pytest
import requests

from harness.containers import node as ct
from harness.containers import spec
from harness.prep import per_host as prep
from harness.containers.node import ContainerNode
from harness.errors import CommandFailed, DockerError
from harness.hosts.local import LocalHost
from harness.settings import Settings
from tests.simproc import free_port, wait_for

pytestmark = pytest.mark.docker

# What this engine refuses is turned off (CONTAINER_MEMLOCK=0: leave memlock at the default).
TEST_OFF = {"CONTAINER_PRIVILEGED": "false", "CONTAINER_MEMLOCK": "0",
            "CONTAINER_GPUS": "none", "CONTAINER_SHM_SIZE": "1g", "INSTALL_ERDMA": "false"}


def containers_named(client, name: str) -> list:
    return [c for c in client.containers.list(all=True, filters={"name": name}) if c.name == name]


class Made:
    """Builds nodes for one test and removes every container they (or the test) made."""

    def __init__(self, client, image: str, root: Path) -> None:
        self.client = client
        self.image = image
        self.root = root
        self.run_id = f"mh-test-{uuid.uuid4().hex[:10]}"
        self.names: list[str] = []
        self.nodes: list[ContainerNode] = []

    def settings(self, **env: str) -> Settings:
        name = f"mh-test-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        base = {"CONTAINER_NAME": name, "MODEL_CACHE": str(self.root / "cache"),
                "RDMA_DEVICES": "/dev/zero,/dev/mh-test-no-such-device", **TEST_OFF}
        return Settings.from_env({**base, **env})

    def node(self, project: Path | None = None, **env: str) -> ContainerNode:
        project = project or self.root / "project"
        project.mkdir(parents=True, exist_ok=True)
        node = ContainerNode(self.settings(**env), LocalHost(), project)
        self.nodes.append(node)
        return node

    def cleanup(self) -> None:
        for node in self.nodes:
            node.close()
        found = self.client.containers.list(
            all=True, filters={"label": f"{spec.LABEL_RUN_ID}={self.run_id}"})
        for name in self.names:
            found += containers_named(self.client, name)
        for container in found:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def made(docker_client, test_image, tmp_path):
    made = Made(docker_client, test_image, tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


def test_start_exec_spawn_stop(made, docker_client):
    node = made.node()
    node.start(made.image, made.run_id)
    assert node.running()

    attrs = docker_client.containers.get(node.container_name).attrs
    host_config, config = attrs["HostConfig"], attrs["Config"]
    assert config["Labels"][spec.LABEL_RUN_ID] == made.run_id
    assert config["Labels"][spec.LABEL_ROLE] == "ci-container"
    assert host_config["Init"] is True
    assert host_config["IpcMode"] == "host" and host_config["NetworkMode"] == "host"
    assert host_config["CapAdd"] == ["SYS_PTRACE"] and host_config["Privileged"] is False
    assert {"Name": "stack", "Soft": 67108864, "Hard": 67108864} in host_config["Ulimits"]
    assert [d["PathOnHost"] for d in host_config["Devices"]] == ["/dev/zero"]
    assert config["Entrypoint"] == ["bash"]
    assert "NCCL_GIN_TYPE=0" in config["Env"]

    # exec: output, exit codes, timeouts, the project at /test_run
    assert node.exec(["bash", "-c", "ulimit -s"]).output.strip() == "65536"
    (made.root / "project" / "marker.txt").write_text("from the host\n")
    assert node.exec(["cat", "/test_run/marker.txt"]).output == "from the host\n"
    with pytest.raises(CommandFailed) as info:
        node.exec(["bash", "-c", "echo nope; exit 3"])
    assert info.value.exit_code == 3 and info.value.host == "local"
    assert "nope" in info.value.details()
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out"):
        node.exec(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 5

    # a background server: own group, log on the host's disk, stopped in well under a second
    port = free_port()
    log = node.layout.case_logs("c1") / "http.log"
    proc = node.spawn("http", ["python3", "-u", "-m", "http.server", "--bind", "127.0.0.1",
                               str(port)], case="c1", log=log)
    host_log = made.root / "project" / "run" / "logs" / "c1" / "http.log"
    assert Path(str(node.on_host(log))) == host_log
    assert wait_for(lambda: "Serving HTTP" in host_log.read_text(errors="replace")
                    if host_log.exists() else False)
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    assert node.alive(proc.pgid)
    assert (made.root / "project" / "run" / "pids" / "c1" / "http.pid").exists()
    started = time.monotonic()
    killed = node.stop(proc, timeout_s=10)
    took = time.monotonic() - started
    # exited on TERM (not killed); the bound only catches a hang on a loaded machine, the
    # stop latency itself is measured by `nox -s bench`
    assert not killed and took < 8.0, f"stop took {took:.2f}s"
    assert not node.alive(proc.pgid)
    assert not (made.root / "project" / "run" / "pids" / "c1" / "http.pid").exists()

    node.stop_container()
    assert not node.running()
    node.remove()
    assert containers_named(docker_client, node.container_name) == []
    node.close()
    node.close()


def test_start_replaces_an_existing_container(made, docker_client):
    node = made.node()
    # a leftover stuck in `created` with this name, then a running one: both get replaced
    docker_client.containers.create(made.image, name=node.container_name, entrypoint=["true"])
    node.start(made.image, made.run_id)
    first = containers_named(docker_client, node.container_name)
    assert [c.status for c in first] == ["running"]
    node.start(made.image, made.run_id)
    second = containers_named(docker_client, node.container_name)
    assert len(second) == 1 and second[0].status == "running"
    assert second[0].id != first[0].id


def test_reset_stops_processes_and_restarts(made):
    node = made.node()
    node.start(made.image, made.run_id)
    log = node.layout.case_logs("c2") / "sleeper.log"
    proc = node.spawn("sleeper", ["sleep", "300"], case="c2", log=log)
    assert node.alive(proc.pgid)
    node.exec(["bash", "-c", "echo kept > /root/survives-restart"])
    node.reset(timeout_s=5)
    assert node.running()
    assert node.exec(["pgrep", "-x", "sleep", "-a"], check=False).output.count("sleep 300") == 0
    assert not (made.root / "project" / "run" / "pids" / "c2" / "sleeper.pid").exists()
    assert node.exec(["cat", "/root/survives-restart"]).output.strip() == "kept"


@pytest.mark.parametrize("env, setting", [
    ({"CONTAINER_GPUS": "all"}, "CONTAINER_GPUS=none"),
    ({"CONTAINER_PRIVILEGED": "true"}, "CONTAINER_PRIVILEGED=false"),
    ({"CONTAINER_MEMLOCK": "-1"}, "CONTAINER_MEMLOCK=0"),
])
def test_refused_feature_fails_cleanly(made, docker_client, env, setting):
    """Either the engine grants it, or one clear DockerError names the setting; nothing left."""
    node = made.node(**env)
    try:
        prep.start_container(node, made.image, made.run_id)
    except DockerError as exc:
        assert node.container_name in str(exc)
        assert exc.step == "start-container" and exc.host == "local"
        assert setting in (exc.hint or ""), exc.details()
        assert containers_named(docker_client, node.container_name) == []
        assert docker_client.containers.list(
            all=True, filters={"label": f"{spec.LABEL_RUN_ID}={made.run_id}"}) == []
    else:
        assert node.running()


def test_gpu_request_without_gpu_runtime(made, docker_client):
    node = made.node(CONTAINER_GPUS="all")
    if shutil.which("nvidia-container-runtime") or shutil.which("nvidia-ctk"):
        pytest.skip("this host has the NVIDIA container runtime")
    with pytest.raises(DockerError, match="could not select device driver") as info:
        node.start(made.image, made.run_id)
    assert "CONTAINER_GPUS=none" in info.value.hint
    assert "\n" not in str(info.value)
    assert containers_named(docker_client, node.container_name) == []


def test_remove_leftovers(made, docker_client):
    name = made.settings().container_name
    labels = {spec.LABEL_RUN_ID: made.run_id, spec.LABEL_ROLE: spec.ROLE_CI_CONTAINER}
    docker_client.containers.create(made.image, name=name, labels=labels, entrypoint=["true"])
    other = made.settings().container_name
    docker_client.containers.create(made.image, name=other, entrypoint=["true"])  # not ours
    assert ct.remove_leftovers(docker_client, run_id=made.run_id) == [name]
    assert containers_named(docker_client, name) == []
    assert len(containers_named(docker_client, other)) == 1


def test_pull_policies(made, docker_client):
    prep.pull_image(docker_client, made.image, "missing")     # present: nothing pulled
    prep.pull_image(docker_client, made.image, "never")
    missing = "mooncake-harness-test:no-such-tag"
    with pytest.raises(DockerError, match="no-such-tag is not present and IMAGE_PULL=never"):
        prep.pull_image(docker_client, missing, "never")


def test_pull_always_from_unreachable_registry(docker_client):
    image = "127.0.0.1:1/nope:latest"
    started = time.monotonic()
    with pytest.raises(DockerError) as info:
        prep.pull_image(docker_client, image, "always")
    assert time.monotonic() - started < 60
    text = str(info.value)
    assert f"cannot pull image {image}:" in text and "\n" not in text
    assert info.value.step == "pull-image"


def test_install_python_packages_offline(made, docker_client, mooncake_wheel):
    project = made.root / "project"
    whls = project / "run" / "whls"
    whls.mkdir(parents=True)
    shutil.copy(mooncake_wheel, whls / mooncake_wheel.name)
    node = made.node(project)
    node.start(made.image, made.run_id)
    dist, version = mooncake_wheel.name.split("-")[:2]  # the CPU build's name, as CI caches it
    dist = dist.replace("_", "-")
    node.exec(["python3", "-m", "pip", "uninstall", "-y", dist])
    assert not node.exec(["python3", "-c", "import mooncake"], check=False).ok
    prep.install_python_packages(node, node.settings, "SGLANG", mooncake_wheel.name)
    shown = node.exec(["python3", "-m", "pip", "show", dist]).output
    assert f"Version: {version}" in shown
    node.exec(["python3", "-c", "import mooncake, sglang_router"])
