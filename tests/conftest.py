"""Shared fixtures. Real components (Docker engine, test image, sshd) are found here.

Where they are missing a test skips, except with HARNESS_REQUIRE_REAL=1 (set by .ci/run): then a
missing engine or image fails the run at once with one clear line, and any skip of a test marked
`docker` or `ssh` is turned into a failure.
"""
from __future__ import annotations

import fcntl
import glob
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_IMAGE = os.environ.get("HARNESS_TEST_IMAGE", "mooncake-harness-test:bookworm")
WHEEL_CACHE = Path(os.environ.get("HARNESS_CACHE", "/var/cache/mooncake-harness")) / "wheels"
REQUIRE_REAL = os.environ.get("HARNESS_REQUIRE_REAL", "") not in ("", "0", "false")
REAL_MARKERS = ("docker", "ssh")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def missing(what: str) -> None:
    """Skip, or, where real components are required, fail the whole run with one line."""
    if REQUIRE_REAL:
        pytest.exit(f"HARNESS_REQUIRE_REAL=1 but {what}; run: bash tests/provision.sh",
                    returncode=3)
    pytest.skip(what)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_REAL and report.skipped and any(item.get_closest_marker(m) for m in REAL_MARKERS):
        report.outcome = "failed"
        report.longrepr = (f"HARNESS_REQUIRE_REAL=1: a real-component test may not skip "
                           f"({item.nodeid})")


@pytest.fixture(scope="session")
def docker_client():
    """A client of the real Docker engine, with the offline test image present."""
    try:
        import docker
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine here
        missing(f"the Docker engine does not answer ({type(exc).__name__}: {exc})")
    try:
        client.images.get(TEST_IMAGE)
    except Exception:  # noqa: BLE001
        missing(f"the test image {TEST_IMAGE} is not built")
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(docker_client) -> str:
    return TEST_IMAGE


@pytest.fixture(scope="session")
def junit_schema():
    """The published JUnit schema strict consumers validate with (junit-10.xsd, fetched by
    tests/provision.sh), loaded with xmlschema."""
    path = Path(os.environ.get("HARNESS_CACHE", "/var/cache/mooncake-harness")) / "junit-10.xsd"
    if not path.is_file():
        missing(f"no JUnit schema at {path}")
    import xmlschema
    return xmlschema.XMLSchema(str(path))


@pytest.fixture(scope="session")
def mooncake_wheel() -> Path:
    """The real Mooncake wheel downloaded by tests/provision.sh (its CPU build: the CUDA one
    cannot import mooncake.engine without a driver)."""
    found = sorted(glob.glob(str(WHEEL_CACHE / "mooncake_transfer_engine*.whl")))
    if not found:
        missing(f"no mooncake_transfer_engine(_non_cuda) wheel in {WHEEL_CACHE}")
    return Path(found[-1])


# Integration tests that use the fixed addresses and ports of a real run (the demo's 127.0.0.1
# and 127.0.0.2 with the router on :8000, a docker cluster over the test sshd, the `demo`
# command) run one after the other on one pytest-xdist worker, and hold a machine-wide lock
# while they run (another test session here waits for it). The others run side by side: on
# free ports, or on their worker's own loopback pair (tests/simproc.py `worker_addresses`,
# `demo_env(relocated=True)`).
FIXED_PORT_MODULES = frozenset({
    "test_bad_input", "test_cluster_docker", "test_console", "test_epd_image", "test_keep",
    "test_remote_failures", "test_report_browser", "test_secrets", "test_sim_engine",
    "test_sweep", "test_tasks", "test_vllm_proxy_parity",
})
FIXED_PORT_TESTS = frozenset({  # `harness demo` in a container on the host network
    "test_demo.py::test_demo_on_a_machine_without_the_rdma_libraries",
})
FIXED_PORTS = "fixed_ports"
FIXED_PORTS_LOCK = Path(tempfile.gettempdir()) / "mooncake-harness-fixed-ports.lock"


def uses_fixed_ports(nodeid: str) -> bool:
    path, _, test = nodeid.partition("::")
    name = Path(path).name
    return Path(path).stem in FIXED_PORT_MODULES or f"{name}::{test}" in FIXED_PORT_TESTS


