"""Secrets stay secret, end to end: a run through the real CLI on the demo cluster (simulated
engines, the real router, HARNESS_RUNTIME=host) whose wheel comes from the local stand-in for
GitHub's artifact API with a recognisable token, or from a URL carrying credentials.

While it runs, every spawned server's /proc/<pid>/environ is read; afterwards every file under
run/ (both hosts' trees) and the console output are searched. The token (and the URL's password
and query token) may be found in none of them. The token must still have been *used*: the API
stand-in refuses a download without it.

pip installs the stand-in's tiny wheel into a scratch directory (PIP_TARGET), so the test
interpreter is left as it was. Binds the demo's fixed ports: run under the shared lock.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.cli import DEMO_SETTINGS
from tests.fakes.github_api import FakeGitHubAPI, wheel_bytes, zip_bytes

pytestmark = pytest.mark.integration
CASE = "test_1p1d_erdma"
TOKEN = "ghp_RecognisableSecret4e8f0c2a9b7d"
URL_PASSWORD = "UrlPassw0rd7731"
URL_TOKEN = "QueryTok3n5521x"
SERVER_MARKERS = ("sglang.launch_server", "sglang_router", "launch_router")


class EnvironWatcher:
    """Reads the environment of every server process started from `roots` while a run goes."""

    def __init__(self, *roots: Path) -> None:
        self.roots = [str(r) for r in roots]
        self.seen: dict[int, tuple[str, bytes]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        deadline = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < deadline:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
                text = cmdline.decode(errors="replace")
                if any(m in text for m in SERVER_MARKERS) and any(
                        r.encode() in environ or r in text for r in self.roots):
                    self.seen[int(pid)] = (text, environ)
            self._stop.wait(0.05)

    def __enter__(self) -> "EnvironWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def run_case(project: Path, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MOONCAKE_"))}
    env.update(DEMO_SETTINGS)
    env.update({"REMOTE_TEST_DIR": str(tmp_path / "remote-host" / "project"),
                "HARNESS_SIM_FAULTS": "", "TIMEOUT_STOP_S": "5", "GH_TOKEN": "",
                "PIP_TARGET": str(tmp_path / "pip-target"), "PIP_NO_INDEX": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env.update(extra)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return subprocess.run([sys.executable, "-m", "harness", "single", CASE], cwd=project,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


def files_holding(secret: str, *roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                if secret.encode() in path.read_bytes():
                    found.append(str(path))
    return found


def assert_nowhere(secrets: list[str], done, project: Path, remote: Path,
                   watcher: EnvironWatcher) -> None:
    run_trees = [project / "run", remote / "run"]
    assert (project / "run/logs/harness.log").is_file()
    assert (remote / "run/.shrc").is_file()
    # the servers of both hosts (prefill, decode) and the router were seen and read
    kinds = " ".join(text for text, _ in watcher.seen.values())
    assert "disaggregation-mode prefill" in kinds and "disaggregation-mode decode" in kinds, kinds
    assert "router" in kinds, kinds
    for secret in secrets:
        assert secret not in done.stdout, f"{secret} on the console"
        assert files_holding(secret, *run_trees) == [], f"{secret} written under run/"
        leaked = [text[:100] for text, environ in watcher.seen.values()
                  if secret.encode() in environ]
        assert leaked == [], f"{secret} in the environment of {leaked}"


def test_the_token_reaches_no_child_file_or_console(project, tmp_path):
    name, whl = wheel_bytes()
    remote = tmp_path / "remote-host" / "project"
    with FakeGitHubAPI(token=TOKEN) as api:
        api.add("o/r", 7, body=zip_bytes({f"dist/{name}": whl}), redirect=True)
        with EnvironWatcher(project, remote) as watcher:
            done = run_case(project, tmp_path, ARTIFACT_ID="7", GIT_REPO="o/r",
                            GITHUB_API_URL=api.url, GITHUB_TOKEN=TOKEN)
        used = [r for r in api.seen(server="api") if r.header("Authorization")]
    assert done.returncode == 0, done.stdout[-4000:]
    assert used and used[0].header("Authorization") == f"Bearer {TOKEN}"   # it was used
    assert (project / "run/whls" / name).is_file()
    assert_nowhere([TOKEN], done, project, remote, watcher)


def test_credentials_in_a_wheel_url_are_not_written(project, tmp_path):
    name, whl = wheel_bytes()
    remote = tmp_path / "remote-host" / "project"
    with FakeGitHubAPI() as api:
        url = api.add_file(name, whl).replace("http://", f"http://ci:{URL_PASSWORD}@")
        with EnvironWatcher(project, remote) as watcher:
            done = run_case(project, tmp_path, MOONCAKE_WHEEL=f"{url}?token={URL_TOKEN}",
                            GITHUB_TOKEN=TOKEN)
    assert done.returncode == 0, done.stdout[-4000:]
    shrc = (project / "run/.shrc").read_text()
    assert f"/files/{name}" in shrc                         # the URL is there, cleaned
    assert_nowhere([URL_PASSWORD, URL_TOKEN, TOKEN], done, project, remote, watcher)
