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
    # (a system dir such as /proc is refused by the settings before any host is reached)
    ({"REMOTE_TEST_DIR": "{tmp}/known_hosts/ci"}, "cannot create directory"),
])
def test_remote_problems_fail_with_host_and_step(project, ssh_env, change, expected, tmp_path):
    change = {k: (str(free_port("127.0.0.2")) if v == "free" else v.format(tmp=tmp_path))
              for k, v in change.items()}
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


def engines_under(*dirs) -> list[int]:
    """PIDs of the simulated engines (and their wrappers) started from these project dirs."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            environ = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if ("launch_server" in text or "sglang_router" in text) and any(
                str(d) in text or str(d) in environ for d in dirs):
            found.append(int(pid))
    return found


def wait_for_engine(proc, where, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not engines_under(where) and proc.poll() is None:
        time.sleep(0.1)
    assert engines_under(where), "the remote decode server never started"


def finish(proc, timeout_s=240):
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:  # let the harness clean up before giving up on it
            proc.terminate()
            proc.wait(60)
    return out


def test_ssh_connection_blips_mid_case(project, ssh_env, sshd):
    """Every connection is cut, three times, while servers start and run: the harness either
    reconnects and passes, or fails naming the remote host; nothing is left on either host."""
    remote_dir = ssh_env["REMOTE_TEST_DIR"]
    env = {**ssh_env, "HARNESS_SIM_STARTUP_S": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "single", CASE], cwd=project,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_engine(proc, remote_dir)
    for _ in range(3):
        sshd.drop_connections()
        time.sleep(0.7)
    out = finish(proc)
    status, summary = outcome(project)
    assert proc.returncode == (0 if status == "Pass" else 1), out[-4000:]
    if status == "Fail":
        assert summary["host"] == "remote", summary
    assert not engines_under(project, remote_dir)


def test_remote_host_gone_mid_case(project, ssh_env, tmp_path):
    """The remote sshd goes away while the decode server starts: the case fails naming the
    remote host and step; everything local is stopped; what runs over there is reported."""
    from tests.sshd import Sshd
    own = Sshd(tmp_path / "own-sshd").start()
    remote_dir = ssh_env["REMOTE_TEST_DIR"]
    env = {**ssh_env, "HARNESS_SIM_STARTUP_S": "30", "REMOTE_SSH_PORT": str(own.port),
           "REMOTE_SSH_KEY": str(own.client_key)}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "single", CASE], cwd=project,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    decode_pid = tmp_path / "remote-host/project/run/pids" / CASE / "decode.pid"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not decode_pid.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert decode_pid.exists(), "the remote decode server was never spawned"
        own.stop()
        started = time.monotonic()
        out = finish(proc, 120)
        assert time.monotonic() - started < 60
        assert proc.returncode == 1, out[-4000:]
        status, summary = outcome(project)
        assert status == "Fail" and summary["host"] == "remote" and summary["step"]
        assert "cannot reach" in summary["reason"] or "lost" in summary["reason"]
        assert any("could not stop" in e and "on remote" in e for e in summary["cleanup_errors"])
        assert not engines_under(project)
    finally:
        own.stop()
        for pid in engines_under(remote_dir):  # the harness could not reach them; we can
            os.kill(pid, 15)
