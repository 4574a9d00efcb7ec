"""Two-host runs whose remote side is wrong: one line naming host and step, Fail, nothing left.

The remote host is this machine over a real sshd on 127.0.0.2; processes run directly on the
hosts (HARNESS_RUNTIME=host), so no Docker is needed here.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from harness.cli import DEMO_SETTINGS
from tests.sshd import free_port

pytestmark = pytest.mark.ssh
CASE = "test_1p1d_erdma"


@pytest.fixture
def ssh_env(sshd, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MOONCAKE_"))}
    env.update(DEMO_SETTINGS)
    env.update({"HARNESS_REMOTE": "ssh", "REMOTE_IP": sshd.host, "REMOTE_USER": sshd.user,
                "REMOTE_SSH_PORT": str(sshd.port), "REMOTE_SSH_KEY": str(sshd.client_key),
                "SSH_HOST_KEY_POLICY": "accept-new",
                "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
                "REMOTE_TEST_DIR": str(tmp_path / "remote-host" / "project"),
                "HARNESS_SIM_FAULTS": "", "TIMEOUT_STOP_S": "5"})
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return env


def run_case(project, env, **extra):
    return subprocess.run([sys.executable, "-m", "harness", "single", CASE], cwd=project,
                          env={**env, **extra}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def outcome(project):
    logs = project / "run/logs" / CASE
    summary = json.loads((logs / "case_summary.json").read_text())
    return json.loads((logs / "test_results.json").read_text())["status"], summary


def test_passes_over_ssh(project, ssh_env):
    done = run_case(project, ssh_env)
    assert done.returncode == 0, done.stdout[-4000:]
    status, _ = outcome(project)
    assert status == "Pass"
    assert (project / f"run/logs/{CASE}/Qwen__Qwen3-8B/sglang_server_remote.log").exists()


@pytest.mark.parametrize("change,expected", [
    ({"REMOTE_SSH_PORT": "free"}, "cannot reach"),
    ({"REMOTE_USER": "nobody-here"}, "SSH login as nobody-here@"),
    ({"SSH_HOST_KEY_POLICY": "strict"}, "SSH_HOST_KEY_POLICY=strict"),
    ({"REMOTE_TEST_DIR": "/proc/mooncake/ci"}, "cannot create directory /proc/mooncake"),
])
def test_remote_problems_fail_with_host_and_step(project, ssh_env, change, expected):
    change = {k: (str(free_port("127.0.0.2")) if v == "free" else v) for k, v in change.items()}
    done = run_case(project, ssh_env, **change)
    assert done.returncode == 1, done.stdout[-4000:]
    assert "Traceback" not in done.stdout
    status, summary = outcome(project)
    assert status == "Fail"
    assert summary["host"] == "remote" and summary["step"], summary
    assert expected in summary["reason"], summary["reason"]


def test_changed_host_key_is_refused(project, ssh_env, sshd, tmp_path):
    known = tmp_path / "known_hosts"
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(tmp_path / "other")], check=True)
    assert other.returncode == 0
    public = (tmp_path / "other.pub").read_text().split()
    known.write_text(f"[{sshd.host}]:{sshd.port} {public[0]} {public[1]}\n")
    done = run_case(project, ssh_env)
    assert done.returncode == 1
    status, summary = outcome(project)
    assert status == "Fail" and "CHANGED" in summary["reason"] and summary["host"] == "remote"


def engines_on(address: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "launch_server" in text and f"--host {address}" in text:
            found.append(text)
    return found


def test_ssh_connection_dropped_mid_case(project, ssh_env, sshd):
    """The connection dies while the harness waits for the remote decode server: the case fails
    naming the remote host, and the cleanup reconnects to stop what runs there."""
    env = {**ssh_env, "HARNESS_SIM_STARTUP_S": "10"}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "single", CASE], cwd=project,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not engines_on(sshd.host):
            time.sleep(0.2)
        assert engines_on(sshd.host), "the remote decode server never started"
        sshd.drop_connections()
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # let the harness clean up before giving up on it
            proc.terminate()
            proc.wait(60)
    assert proc.returncode == 1, out[-4000:]
    status, summary = outcome(project)
    assert status == "Fail" and summary["host"] == "remote", summary
    assert "lost" in summary["reason"] or "closed" in summary["reason"], summary["reason"]
    assert not engines_on(sshd.host) and not engines_on("127.0.0.1")
