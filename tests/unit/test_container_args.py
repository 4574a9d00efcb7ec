"""The CI container's flags (SPEC §5 step 4) and ContainerNode's engine handling, no engine;
one node class over both transports."""
from __future__ import annotations

import re
from pathlib import Path

import docker.errors
import pytest
from docker.models.containers import _create_container_args
from docker.types import DeviceRequest, Ulimit

from harness.containers import node as ct
from harness.containers import spec
from harness.errors import CommandFailed, DockerError, SettingsError
from harness.hosts.local import LocalHost
from harness.settings import Settings

IMAGE = "lmsysorg/sglang:latest"
PROJECT = "/srv/mooncake/tone_tests"
RDMA = ["/dev/infiniband/uverbs0", "/dev/infiniband/uverbs1", "/dev/infiniband/rdma_cm"]
# What the tests here run with: the refused features off (CONTAINER_MEMLOCK=0 = not set).
TEST_OFF = {"CONTAINER_PRIVILEGED": "false", "CONTAINER_MEMLOCK": "0",
            "CONTAINER_GPUS": "none", "CONTAINER_SHM_SIZE": "1g"}


def settings(**env: str) -> Settings:
    return Settings.from_env(dict(env))


def kwargs_for(s: Settings, *, exists=lambda path: True, run_id: str = "r1") -> dict:
    return spec.create_kwargs(s, IMAGE, run_id, name=s.container_name, project_dir=PROJECT,
                            exists=exists)


