"""Nodes: a host plus the place processes run on it (SPEC §5, §6).

A `Node` can `exec` a command, `spawn` a background server into a log file (own process group,
PID file, exit-status file), tell whether a process group is alive, `stop` one (TERM, wait up to
`TIMEOUT_STOP_S`, KILL) and `reset`. `HostNode` runs directly on its host; `ContainerNode`
(harness.containers.node) runs inside a Docker container on it.

Paths handed to a node are in the node's view (`node.layout`); `node.on_host(path)` is the same
file as the host sees it, so logs and PID files are read from the host's disk, not by a command
per poll.
"""
from __future__ import annotations

import glob
import logging
import shlex
import signal
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Mapping, Sequence

from harness.hosts import procs
from harness.hosts.argv import with_env
from harness.errors import CommandFailed, HarnessError
from harness.hosts.local import Completed, LocalHost
from harness.layout import Layout
from harness.waiting import wait_until

log = logging.getLogger(__name__)

SPAWN_PID_WAIT_S = 10.0
SPAWN_PID_POLL_S = 0.02
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

# Signals a group only while it is the one recorded: its leader is the same process (same start
# time, field 22 of /proc/<pid>/stat) carrying our marker, or, the leader gone, a member carries
# the marker (the kernel gives no new process a number its live group still uses). Then TERM,
# wait (`steps` of 50 ms in all), KILL when the steps run out.
_STOP_SCRIPT = _GROUP_ALIVE + r"""
pg=$1; steps=$2; start=$3; owner=$4
marked() { [ -z "$owner" ] || grep -qzxF -- "HARNESS_OWNER=$owner" "/proc/$1/environ" 2>/dev/null; }
ours() {
  local stat=""
  read -r stat < "/proc/$pg/stat" 2>/dev/null
  stat=${stat##*) }
  if [ -n "$stat" ] && [ "${stat:0:1}" != Z ]; then  # the leader runs: is it the one recorded?
    set -- $stat
    [ -z "$start" ] || [ "${20}" = "$start" ] || return 1
    marked "$pg"
    return
  fi
  local g s p
  while read -r g s p; do
    [ "$g" = "$pg" ] && [ "$s" != Z ] && marked "$p" && return 0
  done < <(sed -n 's/^\([0-9]*\) (.*) \([^ ]*\) [^ ]* \([^ ]*\) .*$/\3 \2 \1/p' \
             /proc/[0-9]*/stat 2>/dev/null)
  return 1
}
group_alive || exit 0
ours || { echo stale; exit 0; }
kill -TERM -- "-$pg" 2>/dev/null
for ((i = 0; i < steps + 16; i++)); do  # most servers go within 0.2 s: look every 10 ms till then
  group_alive || exit 0
  if ((i < 20)); then sleep 0.01; else sleep 0.05; fi
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
    start: str = ""           # the leader's start time (/proc/<pid>/stat field 22); "" unknown

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


def read_pid_file(text: str) -> tuple[int, str] | None:
    """A PID file's `pid starttime` (or an older file's bare `pid`, start "") → (pid, start);
    None for anything else."""
    words = text.split()
    if not 1 <= len(words) <= 2 or not all(w.isdigit() for w in words):
        return None
    return int(words[0]), words[1] if len(words) == 2 else ""


def shell_script(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: object = None, pythonpath: Sequence[str] = ()) -> str:
    """One bash line that runs argv with env, cwd and PYTHONPATH prefix; every value quoted."""
    parts = []
    if cwd:
        parts.append(f"cd {shlex.quote(str(cwd))} &&")
    if pythonpath:
        joined = shlex.quote(":".join(str(p) for p in pythonpath))
        parts.append(f"PYTHONPATH={joined}${{PYTHONPATH:+:$PYTHONPATH}}")
    parts.append("exec " + shlex.join(with_env(argv, env)))
    return " ".join(parts)


class Node:
    """Base: everything is built on `exec`; subclasses say how a command runs."""

    name: str            # "local" / "remote": how errors and logs refer to it
    run_id: str | None = None  # set when a run opens its nodes; goes into the marker
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

    @property
    def owner(self) -> str:
        """HARNESS_OWNER of what this node starts: its project root as its processes see it."""
        return str(self.layout.root)

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
        # It records "pid starttime", so a later stop can tell it from a process that got the
        # same number after a reboot. Everything it starts inherits the marker (hosts.procs).
        pid_q, tmp_q = shlex.quote(str(pid_file)), shlex.quote(f"{pid_file}.tmp")
        wrapper = ('read -r s < /proc/$$/stat; s=${s##*) }; set -- $s; '
                   f'echo "$$ ${{20}}" > {tmp_q} && mv -f {tmp_q} {pid_q}; ( {inner} ); '
                   f"echo $? > {shlex.quote(str(exit_file))}")
        mark = procs.marker_prefix(self.owner, self.run_id, case)
        outer = f"setsid {mark} bash -c {shlex.quote(wrapper)} > /dev/null 2>&1 < /dev/null &"
        try:
            self.exec(["bash", "-c", outer], timeout=30)
        except HarnessError:
            started = self._spawned_pid(pid_file, wait_s=3.0, quiet=True)
            if started:  # it did start: do not leave it behind
                self.stop(Spawned(self, service, *started[:1], log, pid_file, exit_file,
                                  started[1]), TIMEOUT_ORPHAN_STOP_S)
            raise
        recorded = self._spawned_pid(pid_file, wait_s=SPAWN_PID_WAIT_S)
        if not recorded:
            raise HarnessError(f"spawn of {service} wrote no PID to {pid_file} within "
                               f"{SPAWN_PID_WAIT_S:.0f}s", host=self.name, server=service)
        pgid, start = recorded
        return Spawned(self, service, pgid, log, pid_file, exit_file, start)

    def _spawned_pid(self, pid_file: PurePosixPath, wait_s: float,
                     quiet: bool = False) -> tuple[int, str] | None:
        """(PID, start time) the spawn wrapper recorded, polled for up to wait_s; None if none.
        `quiet`: a host that cannot be read also means None (we are already failing)."""
        found: list[tuple[int, str]] = []

        def recorded() -> tuple[bool, str]:
            try:
                text = self.host.read_text(self.on_host(pid_file)).strip()
            except FileNotFoundError:
                text = ""
            value = read_pid_file(text)
            found[:] = [value] if value else []
            return bool(found), "no PID recorded yet"

        try:
            wait_until(recorded, timeout_s=wait_s, poll_s=SPAWN_PID_POLL_S,
                       awaited=f"the PID file {pid_file.name} on {self.name}")
        except HarnessError:
            if not quiet:
                raise
        return found[0] if found else None

    def alive(self, pgid: int) -> bool:
        done = self.exec(["bash", "-c", _ALIVE_SCRIPT, "alive", str(int(pgid))],
                         check=False, timeout=30)
        return done.ok

    def signal(self, pgid: int, sig: int = signal.SIGTERM) -> None:
        self.exec(["bash", "-c", f"kill -{int(sig)} -- -{int(pgid)}"], check=False, timeout=30)

    def stop(self, proc: Spawned, timeout_s: float) -> bool:
        """TERM the group, wait until it is gone (at most timeout_s), then KILL. True if killed.
        A group that is no longer the one recorded (see `_STOP_SCRIPT`) is not signalled."""
        outcome = self._stop_group(proc, timeout_s)
        if outcome == "stale":
            log.warning("%s: %s: pid %d is no longer the process started (not signalled)",
                        self.name, proc.service, proc.pgid)
        return outcome == "killed"

    def _stop_group(self, proc: Spawned, timeout_s: float) -> str:
        """'killed', 'stale' (not ours: left alone) or '' (gone, or went on TERM)."""
        steps = max(1, int(timeout_s / 0.05))
        done = self.exec(["bash", "-c", _STOP_SCRIPT, "stop", str(proc.pgid), str(steps),
                          proc.start, self.owner], check=False, timeout=timeout_s + 30)
        self.host.remove(self.on_host(proc.pid_file))
        words = done.output.split()
        return "killed" if "killed" in words else "stale" if "stale" in words else ""

    def stop_all(self, case: str | None, timeout_s: float) -> list[str]:
        """Stop everything of one case (or, case None, of the whole run) on this node: the
        groups its PID files name, then every process that still carries the marker (a run id
        unset: of any run of this owner). Returns what was stopped: services by name, swept
        processes as `pid command`."""
        root = self.layout.case_pids(case) if case else self.layout.pids
        host_root = self.on_host(root)
        stopped = []
        for pid_path in sorted(_find_pid_files(self.host, host_root)):
            recorded = read_pid_file(self.host.read_text(pid_path))
            service = PurePosixPath(str(pid_path)).stem
            view = self.host_layout.translate(pid_path, self.layout)
            if recorded is None:
                self.host.remove(pid_path)
                continue
            proc = Spawned(self, service, recorded[0], view, view, view.with_suffix(".exit"),
                           recorded[1])
            outcome = self._stop_group(proc, timeout_s)
            if outcome == "stale":
                log.warning("%s: stale PID file %s: pid %d is no longer the process recorded "
                            "(not signalled; file removed)", self.name, pid_path, recorded[0])
            else:
                stopped.append(service)
        stopped += self.sweep(case=case, run_id=self.run_id, timeout_s=timeout_s)
        return stopped

    # --- the marker sweep (harness.hosts.procs) -------------------------------------------
    def sweep(self, case: str | None = None, run_id: str | None = None, *,
              other_than: str | None = None,
              timeout_s: float = procs.DEFAULT_STOP_S) -> list[str]:
        """Stop every process on this node whose environment carries this node's owner marker
        (narrowed to a run, a case, or any run but `other_than`); `pid command` of each."""
        scope = procs.Scope(self.owner, run_id, case, other_than)
        done = self.exec(scope.argv(timeout_s), check=False,
                         timeout=timeout_s + procs.KILL_WAIT_S * 3 + procs.EXEC_GRACE_S)
        if not done.ok:
            raise HarnessError(f"the sweep of {scope.describe()} failed (exit {done.exit_code})",
                               host=self.name, log_tail=done.output or None)
        return procs.parse_sweep(done.output)

    def sweep_earlier_runs(self, timeout_s: float) -> list[str]:
        """At run start: stop what an earlier run of this owner left (any run id but ours)."""
        found = self.sweep(other_than=self.run_id, timeout_s=timeout_s)
        if found:
            log.warning("%s: stopped what an earlier run left running: %s", self.name,
                        "; ".join(found))
        return found

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

    def sweep_earlier_runs(self, timeout_s: float) -> list[str]:
        """Nothing to do here: the run's prep replaces the container, which ends everything an
        earlier run left in it (and a run must not reach the engine before prep reports it)."""
        return []

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
