"""The marker every process of a case inherits, and the sweep that finds processes by it.

A spawned server runs in its own process group, but what it starts may leave that group: the
HiCache payload starts the Mooncake master and metadata server in sessions of their own, and a
SIGKILLed harness leaves whole groups behind with no one to stop them. Numbers cannot be trusted
(a PID file of an earlier boot names whatever now has that number), so `Node.spawn` puts a marker
into the environment of everything it starts, which children inherit:

    HARNESS_OWNER=<the node's project root as the node sees it>   (this checkout / remote dir)
    HARNESS_RUN_ID=<run id>    HARNESS_CASE=<case>

`SWEEP_SCRIPT` (bash, run through `node.exec`, so the same code works on this machine, over SSH
and inside a container) finds every process whose /proc/<pid>/environ carries the owner (and,
when asked, the run id and/or case, or any run id but one), sends TERM, waits until they are gone
(at most TIMEOUT_STOP_S, polling every 50 ms), then KILLs what is left, and reports what it
stopped. It never touches a process without the marker, nor itself or its ancestors (the
harness, when the node is this machine).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.hosts.argv import with_env

OWNER, RUN_ID, CASE = "HARNESS_OWNER", "HARNESS_RUN_ID", "HARNESS_CASE"
POLL_S = 0.05
DEFAULT_STOP_S = 10.0   # TIMEOUT_STOP_S's default, for callers without settings
# After KILL a process is gone at once, unless the kernel is slow to reap it; wait this long.
KILL_WAIT_S = 2.0
# Beyond the sweep's own waits, what the command may take (reading /proc on a busy host).
EXEC_GRACE_S = 30.0


def marker(owner: str, run_id: str | None, case: str | None) -> dict[str, str]:
    """The environment entries that mark what a node starts."""
    env = {OWNER: owner}
    if run_id:
        env[RUN_ID] = run_id
    if case:
        env[CASE] = case
    return env


def marker_prefix(owner: str, run_id: str | None, case: str | None) -> str:
    """`env K=V ...` words (quoted) that start a command with the marker in its environment."""
    return shlex.join(with_env([], marker(owner, run_id, case)))


@dataclass(frozen=True)
class Scope:
    """Which marked processes a sweep stops: those of `owner`, narrowed by run and case."""
    owner: str
    run_id: str | None = None       # only this run
    case: str | None = None         # only this case
    other_than: str | None = None   # any run but this one (the run that sweeps at its start)

    def argv(self, timeout_s: float) -> list[str]:
        steps = max(1, int(timeout_s / POLL_S))
        kill_steps = max(1, int(KILL_WAIT_S / POLL_S))
        # Unmarked itself, so its own subshells never match (it may run under a marked parent).
        return ["env", "-u", OWNER, "-u", RUN_ID, "-u", CASE,
                "bash", "-c", SWEEP_SCRIPT, "sweep", self.owner, self.run_id or "",
                self.case or "", self.other_than or "", str(steps), str(kill_steps)]

    def describe(self) -> str:
        parts = [f"{OWNER}={self.owner}"]
        if self.run_id:
            parts.append(f"{RUN_ID}={self.run_id}")
        if self.other_than:
            parts.append(f"{RUN_ID}!={self.other_than}")
        if self.case:
            parts.append(f"{CASE}={self.case}")
        return " ".join(parts)


# grep -z reads environ's NUL-separated entries as lines; -x whole entry, -F literally. One grep
# reads every process's environ, so a sweep costs a few processes, not a few per process.
SWEEP_SCRIPT = r"""
owner=$1 run=$2 case=$3 other=$4 steps=$5 kill_steps=$6
protect=" $$ "
p=$$
for ((n = 0; n < 64 && p > 1; n++)); do  # this script's ancestors: the harness, sshd, docker
  read -r stat < "/proc/$p/stat" 2>/dev/null || break
  stat=${stat##*) }; set -- $stat; p=$2; protect+="$p "
done
narrow() {  # narrow -l|-L ENTRY: keep the files that (do not) hold ENTRY
  [ -n "$files" ] || return 0
  files=$(grep "$1" -zxF -- "$2" $files 2>/dev/null)
}
marked() {
  files=$(grep -lzxF -- "HARNESS_OWNER=$owner" /proc/[0-9]*/environ 2>/dev/null)
  [ -z "$run" ] || narrow -l "HARNESS_RUN_ID=$run"
  [ -z "$case" ] || narrow -l "HARNESS_CASE=$case"
  [ -z "$other" ] || narrow -L "HARNESS_RUN_ID=$other"
  local f q
  for f in $files; do
    q=${f#/proc/}; q=${q%/environ}
    case "$protect" in *" $q "*) continue ;; esac
    printf '%s ' "$q"
  done
}
live() {  # the PIDs of $@ that still run (a zombie has exited)
  local q stat
  for q in "$@"; do
    read -r stat < "/proc/$q/stat" 2>/dev/null || continue
    stat=${stat##*) }
    [ "${stat:0:1}" = Z ] || printf '%s ' "$q"
  done
}
wait_gone() {  # wait_gone STEPS PID...: poll every 50 ms until none of them runs
  local n=$1; shift
  for ((i = 0; i < n; i++)); do
    [ -n "$(live "$@")" ] || return 0
    sleep 0.05
  done
  return 1
}
report() {  # report VERB PID...: one line per process, "VERB pid command"
  local verb=$1 q cmd; shift
  for q in "$@"; do
    cmd=$(tr '\0' ' ' < "/proc/$q/cmdline" 2>/dev/null)
    printf '%s %s %s\n' "$verb" "$q" "${cmd:0:200}"
  done
}
pids=$(marked)
[ -n "$pids" ] || exit 0
report stopping $pids
kill -TERM $pids 2>/dev/null
wait_gone "$steps" $pids
for round in 1 2 3; do  # stragglers, and anything they started meanwhile
  left=$(marked)
  [ -n "$left" ] || exit 0
  report killed $left
  kill -KILL $left 2>/dev/null
  wait_gone "$kill_steps" $left
done
exit 0
"""


def parse_sweep(output: str) -> list[str]:
    """The script's report → one `pid command` entry per process, `(killed)` where TERM failed."""
    stopped: dict[str, str] = {}
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        pid, _, command = rest.partition(" ")
        if not pid.isdigit():
            continue
        if word == "stopping":
            stopped[pid] = f"{pid} {command.strip()}".strip()
        elif word == "killed":
            stopped[pid] = f"{pid} {command.strip()}".strip() + " (killed)"
    return list(stopped.values())


STEP_SWEEP = "sweep-leftovers"


def claim(node, run_id: str, timeout_s: float) -> None:
    """Make `node` mark what it starts with `run_id`, and (once per node and run) stop what an
    earlier run of the same owner left on it, e.g. after a SIGKILL."""
    if node.run_id == run_id:
        return
    node.run_id = run_id
    try:
        node.sweep_earlier_runs(timeout_s)
    except HarnessError as exc:
        exc.at(step=STEP_SWEEP, host=node.name)
        raise
