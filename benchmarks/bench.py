"""Timings of the harness itself, printed as figures and ratios (`nox -s bench`).

1. Preparing both hosts at once: the local host (Docker engine here) and the remote host (this
   machine over a real test sshd on 127.0.0.2, the docker CLI over that connection), with the
   real Mooncake wheel installed on both. Parallel wall time against each host's own sum.
2. Readiness and stop latency on a simulated server: how long after its ready line the harness
   notices, and how long a stop takes when the server exits at once.

Needs what tests/provision.sh sets up (Docker engine, test image, wheel cache, sshd).
"""
from __future__ import annotations

import glob
import shutil
import socket
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.prep import environment  # noqa: E402
from harness.prep.environment import Environment  # noqa: E402
from harness.hosts.local import LocalHost  # noqa: E402
from harness.layout import Layout  # noqa: E402
from harness.hosts.nodes import HostNode  # noqa: E402
from harness.servers.server import SGLANG_READY, Server, sglang_ready  # noqa: E402
from harness.settings import Settings  # noqa: E402
from tests.conftest import TEST_IMAGE, WHEEL_CACHE, copy_project  # noqa: E402
from tests.sshd import Sshd  # noqa: E402


def prep_both_hosts(workdir: Path) -> None:
    wheels = sorted(glob.glob(str(WHEEL_CACHE / "mooncake_transfer_engine-*.whl")))
    project = copy_project(workdir / "project")
    sshd = Sshd(workdir / "sshd").start()
    tag = str(int(time.time()))
    settings = Settings.from_env({
        "HARNESS_RUNTIME": "docker", "HARNESS_SIM": "true", "HARNESS_REMOTE": "ssh",
        "CONTAINER_NAME": f"mh-bench-local-{tag}",
        "REMOTE_CONTAINER_NAME": f"mh-bench-remote-{tag}",
        "REGISTRY_ADDR_SGLANG": TEST_IMAGE, "IMAGE_PULL": "never", "CONTAINER_GPUS": "none",
        "CONTAINER_PRIVILEGED": "false", "CONTAINER_MEMLOCK": "0", "CONTAINER_SHM_SIZE": "1g",
        "INSTALL_ERDMA": "false", "MOONCAKE_WHEEL": wheels[-1] if wheels else "",
        "LOCAL_IP": "127.0.0.1", "REMOTE_IP": sshd.host, "REMOTE_USER": sshd.user,
        "REMOTE_SSH_PORT": str(sshd.port), "REMOTE_SSH_KEY": str(sshd.client_key),
        "SSH_KNOWN_HOSTS": str(workdir / "known_hosts"),
        "REMOTE_TEST_DIR": str(workdir / "remote-host" / "project")})
    env = Environment(settings, Layout.at(project), "bench")
    try:
        with ExitStack() as closing, ExitStack() as containers:
            environment.open_nodes(env, closing, needs_remote=True)
            started = time.monotonic()
            environment.prepare(env, containers, "SGLANG")
            wall = time.monotonic() - started
    finally:
        sshd.stop()
    local = sum(v for k, v in env.prep_s.items() if k.startswith("local:"))
    remote = sum(v for k, v in env.prep_s.items() if k.startswith("remote:"))
    print("\n== preparing both hosts (wheel %s) ==" % (Path(wheels[-1]).name if wheels else "-"))
    for name, seconds in env.prep_s.items():
        print(f"  {name:<30} {seconds:7.2f} s")
    print(f"  local steps, summed          {local:7.2f} s")
    print(f"  remote steps, summed         {remote:7.2f} s")
    print(f"  both hosts, wall time        {wall:7.2f} s")
    print(f"  wall / slower host           {wall / max(local, remote):7.2f}"
          "   (1.0 = fully parallel)")
    print(f"  wall / (local + remote)      {wall / (local + remote):7.2f}"
          "   (1.0 = one after the other)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _watch(path: Path, line: str, seen: list[float], limit_s: float = 30) -> None:
    """An independent 1 ms watcher: when did the ready line land in the log?"""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if line in path.read_text():
                seen.append(time.monotonic())
                return
        except FileNotFoundError:
            pass
        time.sleep(0.001)


def readiness_and_stop(workdir: Path, rounds: int = 5) -> None:
    node = HostNode(LocalHost("local", "127.0.0.1"), workdir)
    notice, stops = [], []
    for i in range(rounds):
        port = free_port()
        log = node.layout.case_logs("bench") / f"server{i}.log"
        server = Server(f"server{i}", node, [sys.executable, "-m", "sglang.launch_server",
                                             "--model-path", "m", "--host", "127.0.0.1",
                                             "--port", str(port)], "bench", log,
                        sglang_ready(30, 30), address="127.0.0.1", port=port,
                        env={"HARNESS_SIM_STARTUP_S": "0.3"},
                        pythonpath=[str(ROOT / "sim" / "site")])
        seen: list[float] = []
        watcher = threading.Thread(target=_watch, args=(Path(str(log)), SGLANG_READY, seen))
        server.start()
        watcher.start()
        try:
            server.wait_ready()
            noticed = time.monotonic()
            watcher.join(5)
            notice.append(noticed - seen[0])
        finally:
            started = time.monotonic()
            server.stop(10)
            stops.append(time.monotonic() - started)
    print("\n== readiness and stop (simulated SGLang server, %d rounds) ==" % rounds)
    middle = rounds // 2
    print(f"  ready line -> noticed (incl. GET /health)  median {sorted(notice)[middle]:.3f} s, "
          f"max {max(notice):.3f} s")
    print(f"  stop (TERM, wait for the group)            median {sorted(stops)[middle]:.3f} s, "
          f"max {max(stops):.3f} s   (TIMEOUT_STOP_S is 10 s)")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    try:
        readiness_and_stop(workdir / "servers")
        prep_both_hosts(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
