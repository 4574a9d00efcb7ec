"""Nothing outlives its case, whoever started it (issue 7, item 2), through the real thing.

The demo through the real CLI (SIGTERM during the HiCache payload; SIGKILL of the whole harness
while servers run, then the next run's start and `invoke clean`), and the marker sweep inside a
Docker container and over a real SSH connection. Only processes carrying the run's marker may
go: an unrelated process the test starts in a session of its own must still be alive.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path, PurePosixPath

import pytest

from harness.hosts import procs

from harness.hosts.nodes import HostNode
from tests.simproc import demo_env, wait_for

pytestmark = pytest.mark.integration
HICACHE = "test_hicache_storage_mooncake_backend"
PD = "test_1p1d_erdma"


# --- what runs on this machine ----------------------------------------------------------------
def marked(*owners: object) -> dict[int, str]:
    """PID → command line of every process here whose environment names one of `owners`."""
    wanted = {f"{procs.OWNER}={o}".encode() for o in owners}
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if environ & wanted:
            found[int(pid)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2][:1] not in ("Z", "X")
    except OSError:
        return False


def harness(project: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    """The real CLI, in a session of its own (as nox starts it)."""
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.fixture
def bystander():
    """An unrelated process in its own session; it must survive every sweep."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait(5)


@pytest.fixture
def leftovers_killed():
    """Whatever still carries a test's owners after it is killed, so a failure leaks nothing."""
    owners: list[object] = []
    yield owners
    for pid in marked(*owners) if owners else {}:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_sigterm_during_the_hicache_payload_leaves_nothing(project, tmp_path, bystander,
                                                           leftovers_killed):
    env = demo_env(tmp_path / "remote-host" / "project", HARNESS_SIM_STARTUP_S="3")
    owners = [project, env["REMOTE_TEST_DIR"]]
    leftovers_killed.extend(owners)
    run = harness(project, env, "demo")
    try:
        # The payload's own Mooncake master runs (started in a session of its own).
        master = wait_for(lambda: [pid for pid, cmd in marked(project).items()
                                   if "--rpc_port=" in cmd], timeout_s=120, step_s=0.1)
        assert master, f"no Mooncake master of the payload came up:\n{run.stdout.read()}"
        assert os.getsid(master[0]) != os.getsid(run.pid)
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(5)
    assert run.returncode != 0, output[-3000:]
    assert wait_for(lambda: not marked(*owners), timeout_s=5), marked(*owners)
    assert bystander.poll() is None
    assert "Fail" in (project / f"run/logs/{HICACHE}/test_results.json").read_text()


def start_pd_and_kill_the_harness(project: Path, env: dict[str, str]) -> dict[int, str]:
    """Run the PD case until its servers run on both nodes, then SIGKILL the harness's whole
    process group (the servers, in sessions of their own, stay): what was left."""
    run = harness(project, env, "single", PD)
    try:
        def both_nodes_serving() -> bool:
            return all(any("launch_server" in cmd for cmd in marked(o).values())
                       for o in (project, env["REMOTE_TEST_DIR"]))
        assert wait_for(both_nodes_serving, timeout_s=120, step_s=0.1), run.stdout.read()
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(5)
    left = marked(project, env["REMOTE_TEST_DIR"])
    assert left and all(alive(pid) for pid in left)
    return left