# --- production defaults -----------------------------------------------------------------------
def test_defaults_match_the_shell_scripts_docker_run():
    kw = kwargs_for(settings())
    assert kw["image"] == IMAGE
    assert kw["name"] == "mooncake-ci-test"
    assert kw["init"] is True and kw["detach"] is True
    assert kw["ipc_mode"] == "host"
    assert kw["network_mode"] == "host"
    assert kw["cap_add"] == ["SYS_PTRACE"]
    assert kw["device_requests"] == [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    assert kw["ulimits"] == [Ulimit(name="memlock", soft=-1, hard=-1),
                             Ulimit(name="stack", soft=67108864, hard=67108864)]
    assert kw["shm_size"] == "128g"
    assert kw["privileged"] is True
    assert kw["volumes"] == {
        "/root/.cache": {"bind": "/root/.cache", "mode": "rw"},
        PROJECT: {"bind": "/test_run", "mode": "rw"},
        "/root/test.jsonl": {"bind": "/tmp/test.jsonl", "mode": "rw"},
    }
    assert kw["environment"] == {"NCCL_GIN_TYPE": "0", "HF_ENDPOINT": "https://hf-mirror.com",
                                 "HF_HUB_ENABLE_HF_TRANSFER": "1"}
    assert kw["devices"] == [f"{d}:{d}:rwm" for d in RDMA]
    assert kw["entrypoint"] == ["bash"]
    assert kw["command"][0] == "-c" and "sleep infinity" in kw["command"][1]
    assert kw["labels"] == {"mooncake-harness.run-id": "r1",
                            "mooncake-harness.role": "ci-container"}


def test_kwargs_are_all_known_to_the_docker_sdk():
    for s in (settings(), settings(**TEST_OFF), settings(CONTAINER_GPUS="0,1")):
        args = _create_container_args({**kwargs_for(s), "version": "1.41"})
        host_config = args["host_config"]
        assert host_config["NetworkMode"] == "host" and host_config["IpcMode"] == "host"
        assert host_config["Init"] is True
        assert args["labels"]["mooncake-harness.role"] == "ci-container"


def test_docker_run_argv_has_the_same_flags():
    argv = spec.container_spec(settings(), IMAGE, "r1", name="c", project_dir=PROJECT,
                             exists=lambda p: True).docker_run_argv()
    for flag in ("--init", "--detach", "--ipc=host", "--network=host", "--cap-add=SYS_PTRACE",
                 "--privileged", "--shm-size=128g", "--entrypoint=bash",
                 "--device=/dev/infiniband/rdma_cm:/dev/infiniband/rdma_cm:rwm"):
        assert flag in argv
    joined = " ".join(argv)
    assert "--gpus all" in joined
    assert "--ulimit memlock=-1:-1" in joined and "--ulimit stack=67108864:67108864" in joined
    assert f"-v {PROJECT}:/test_run" in joined and "-v /root/.cache:/root/.cache" in joined
    assert "-e NCCL_GIN_TYPE=0" in joined
    assert "--label mooncake-harness.run-id=r1" in joined
    assert argv[-3:] == [IMAGE, "-c", "hostname; exec sleep infinity"]


# --- the switches ------------------------------------------------------------------------------
def test_test_off_settings_turn_off_what_the_runtime_refuses():
    kw = kwargs_for(settings(**TEST_OFF))
    assert "device_requests" not in kw
    assert kw["ulimits"] == [Ulimit(name="stack", soft=67108864, hard=67108864)]
    assert kw["privileged"] is False
    assert kw["shm_size"] == "1g"
    assert kw["cap_add"] == ["SYS_PTRACE"] and kw["init"] is True


def test_memlock_byte_count():
    kw = kwargs_for(settings(CONTAINER_MEMLOCK="8388608"))
    assert Ulimit(name="memlock", soft=8388608, hard=8388608) in kw["ulimits"]


def test_memlock_below_minus_one_is_refused():
    with pytest.raises(SettingsError, match="CONTAINER_MEMLOCK"):
        kwargs_for(settings(CONTAINER_MEMLOCK="-2"))


@pytest.mark.parametrize("value, ids", [("0,1", ["0", "1"]), ("7", ["7"]),
                                        ("device=2,3", ["2", "3"]),
                                        ("GPU-1a2b-3c", ["GPU-1a2b-3c"])])
def test_gpu_device_list(value, ids):
    kw = kwargs_for(settings(CONTAINER_GPUS=value))
    assert kw["device_requests"] == [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


@pytest.mark.parametrize("value", ["abc", "0;1", "all,0"])
def test_bad_gpu_value(value):
    with pytest.raises(SettingsError, match="CONTAINER_GPUS"):
        kwargs_for(settings(CONTAINER_GPUS=value))


def test_gpus_none_and_case():
    assert "device_requests" not in kwargs_for(settings(CONTAINER_GPUS="NONE"))
    assert kwargs_for(settings(CONTAINER_GPUS="All"))["device_requests"][0]["Count"] == -1


def test_only_existing_rdma_devices_and_test_jsonl():
    present = {"/dev/infiniband/uverbs1"}
    kw = kwargs_for(settings(), exists=lambda path: path in present)
    assert kw["devices"] == ["/dev/infiniband/uverbs1:/dev/infiniband/uverbs1:rwm"]
    assert "/root/test.jsonl" not in kw["volumes"]


def test_rdma_devices_setting():
    kw = kwargs_for(settings(RDMA_DEVICES="/dev/a, /dev/b"), exists=lambda path: True)
    assert kw["devices"] == ["/dev/a:/dev/a:rwm", "/dev/b:/dev/b:rwm"]


def test_mirror_off_and_modelscope_on():
    kw = kwargs_for(settings(USE_HUGGINGFACE_MIRROR="false", USE_MODELSCOPE="true"))
    assert kw["environment"] == {"NCCL_GIN_TYPE": "0", "SGLANG_USE_MODELSCOPE": "true"}
    kw = kwargs_for(settings(HUGGINGFACE_MIRROR="http://mirror.local"))
    assert kw["environment"]["HF_ENDPOINT"] == "http://mirror.local"


def test_model_cache_and_names():
    kw = kwargs_for(settings(MODEL_CACHE="/data/hf", CONTAINER_NAME="ci-x"), run_id="run-7")
    assert kw["volumes"]["/data/hf"] == {"bind": "/root/.cache", "mode": "rw"}
    assert kw["name"] == "ci-x" and kw["labels"]["mooncake-harness.run-id"] == "run-7"


@pytest.mark.parametrize("message, setting", [
    ('could not select device driver "" with capabilities: [[gpu]]', "CONTAINER_GPUS=none"),
    ("OCI runtime create failed: runc create failed: unable to start container process: "
     "unable to apply caps: operation not permitted: unknown", "CONTAINER_PRIVILEGED=false"),
    ("error setting rlimits for ready process: error setting rlimit type 8: operation not "
     "permitted: unknown", "CONTAINER_MEMLOCK=0"),
])
def test_start_hint_names_the_setting(message, setting):
    assert setting in spec.start_hint(message)


# --- ContainerNode without an engine -----------------------------------------------------------
class FakeAPI:
    def __init__(self, exit_code=0, output=b"out\n", error=None):
        self.exit_code, self.output, self.error = exit_code, output, error
        self.created = []

    def exec_create(self, container, cmd, stdout=True, stderr=True):
        if self.error:
            raise self.error
        self.created.append((container, cmd))
        return {"Id": "e1"}

    def exec_start(self, exec_id, demux=False):
        return self.output

    def exec_inspect(self, exec_id):
        return {"ExitCode": self.exit_code}


class FakeContainer:
    def __init__(self, client, name, status="created", labels=None, start_error=None):
        self.client, self.name, self.status = client, name, status
        self.labels = labels or {}
        self.start_error = start_error

    def start(self):
        if self.start_error:
            raise self.start_error
        self.status = "running"

    def reload(self):
        pass

    def remove(self, force=False):
        self.client.removed.append(self.name)
        self.client.by_name.pop(self.name, None)


class FakeContainers:
    def __init__(self, client):
        self.client = client

    def get(self, name):
        if name not in self.client.by_name:
            raise docker.errors.NotFound("no such container")
        return self.client.by_name[name]

    def create(self, **kwargs):
        self.client.create_kwargs = kwargs
        made = FakeContainer(self.client, kwargs["name"], labels=kwargs["labels"],
                             start_error=self.client.start_error)
        self.client.by_name[made.name] = made
        return made

    def list(self, **kwargs):
        assert kwargs["all"] is True
        wanted = dict(label.split("=", 1) for label in kwargs["filters"]["label"])
        return [c for c in self.client.by_name.values()
                if all(c.labels.get(k) == v for k, v in wanted.items())]


class FakeClient:
    def __init__(self, api=None, start_error=None):
        self.api = api or FakeAPI()
        self.by_name: dict[str, FakeContainer] = {}
        self.removed: list[str] = []
        self.start_error = start_error
        self.containers = FakeContainers(self)
        self.closed = 0

    def close(self):
        self.closed += 1


def node_with(client, **env):
    s = settings(**{"CONTAINER_NAME": "mh-unit", **TEST_OFF, **env})
    return ct.ContainerNode(s, LocalHost(), PROJECT, client=client)


def test_node_is_lazy_and_close_is_idempotent():
    calls = []

    def connector(timeout=ct.CONTROL_TIMEOUT_S):
        calls.append(timeout)
        return FakeClient()

    node = ct.ContainerNode(settings(), LocalHost(), PROJECT, connector=connector)
    assert calls == []
    assert node.name == "local" and node.container_name == "mooncake-ci-test"
    assert str(node.layout.root) == "/test_run" and str(node.host_layout.root) == PROJECT
    assert node.on_host(node.layout.logs) == node.host_layout.logs
    node.exec(["true"])
    # every engine call has a deadline: the exec client's outlasts the longest exec it runs
    [exec_timeout] = calls
    assert ct.EXEC_DEFAULT_TIMEOUT_S < exec_timeout < float("inf")
    assert node.running() is False
    assert calls == [exec_timeout, ct.CONTROL_TIMEOUT_S]
    node.close()
    node.close()


def test_unreachable_engine_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    node = ct.ContainerNode(settings(), LocalHost(), PROJECT)
    with pytest.raises(DockerError) as info:
        node.running()
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("Docker engine not reachable (")
    assert "bash tests/provision.sh" in text


def test_exec_uses_timeout_prefix_and_reports_failures():
    api = FakeAPI(exit_code=3, output=b"boom\n")
    node = node_with(FakeClient(api))
    done = node.exec(["ls", "/x"], check=False, timeout=2.5)
    assert api.created[-1] == ("mh-unit", ["timeout", "-k", "5", "2.5", "ls", "/x"])
    assert done.exit_code == 3 and done.output == "boom\n" and done.argv == ["ls", "/x"]
    with pytest.raises(CommandFailed) as info:
        node.exec(["ls", "/x"])
    limit = f"{ct.EXEC_DEFAULT_TIMEOUT_S:g}"   # no timeout given: still a finite one
    assert api.created[-1] == ("mh-unit", ["timeout", "-k", "5", limit, "ls", "/x"])
    assert info.value.exit_code == 3 and info.value.host == "local"
    assert "boom" in info.value.details()


def test_exec_timeout_is_reported_as_timed_out():
    node = node_with(FakeClient(FakeAPI(exit_code=124, output=b"")))
    with pytest.raises(CommandFailed, match="timed out") as info:
        node.exec(["sleep", "9"], timeout=1)
    assert info.value.exit_code is None


def test_exec_in_missing_container_is_a_docker_error():
    error = docker.errors.APIError("409", explanation="Container mh-unit is not running")
    node = node_with(FakeClient(FakeAPI(error=error)))
    with pytest.raises(DockerError, match="mh-unit is not running") as info:
        node.exec(["true"])
    assert info.value.host == "local"


def test_start_replaces_an_old_container():
    client = FakeClient()
    node = node_with(client)
    client.by_name["mh-unit"] = FakeContainer(client, "mh-unit", status="exited")
    node.start("img:1", "run-1")
    assert client.removed == ["mh-unit"]
    assert client.by_name["mh-unit"].status == "running"
    assert client.create_kwargs["labels"]["mooncake-harness.run-id"] == "run-1"
    assert client.create_kwargs["image"] == "img:1"


def test_failed_start_removes_the_created_container():
    error = docker.errors.APIError(
        "500", explanation='could not select device driver "" with capabilities: [[gpu]]')
    client = FakeClient(start_error=error)
    node = node_with(client, CONTAINER_GPUS="all")
    with pytest.raises(DockerError) as info:
        node.start("img:1", "run-1")
    assert "mh-unit" in str(info.value) and "could not select device driver" in str(info.value)
    assert "CONTAINER_GPUS=none" in info.value.hint
    assert client.by_name == {} and client.removed == ["mh-unit"]


def test_remove_leftovers_only_ours_and_only_stuck():
    client = FakeClient()
    ours = {"mooncake-harness.role": "ci-container", "mooncake-harness.run-id": "r1"}
    client.by_name = {
        "a": FakeContainer(client, "a", "created", ours),
        "b": FakeContainer(client, "b", "exited", {**ours, "mooncake-harness.run-id": "r2"}),
        "c": FakeContainer(client, "c", "running", ours),
        "d": FakeContainer(client, "d", "exited", {}),
    }
    assert ct.remove_leftovers(client, run_id="r1") == ["a"]
    assert ct.remove_leftovers(client, name="c") == []
    assert ct.remove_leftovers(client) == ["b"]
    assert sorted(client.by_name) == ["c", "d"]


# --- one node, two transports (issue 8 item 11) ------------------------------------------------
HARNESS = Path(__file__).resolve().parents[2] / "harness"


def test_the_pull_step_is_named_once():
    """(That the containers layer never imports prep is tests/unit/test_architecture.py's.)"""
    defined = [str(p.relative_to(HARNESS)) for p in HARNESS.rglob("*.py")
               if re.search(r"^STEP_PULL_IMAGE\s*=", p.read_text(), re.M)]
    assert defined == ["results/steps.py"]


def test_the_remote_node_is_the_same_class_as_the_local_one():
    from harness.containers.docker_cli import DockerCLI

    class Host:
        name, address = "remote", "127.0.0.2"

    remote = ct.remote_container_node(settings(REMOTE_CONTAINER_NAME="rc"), Host())
    assert type(remote) is ct.ContainerNode and isinstance(remote.engine, DockerCLI)
    assert remote.container_name == "rc" and remote.name == "remote"
    local = ct.ContainerNode(settings(), LocalHost(), PROJECT, client=FakeClient())
    assert isinstance(local.engine, ct.SdkEngine)
