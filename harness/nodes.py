"""Nodes: a host plus the place processes run on it (SPEC §5, §6).

A `Node` can `exec` a command, `spawn` a background server into a log file (own process group,
PID file, exit-status file), tell whether a process group is alive, `stop` one (TERM, wait up to
`TIMEOUT_STOP_S`, KILL) and `reset`. `HostNode` runs directly on its host; `ContainerNode`
(harness.container) runs inside a Docker container on it.

Paths handed to a node are in the node's view (`node.layout`); `node.on_host(path)` is the same
file as the host sees it, so logs and PID files are read from the host's disk, not by a command
per poll.
"""
from __future__ import annotations

import glob
import time
import shlex
import signal
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Mapping, Sequence

from harness.errors import CommandFailed, HarnessError
from harness.hosts import Completed, LocalHost
from harness.layout import Layout

SPAWN_PID_WAIT_S = 10.0
TIMEOUT_ORPHAN_STOP_S = 5.0

# A group is alive while one of its members is not a zombie: on hosts whose init reaps slowly
# `kill -0` still succeeds for a group of zombies, so read the states from /proc instead.
_GROUP_ALIVE = r"""
group_alive() {
  # "pgrp state" of every process (the comm field may hold spaces: cut after its last ')').
  sed -n 's/^.*) \([^ ]*\) [^ ]* \([^ ]*\) .*$/\2 \1/p' /proc/[0-9]*/stat 2>/dev/null \
    | grep -q "^$pg [^ZX]"
}
"""

# Waits for a group to go after TERM, in steps of 50 ms; KILL when the steps run out.
_STOP_SCRIPT = _GROUP_ALIVE + r"""
pg=$1; steps=$2
group_alive || exit 0
kill -TERM -- "-$pg" 2>/dev/null
for ((i = 0; i < steps; i++)); do
  group_alive || exit 0
  sleep 0.05
done
kill -KILL -- "-$pg" 2>/dev/null
echo killed
"""

_ALIVE_SCRIPT = _GROUP_ALIVE + 'pg=$1; group_alive'


@dataclass(frozen=True)
class Spawned:
    """A background process group started by a node."""
    node: "Node"
    service: str
    pgid: int
    log: PurePosixPath        # node view
    pid_file: PurePosixPath   # node view
    exit_file: PurePosixPath  # node view

    def exit_code(self) -> int | None:
        """The exit status once the service exited by itself; None while it runs (or was killed)."""
        path = self.node.on_host(self.exit_file)
        if not self.node.host.exists(path):
            return None
        text = self.node.host.read_text(path).strip()
        return int(text) if text.lstrip("-").isdigit() else -1

    def log_tail(self, lines: int = 30) -> str:
        text = self.node.host.read_tail(self.node.on_host(self.log))
        return "\n".join(text.splitlines()[-lines:])


def shell_script(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: object = None, pythonpath: Sequence[str] = ()) -> str:
    """One bash line that runs argv with env, cwd and PYTHONPATH prefix; every value quoted."""
    parts = []
    if cwd:
        parts.append(f"cd {shlex.quote(str(cwd))} &&")
    if pythonpath:
        joined = shlex.quote(":".join(str(p) for p in pythonpath))
        parts.append(f"PYTHONPATH={joined}${{PYTHONPATH:+:$PYTHONPATH}}")
    words = list(argv)
    if env:
        words = ["env", *[f"{k}={v}" for k, v in env.items()], *words]
    parts.append("exec " + shlex.join(words))
    return " ".join(parts)


