"""The host reset between cases on real processes: simulated SGLang engines holding simulated GPU
memory, on a HostNode (HARNESS_RUNTIME=host) and in a real container (ContainerNode)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness.prep import gpu as g
from harness.prep import sim_gpu
from harness.hosts.local import LocalHost
from harness.hosts.nodes import HostNode, Node
from harness.prep.reset import ResetFailed, gpu_source_for, kill_scope, reset_node
from harness.settings import Settings
from tests.simproc import free_port, wait_for

pytestmark = pytest.mark.integration

READY = "The server is fired up and ready to roll!"
SHORT = {"TIMEOUT_GPU_DRAIN_S": "1", "TIMEOUT_GPU_DRAIN_AFTER_KILL_S": "1",
         "TIMEOUT_STOP_S": "5"}
TEST_OFF = {"CONTAINER_GPUS": "none", "CONTAINER_PRIVILEGED": "false", "CONTAINER_MEMLOCK": "0",
            "CONTAINER_SHM_SIZE": "1g", "INSTALL_ERDMA": "false"}
START_WAIT_S = 20.0  # an engine's start-up, in a container too


def host_settings(**env: str) -> Settings:
    return Settings.from_env({"HARNESS_SIM": "true", "HARNESS_RUNTIME": "host", **SHORT, **env})


def engine_argv(python: str, port: int, tp: int, base: int) -> list[str]:
    return [python, "-m", "sglang.launch_server", "--model-path", "m", "--host", "127.0.0.1",
            "--port", str(port), "--tp-size", str(tp), "--base-gpu-id", str(base)]


def engine_env(node: Node, component: str | None = None, faults: str = "") -> dict[str, str]:
    env = {"HARNESS_SIM": "true", "HARNESS_SIM_STARTUP_S": "0.2", "HARNESS_SIM_FAULTS": faults,
           **sim_gpu.sim_gpu_env(node.layout)}
    if component:
        env["HARNESS_SIM_COMPONENT"] = component
    return env


def start_engine(node: Node, name: str, *, python: str = sys.executable, tp: int = 1,
                 base: int = 0, component: str | None = None, faults: str = "",
                 prefix: tuple[str, ...] = ()):
    """A simulated SGLang server spawned by the node; returns once its ready line is logged."""
    log = node.layout.case_logs("case") / f"{name}.log"
    proc = node.spawn(name, [*prefix, *engine_argv(python, free_port(), tp, base)], case="case",
                      log=log, env=engine_env(node, component, faults),
                      pythonpath=[str(node.layout.sim_site)])
    host_log = Path(str(node.on_host(log)))
    ok = wait_for(lambda: host_log.exists() and READY in host_log.read_text(errors="replace"),
                  START_WAIT_S)
    assert ok, f"{name} not ready:\n{proc.log_tail()}"
    return proc


def records(node: Node) -> list[Path]:
    return sorted(Path(str(sim_gpu.sim_gpu_dir(node.host_layout))).glob("*.json"))


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def pgid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()[2])


class Foreign:
    """A simulated engine this run did not start (own session, output elsewhere)."""

    def __init__(self, gpu_dir: object, base: int = 0) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "sim/site"),
               "HARNESS_SIM_STARTUP_S": "0.2", sim_gpu.SIM_GPU_ENV: str(gpu_dir)}
        env.pop("HARNESS_SIM_COMPONENT", None)
        env.pop("HARNESS_SIM_FAULTS", None)
        self.proc = subprocess.Popen(engine_argv(sys.executable, free_port(), 1, base), env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.gpu_dir = Path(str(gpu_dir))
        assert wait_for(lambda: any(f"-{self.proc.pid}-" in p.name
                                    for p in self.gpu_dir.glob("*.json")), START_WAIT_S)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def node(project) -> HostNode:
    return HostNode(LocalHost("local", "127.0.0.1"), project)


# --- HARNESS_RUNTIME=host ------------------------------------------------------------------------
def test_host_reset_stops_the_engine_and_memory_drains(node):
    settings = host_settings()
    gpu = gpu_source_for(node, settings)
    proc = start_engine(node, "prefill", tp=2, base=2)
    assert gpu.used_mb() == [0, 0, 8000, 8000, 0, 0, 0, 0]
    [held] = gpu.processes()
    assert held.used_mb == 16000 and pgid_of(held.pid) == proc.pgid
    assert "launch_server" in Path(f"/proc/{held.pid}/cmdline").read_text()

    started = time.monotonic()
    report = reset_node(node, settings, gpu)
    assert report.passed and report.second is None and not report.killed
    assert report.action == "stopped prefill"
    assert report.first.drained and report.first.readings[-1].max_mb == 0
    assert time.monotonic() - started < 3
    assert records(node) == []                    # removed on the clean (SIGTERM) exit
    assert not pid_alive(held.pid)


def test_host_reset_fails_on_gpu_leak(node):
    settings = host_settings(HARNESS_SIM_FAULTS="decode:gpu-leak")
    gpu = gpu_source_for(node, settings)
    start_engine(node, "decode", tp=2, base=6, component="decode", faults="decode:gpu-leak")
    started = time.monotonic()
    with pytest.raises(ResetFailed) as err:
        reset_node(node, settings, gpu)
    took = time.monotonic() - started
    exc = err.value
    assert exc.step == "reset" and exc.host == "local"
    message = str(exc)
    assert re.fullmatch(r"\[step reset, host local\] GPU memory still used after the reset: "
                        r"GPU 6: 8000 MB, GPU 7: 8000 MB, 6 others <= 1024 MB \(limit 1024 MB\); "
                        r"stopped decode, waited 1\.\ds, killed none \[no process holds GPU "
                        r"memory\], waited 1\.\ds more", message), message
    assert "needs intervention" in exc.details()
    assert 2.0 <= took < 30, took  # both 1 s drain waits ran; the upper bound catches a hang
    assert len(records(node)) == 1               # the leak outlives its process


def test_host_reset_kills_an_engine_that_escaped_the_group_kill(node):
    settings = host_settings()
    gpu = gpu_source_for(node, settings)
    # `setsid` puts the engine in its own session, as engine subprocesses that survive a
    # process-group kill are, and it drops the run's marker (so the marker sweep of the stop
    # phase misses it too); its output still goes to the run's log.
    start_engine(node, "prefill", prefix=("env", "-u", "HARNESS_OWNER", "setsid"))
    [held] = gpu.processes()
    report = reset_node(node, settings, gpu)
    assert report.passed and not report.first.drained and report.second.drained
    assert report.killed == [held] and report.left_alone == []
    assert report.scope.startswith("only this run's processes")
    assert wait_for(lambda: not pid_alive(held.pid), 5)


def test_host_reset_never_kills_a_process_of_someone_else(node):
    settings = host_settings()
    gpu = gpu_source_for(node, settings)
    start_engine(node, "prefill")
    foreign = Foreign(sim_gpu.sim_gpu_dir(node.host_layout), base=3)
    try:
        with pytest.raises(ResetFailed) as err:
            reset_node(node, settings, gpu)
        assert err.value.report.killed == []
        assert [p.pid for p in err.value.report.left_alone] == [foreign.proc.pid]
        assert "GPU 3: 8000 MB" in str(err.value)
        assert f"left alone, not this node's: pid {foreign.proc.pid} (8000 MB)" in str(err.value)
        assert foreign.proc.poll() is None        # untouched
    finally:
        foreign.stop()


# --- in a container ------------------------------------------------------------------------------
@pytest.fixture
def container_node(docker_client, test_image, project, tmp_path):
    from harness.containers.node import ContainerNode
    name = f"mh-test-{uuid.uuid4().hex[:10]}"
    settings = Settings.from_env({
        "CONTAINER_NAME": name, "MODEL_CACHE": str(tmp_path / "cache"), "RDMA_DEVICES": "",
        "HARNESS_SIM": "true", **TEST_OFF, **SHORT})
    node = ContainerNode(settings, LocalHost("local", "127.0.0.1"), project)
    try:
        node.start(test_image, f"mh-test-{uuid.uuid4().hex[:10]}")
        yield node
    finally:
        node.remove()
        node.close()


@pytest.mark.docker
def test_container_restart_drains_the_engines_memory(container_node):
    node = container_node
    gpu = gpu_source_for(node, node.settings)
    start_engine(node, "prefill", python="python3", tp=2)
    assert gpu.used_mb()[:3] == [8000, 8000, 0]
    [held] = gpu.processes()
    # found in the host's view: its PID namespace is the container's, its cgroup names it
    nspids = [line for line in Path(f"/proc/{held.pid}/status").read_text().splitlines()
              if line.startswith("NSpid:")]
    assert nspids and len(nspids[0].split()) >= 3
    cid = node.container_id()
    assert g.cgroup_processes(node.host, [held.pid], cid) == [held.pid]

    report = reset_node(node, node.settings, gpu)
    assert report.passed and report.action == f"restarted container {node.container_name}"
    assert set(report.phases_s) == {"restart", "drain"}
    assert not pid_alive(held.pid) and node.running()


@pytest.mark.docker
def test_container_reset_fails_on_gpu_leak(container_node):
    node = container_node
    gpu = gpu_source_for(node, node.settings)
    start_engine(node, "decode", python="python3", tp=2, base=6, component="decode",
                 faults="decode:gpu-leak")
    with pytest.raises(ResetFailed) as err:
        reset_node(node, node.settings, gpu)
    assert re.match(
        r"\[step reset, host local\] GPU memory still used after the reset: GPU 6: 8000 MB, "
        r"GPU 7: 8000 MB, 6 others <= 1024 MB \(limit 1024 MB\); restarted container "
        rf"{node.container_name}, waited 1\.\ds, killed none", str(err.value)), str(err.value)
    assert node.running()


@pytest.mark.docker
def test_container_kill_is_scoped_to_the_containers_cgroup(container_node):
    node = container_node
    gpu = gpu_source_for(node, node.settings)
    start_engine(node, "prefill", python="python3", base=0)
    foreign = Foreign(sim_gpu.sim_gpu_dir(node.host_layout), base=1)
    try:
        holding = {p.pid for p in gpu.processes()}
        assert foreign.proc.pid in holding and len(holding) == 2
        [inside] = holding - {foreign.proc.pid}
        scope = kill_scope(node, set())
        assert scope.owned(sorted(holding)) == [inside]
        assert scope.what.startswith(
            f"only GPU processes whose cgroup names container {node.container_name}")
        # the kill of what the container owns, the same path reset_node takes
        g.kill_processes(node.host, [inside])
        assert wait_for(lambda: [p.pid for p in gpu.processes()] == [foreign.proc.pid], 5)
        assert gpu.used_mb()[:2] == [0, 8000]

        with pytest.raises(ResetFailed) as err:
            reset_node(node, node.settings, gpu)
        assert err.value.report.killed == []
        assert [p.pid for p in err.value.report.left_alone] == [foreign.proc.pid]
        assert foreign.proc.poll() is None        # the host's process is never touched
    finally:
        foreign.stop()