if importlib.util.find_spec("xdist") is not None:  # a hook of xdist's: only where it is
    def pytest_xdist_make_scheduler(config, log):
        """Each test its own unit of work, but the fixed-port tests one unit, on one worker
        (what xdist's `loadgroup` would do; its group marks are lost under pytest 9)."""
        from xdist.scheduler import LoadScopeScheduling

        class FixedPortsTogether(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return FIXED_PORTS if uses_fixed_ports(nodeid) else nodeid

        return FixedPortsTogether(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not uses_fixed_ports(item.nodeid):
        yield
        return
    with open(FIXED_PORTS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes
        yield


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(m) for m in REAL_MARKERS):
            item.add_marker(pytest.mark.integration)


PROJECT_PARTS = ("harness", "cases", "payloads", "sim", "scripts", "pyproject.toml",
                 "noxfile.py", "tasks.py")


def copy_project(dest: Path) -> Path:
    """A copy of the project tree, so a test's run/ never touches the checkout's."""
    import shutil
    dest.mkdir(parents=True, exist_ok=True)
    for part in PROJECT_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / part)
    return dest


@pytest.fixture
def project(tmp_path) -> Path:
    return copy_project(tmp_path / "project")


# --- the "remote" host: a real sshd on 127.0.0.2 (tests/sshd.py) --------------------------------
@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.2 for the whole session: host, port, user (root), client_key,
    known_hosts (an empty file), host_key. Stopped by PID at the end."""
    from tests.sshd import Sshd, available
    why = available()
    if why:
        missing(f"no test sshd: {why}")
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def remote_settings(sshd, tmp_path):
    """Builds Settings for reaching `sshd` from an explicit dict (never the machine's env):
    `remote_settings(SSH_HOST_KEY_POLICY="strict", ...)`. Defaults: accept-new with a
    known_hosts file of this test's own, REMOTE_TEST_DIR under tmp_path."""
    from harness.settings import Settings

    def build(server=None, **env: str):
        server = server or sshd
        values = {
            "REMOTE_IP": server.host, "LOCAL_IP": "127.0.0.1",
            "REMOTE_USER": server.user, "REMOTE_SSH_PORT": str(server.port),
            "REMOTE_SSH_KEY": str(server.client_key),
            "SSH_HOST_KEY_POLICY": "accept-new",
            "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
            "SSH_CONFIG": str(tmp_path / "no_ssh_config"),   # never this machine's own
            "REMOTE_TEST_DIR": str(tmp_path / "remote_test_dir"),
        }
        values.update({k: str(v) for k, v in env.items()})
        return Settings.from_env(values)
    return build


# --- no test leaves a process behind -------------------------------------------------------------
_BEFORE: set[int] = set()
LEFTOVER_GRACE_S = 5.0


def _is_controller() -> bool:
    return not os.environ.get("PYTEST_XDIST_WORKER")


def pytest_sessionstart(session):
    if _is_controller():
        _BEFORE.update(int(p) for p in os.listdir("/proc") if p.isdigit())


def _ours(pid: int, roots: tuple[str, ...]) -> str | None:
    """The command line of a live process working in, or named after, one of `roots`."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, IndexError):
        return None
    if state in ("Z", "X"):
        return None
    return cmdline[:200] if any(cwd.startswith(r) or r in cmdline for r in roots) else None


def pytest_sessionfinish(session, exitstatus):
    """Once every test (every worker) is done: a process a test started in this checkout or a
    test's temp dir and left running fails the run, named."""
    if not _is_controller() or not _BEFORE:
        return
    import time
    roots = (str(ROOT), str(session.config._tmp_path_factory.getbasetemp()))
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while True:
        me = os.getpid()
        left = {pid: cmd for pid in (int(p) for p in os.listdir("/proc") if p.isdigit())
                if pid not in _BEFORE and pid != me
                for cmd in [_ours(pid, roots)] if cmd}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if left:
        print("\nprocesses left running by the tests:\n" + "\n".join(
            f"  {pid}: {cmd}" for pid, cmd in sorted(left.items())))
        session.exitstatus = 1