class Node:
    """Base: everything is built on `exec`; subclasses say how a command runs."""

    name: str            # "local" / "remote": how errors and logs refer to it
    host: LocalHost      # the machine (its files are read with it)
    layout: Layout       # the project as processes on this node see it
    host_layout: Layout  # the project as the host sees it

    @property
    def address(self) -> str:
        return self.host.address

    def exec(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
             cwd: object = None, pythonpath: Sequence[str] = (), timeout: float | None = None,
             check: bool = True) -> Completed:
        if env or cwd or pythonpath:
            argv = ["bash", "-c", shell_script(argv, env=env, cwd=cwd, pythonpath=pythonpath)]
        return self._run(list(argv), timeout=timeout, check=check)

    def _run(self, argv: list[str], *, timeout: float | None, check: bool) -> Completed:
        raise NotImplementedError

    def on_host(self, path: object) -> PurePosixPath:
        return self.layout.translate(path, self.host_layout)

    # --- background servers -------------------------------------------------------------------
    def spawn(self, service: str, argv: Sequence[str], *, case: str, log: PurePosixPath,
              env: Mapping[str, str] | None = None, cwd: object = None,
              pythonpath: Sequence[str] = ()) -> Spawned:
        """Start argv in its own process group, output to `log`; returns once its PID is known."""
        pid_file = self.layout.pid_file(case, service)
        exit_file = self.layout.exit_file(case, service)
        for path in (pid_file, exit_file):
            self.host.remove(self.on_host(path))
        self.host.mkdir(self.on_host(pid_file.parent))
        self.host.mkdir(self.on_host(log.parent))
        inner = (f"{shell_script(argv, env=env, cwd=cwd, pythonpath=pythonpath)}"
                 f" >> {shlex.quote(str(log))} 2>&1 < /dev/null")
        # The wrapper bash leads the new session (pgid == its pid). It records its own PID
        # before anything else, so a command lost on the way (a dropped SSH connection) still
        # leaves a PID to stop; then it records the exit status.
        pid_q, tmp_q = shlex.quote(str(pid_file)), shlex.quote(f"{pid_file}.tmp")
        wrapper = (f"echo $$ > {tmp_q} && mv -f {tmp_q} {pid_q}; ( {inner} ); "
                   f"echo $? > {shlex.quote(str(exit_file))}")
        outer = f"setsid bash -c {shlex.quote(wrapper)} > /dev/null 2>&1 < /dev/null &"
        try:
            self.exec(["bash", "-c", outer], timeout=30)
        except HarnessError:
            started = self._spawned_pid(pid_file, wait_s=3.0, quiet=True)
            if started:  # it did start: do not leave it behind
                self.stop(Spawned(self, service, started, log, pid_file, exit_file),
                          TIMEOUT_ORPHAN_STOP_S)
            raise
        pgid = self._spawned_pid(pid_file, wait_s=SPAWN_PID_WAIT_S)
        if not pgid:
            raise HarnessError(f"spawn of {service} wrote no PID to {pid_file} within "
                               f"{SPAWN_PID_WAIT_S:.0f}s", host=self.name, server=service)
        return Spawned(self, service, pgid, log, pid_file, exit_file)

    def _spawned_pid(self, pid_file: PurePosixPath, wait_s: float,
                     quiet: bool = False) -> int | None:
        """The PID the spawn wrapper recorded, polled for up to wait_s; None if none came.
        `quiet`: a host that cannot be read also means None (we are already failing)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                text = self.host.read_text(self.on_host(pid_file)).strip()
            except FileNotFoundError:
                text = ""
            except HarnessError:
                if not quiet:
                    raise
                return None
            if text.isdigit():
                return int(text)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def alive(self, pgid: int) -> bool:
        done = self.exec(["bash", "-c", _ALIVE_SCRIPT, "alive", str(int(pgid))],
                         check=False, timeout=30)
        return done.ok

    def signal(self, pgid: int, sig: int = signal.SIGTERM) -> None:
        self.exec(["bash", "-c", f"kill -{int(sig)} -- -{int(pgid)}"], check=False, timeout=30)

    def stop(self, proc: Spawned, timeout_s: float) -> bool:
        """TERM the group, wait until it is gone (at most timeout_s), then KILL. True if killed."""
        steps = max(1, int(timeout_s / 0.05))
        done = self.exec(["bash", "-c", _STOP_SCRIPT, "stop", str(proc.pgid), str(steps)],
                         check=False, timeout=timeout_s + 30)
        self.host.remove(self.on_host(proc.pid_file))
        return "killed" in done.output

    def stop_all(self, case: str | None, timeout_s: float) -> list[str]:
        """Stop every group with a PID file (of one case, or all); returns the services stopped."""
        root = self.layout.case_pids(case) if case else self.layout.pids
        host_root = self.on_host(root)
        stopped = []
        for pid_path in sorted(_find_pid_files(self.host, host_root)):
            text = self.host.read_text(pid_path).strip()
            service = PurePosixPath(str(pid_path)).stem
            view = self.host_layout.translate(pid_path, self.layout)
            if text.isdigit():
                proc = Spawned(self, service, int(text), view, view, view.with_suffix(".exit"))
                self.stop(proc, timeout_s)
                stopped.append(service)
            else:
                self.host.remove(pid_path)
        return stopped

    def reset(self, timeout_s: float) -> None:
        """Between cases: stop whatever this run left on the node."""
        self.stop_all(None, timeout_s)

    def close(self) -> None:
        """Release what the node holds open; idempotent."""


def _find_pid_files(host: LocalHost, root: PurePosixPath) -> list[str]:
    if not host.exists(root):
        return []
    found = host.run(["find", str(root), "-name", "*.pid", "-type", "f"], check=False)
    return [line for line in found.output.splitlines() if line.strip()]


class ContainerBase(Node):
    """What a container node adds, on this machine (docker SDK) or a remote one (docker CLI)."""

    container_name: str

    def running(self) -> bool:
        raise NotImplementedError

    def restart(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def pull(self, image: str, policy: object) -> object:
        """Make `image` present on the node's host as IMAGE_PULL says."""
        raise NotImplementedError

    def container_id(self) -> str:
        """The container's full id (what /proc/<pid>/cgroup of its processes names)."""
        raise NotImplementedError

    def reset(self, timeout_s: float) -> None:
        """Between cases: stop this run's process groups, then restart the container."""
        if self.running():
            self.stop_all(None, timeout_s)
        else:
            for pid_path in _find_pid_files(self.host, self.on_host(self.layout.pids)):
                self.host.remove(pid_path)
        self.restart()


class HostNode(Node):
    """Processes run directly on the host (the demo, bare-metal users, HARNESS_RUNTIME=host)."""

    def __init__(self, host: LocalHost, project_root: object, name: str | None = None) -> None:
        self.host = host
        self.name = name or host.name
        self.layout = Layout.at(project_root)
        self.host_layout = self.layout

    def _run(self, argv: list[str], *, timeout: float | None, check: bool) -> Completed:
        try:
            return self.host.run(argv, timeout=timeout, check=check)
        except CommandFailed as exc:
            exc.at(host=self.name)
            raise

    def alive(self, pgid: int) -> bool:
        if type(self.host) is LocalHost:
            return local_group_alive(pgid)
        return super().alive(pgid)


def local_group_alive(pgid: int) -> bool:
    """True while a process of group `pgid` on this machine is not a zombie."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                fields = fh.read().rpartition(") ")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False
