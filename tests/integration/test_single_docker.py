"""run-single end to end on the real Docker engine, with the simulated engines in the container.

The harness runs from a copy of the project (its own run/ tree) as `python -m harness`, exactly as
`nox -s single -- <case>` runs it.
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.docker


def harness_env(container: str, image: str, **extra) -> dict:
    """Every setting the run relies on, explicitly (this machine exports its own CONTAINER_NAME)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MOONCAKE_"))}
    env.update({
        "CONTAINER_NAME": container, "HARNESS_RUNTIME": "docker", "HARNESS_SIM": "true",
        "HARNESS_SIM_STARTUP_S": "0.5", "HARNESS_SIM_FAULTS": "",
        "REGISTRY_ADDR_SGLANG": image, "IMAGE_PULL": "never", "CONTAINER_GPUS": "none",
        "CONTAINER_PRIVILEGED": "false", "CONTAINER_MEMLOCK": "0", "CONTAINER_SHM_SIZE": "1g",
        "INSTALL_ERDMA": "false", "USE_HUGGINGFACE_MIRROR": "false", "TIMEOUT_STOP_S": "5",
        "ARTIFACT_ID": "", "MOONCAKE_WHEEL": "",
        "PREFLIGHT_MAX_BYTES": str(1 << 20),  # the pre-flight runs, its ladder kept short
    })
    env.update(extra)
    return env


def run_harness(project, env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def result(project, case):
    return json.loads((project / f"run/logs/{case}/test_results.json").read_text())["status"]


def summary(project, case):
    return json.loads((project / f"run/logs/{case}/case_summary.json").read_text())


def containers_named(client, name):
    return client.containers.list(all=True, filters={"name": f"^{name}$"})


def assert_stopped_not_removed(client, name) -> None:
    """The end of a run stops its container (issue 8 item 6): it is there to look inside,
    and nothing runs in it."""
    found = containers_named(client, name)
    assert [c.status for c in found] == ["exited"], f"{name}: {[c.status for c in found]}"


def no_process_under(project) -> list[str]:
    """Processes on this machine whose command line mentions the project copy."""
    found = []
    for cmdline in os.listdir("/proc"):
        if not cmdline.isdigit():
            continue
        try:
            text = open(f"/proc/{cmdline}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(project) in text:
            found.append(text)
    return found


@pytest.fixture
def container_name(docker_client):
    name = f"mh-test-{uuid.uuid4().hex[:8]}"
    yield name
    for container in containers_named(docker_client, name):
        container.remove(force=True)


def test_hicache_passes_with_the_real_wheel_installed(project, container_name, test_image,
                                                      docker_client, mooncake_wheel):
    env = harness_env(container_name, test_image, MOONCAKE_WHEEL=str(mooncake_wheel))
    done = run_harness(project, env, "single", "test_hicache_storage_mooncake_backend.sh")
    case = "test_hicache_storage_mooncake_backend"
    assert done.returncode == 0, done.stdout[-3000:]
    assert result(project, case) == "Pass"
    log = (project / f"run/logs/{case}/{case}.log").read_text()
    assert "passed" in log
    assert list((project / "run/whls").glob("mooncake_transfer_engine*.whl"))
    assert summary(project, case)["steps_s"]["run payload"] > 0
    assert_stopped_not_removed(docker_client, container_name)
    assert not no_process_under(project)


def test_payload_crash_fails_with_a_reason_and_leaves_nothing_running(project, container_name,
                                                              test_image, docker_client):
    env = harness_env(container_name, test_image, HARNESS_SIM_FAULTS="payload:crash")
    done = run_harness(project, env, "single", "test_hicache_storage_mooncake_backend")
    case = "test_hicache_storage_mooncake_backend"
    assert done.returncode == 1, done.stdout[-3000:]
    assert result(project, case) == "Fail"
    assert "payload exited with status" in summary(project, case)["reason"]
    assert "payload:crash" in done.stdout  # the log tail is shown on the console
    assert_stopped_not_removed(docker_client, container_name)
    assert not no_process_under(project)


@pytest.mark.parametrize("case", ["test_disaggregation_different_tp", "test_moe_mooncake"])
def test_other_single_cases_pass(project, container_name, test_image, docker_client, case):
    done = run_harness(project, harness_env(container_name, test_image), "single", case)
    assert done.returncode == 0, done.stdout[-3000:]
    assert result(project, case) == "Pass"


def test_sigterm_stops_the_run_cleanly(project, container_name, test_image, docker_client):
    """SIGTERM mid-case: Fail result, exit 130 within seconds, processes gone, the container
    stopped (not removed)."""
    env = harness_env(container_name, test_image, HARNESS_SIM_STARTUP_S="120")
    proc = subprocess.Popen([sys.executable, "-m", "harness", "single", "test_moe_mooncake"],
                            cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = project / "run/logs/test_moe_mooncake/test_moe_mooncake.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "launch_server" not in _read(log):
        time.sleep(0.2)
    assert "launch_server" in _read(log), "the payload never started its server"
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-3000:]
    assert time.monotonic() - started < 30
    assert result(project, "test_moe_mooncake") == "Fail"
    assert "interrupted" in summary(project, "test_moe_mooncake")["reason"]
    assert_stopped_not_removed(docker_client, container_name)


def _read(path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_sigterm_to_nox_reaches_the_harness(project, container_name, test_image, docker_client):
    """What tone-cli does: SIGTERM to the nox process. The harness must still clean up."""
    env = harness_env(container_name, test_image, HARNESS_SIM_STARTUP_S="120")
    nox = subprocess.Popen([sys.executable, "-m", "nox", "--no-venv", "-s", "single", "--",
                            "test_moe_mooncake"], cwd=project, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = project / "run/logs/test_moe_mooncake/test_moe_mooncake.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "launch_server" not in _read(log):
        time.sleep(0.2)
    assert "launch_server" in _read(log), "the payload never started its server"
    assert docker_client.containers.list(filters={"name": f"^{container_name}$"})
    nox.send_signal(signal.SIGTERM)
    out, _ = nox.communicate(timeout=90)
    assert nox.returncode != 0, out[-3000:]
    assert result(project, "test_moe_mooncake") == "Fail"
    assert "interrupted" in summary(project, "test_moe_mooncake")["reason"]
    assert_stopped_not_removed(docker_client, container_name)
