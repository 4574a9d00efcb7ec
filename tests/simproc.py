"""Started processes for the integration tests: free ports, polling, a process and its log.

A `LoggedProcess` runs in its own session with its output in a log file; `killed_afterwards`
is the body of a `start` fixture: every process the test started is killed (killpg) after it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIM_SITE = ROOT / "sim" / "site"

P = TypeVar("P", bound="LoggedProcess")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, step_s: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; its last value (falsy on a timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    return predicate()


def clean_env(*drop: str) -> dict[str, str]:
    """This process's environment less PYTHONPATH and the variables starting with `drop`."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop) and k != "PYTHONPATH"}


def worker_addresses() -> tuple[str, str]:
    """LOCAL_IP and REMOTE_IP of this test worker's own simulated cluster: 127.0.<B+N>.1 and
    .2 for pytest-xdist worker gwN, so clusters of several workers run side by side on
    loopback (the fixed ports are per address). B is HARNESS_TEST_NET (default 10): a second
    test session on the same machine takes another."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    net = int(os.environ.get("HARNESS_TEST_NET", "10")) + (int(worker) if worker.isdigit() else 0)
    return f"127.0.{net}.1", f"127.0.{net}.2"


def demo_env(remote_root: Path, *, relocated: bool = False, **extra: str) -> dict[str, str]:
    """The demo's settings for a run in a project copy whose second node lives at `remote_root`;
    this environment's own harness variables left out, this interpreter first on PATH (the
    payloads and engines run with `python3`). `relocated`: on this worker's own loopback
    addresses (`worker_addresses`) instead of the demo's 127.0.0.1 and 127.0.0.2."""
    from harness.cli import DEMO_SETTINGS
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MOONCAKE_"))}
    env.update(DEMO_SETTINGS)
    env.update({"REMOTE_TEST_DIR": str(remote_root), "HARNESS_SIM_FAULTS": "",
                "TIMEOUT_STOP_S": "5"})
    if relocated:
        env["LOCAL_IP"], env["REMOTE_IP"] = worker_addresses()
    env.update(extra)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return env


def run_processes(*roots: object) -> dict[int, str]:
    """PID -> command line of every process here that belongs to a run from `roots`: marked
    `HARNESS_OWNER=<root>`, naming a root on its command line, working in one, or writing
    its output into one (an sglang-router's process title overwrites its environment). Never
    a process of another test's run: tests run side by side."""
    owners = {f"HARNESS_OWNER={root}".encode() for root in roots}
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
            out = _readlink(f"/proc/{pid}/fd/1")
        except OSError:
            continue
        if environ & owners or any(str(root) in cmdline or cwd.startswith(str(root))
                                   or out.startswith(str(root)) for root in roots):
            found[int(pid)] = cmdline[:200]
    return found


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


class LoggedProcess:
    """One started process (its own session) and its log."""

    exited = "exited"  # how a death before the awaited line is reported

    def __init__(self, log: Path, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=str(cwd), env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, line: str, timeout: float = 10.0) -> None:
        """Wait for `line` in the log; fail at once if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if line in self.text():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"{self.exited} {self.proc.returncode} before {line!r}:\n"
                            f"{self.text()}")
            time.sleep(0.02)
        pytest.fail(f"no {line!r} within {timeout}s:\n{self.text()}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def terminate(self) -> float:
        """SIGTERM the process group; returns how long the exit took."""
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(5)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)


@contextmanager
def killed_afterwards() -> Iterator[Callable[[P], P]]:
    """Yields `keep(process) -> process`; every process kept is killed on the way out."""
    kept: list[LoggedProcess] = []

    def keep(process: P) -> P:
        kept.append(process)
        return process

    try:
        yield keep
    finally:
        for process in kept:
            process.kill()