def test_sigkilled_run_leftovers_are_stopped_by_the_next_run_and_by_clean(
        project, tmp_path, bystander, leftovers_killed):
    env = demo_env(tmp_path / "remote-host" / "project", HARNESS_SIM_STARTUP_S="60",
                   TIMEOUT_SERVER_READY_S="120")
    leftovers_killed.extend([project, env["REMOTE_TEST_DIR"]])
    # Another checkout's process, marked as its own: never ours to stop.
    other_checkout = subprocess.Popen(
        ["sleep", "300"], start_new_session=True,
        env={**os.environ, **procs.marker(str(tmp_path / "elsewhere"), "r0", PD)})
    try:
        left = start_pd_and_kill_the_harness(project, env)
        # The next run's start stops them (its own servers then start and pass).
        env_next = {**env, "HARNESS_SIM_STARTUP_S": "0.5"}
        done = subprocess.run([sys.executable, "-m", "harness", "single", PD], cwd=project,
                              env=env_next, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:]
        assert not any(alive(pid) for pid in left)
        assert "stopped what an earlier run left running" in (
            project / "run/logs/harness.log").read_text()

        left = start_pd_and_kill_the_harness(project, env)
        cleaned = subprocess.run(
            [sys.executable, "-c", "from harness.prep.manual import clean; "
             "from harness.settings import Settings; clean(Settings.from_env(), wheels=False)"],
            cwd=project, env={**env, "HARNESS_RUNTIME": "host", "HARNESS_REMOTE": "local"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        assert cleaned.returncode == 0, cleaned.stdout
        assert wait_for(lambda: not any(alive(pid) for pid in left), timeout_s=5)
        assert bystander.poll() is None and other_checkout.poll() is None
    finally:
        other_checkout.kill()
        other_checkout.wait(5)


# --- the sweep on the other transports --------------------------------------------------------
ESCAPING = ["bash", "-c", "setsid sleep 300 & sleep 300"]   # a child in a session of its own


def check_sweep(node, case: str, pids_in_node) -> None:
    """Spawn a server whose child leaves its session; sweeping the case stops both, and
    nothing unmarked."""
    node.run_id = f"r-{uuid.uuid4().hex[:8]}"
    log = node.layout.case_logs(case) / "escaping.log"
    node.spawn("escaping", ESCAPING, case=case, log=log)
    assert wait_for(lambda: len(pids_in_node("sleep 300")) >= 2, timeout_s=10)
    found = node.sweep(case=case, run_id=node.run_id, timeout_s=5)
    assert len(found) >= 3, found                 # the wrapper, its sleep, the escaped sleep
    assert all("(killed)" not in entry for entry in found)
    assert wait_for(lambda: not pids_in_node("sleep 300"), timeout_s=5)


@pytest.mark.docker
def test_sweep_inside_a_docker_container(docker_client, test_image, tmp_path):
    from harness.containers.node import ContainerNode
    from harness.hosts.local import LocalHost
    from harness.settings import Settings
    name = f"mh-test-{uuid.uuid4().hex[:10]}"
    settings = Settings.from_env({
        "CONTAINER_NAME": name, "MODEL_CACHE": str(tmp_path / "cache"), "RDMA_DEVICES": "",
        "CONTAINER_PRIVILEGED": "false", "CONTAINER_MEMLOCK": "0", "CONTAINER_GPUS": "none",
        "CONTAINER_SHM_SIZE": "1g", "INSTALL_ERDMA": "false"})
    (tmp_path / "project").mkdir()
    node = ContainerNode(settings, LocalHost(), tmp_path / "project")
    try:
        node.start(test_image, f"mh-test-{uuid.uuid4().hex[:8]}")
        container = docker_client.containers.get(name)
        container.exec_run(["sleep", "301"], detach=True)   # unmarked, in the same container

        def pids_in_node(text: str) -> list[str]:
            listing = node.exec(["bash", "-c", 'for p in /proc/[0-9]*; do '
                                 'echo "${p#/proc/} $(tr "\\0" " " < $p/cmdline)"; done'],
                                check=False).output
            return [line for line in listing.splitlines() if text in line]
        check_sweep(node, "c1", pids_in_node)
        assert pids_in_node("sleep 301")
    finally:
        node.remove()
        node.close()


@pytest.mark.ssh
def test_sweep_over_ssh(remote_settings, tmp_path, bystander):
    from harness.hosts.ssh import SSHHost
    settings = remote_settings()
    host = SSHHost(settings, settings.remote_ip)
    root = PurePosixPath(str(tmp_path / "remote-root"))
    try:
        node = HostNode(host, root, "remote")

        def pids_in_node(text: str) -> list[int]:
            return [pid for pid, cmd in marked(root).items() if text in cmd]
        check_sweep(node, "c1", pids_in_node)
        assert bystander.poll() is None
    finally:
        host.close()
