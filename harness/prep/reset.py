"""Resetting a host between two cases (SPEC §8).

`reset_node(node, settings, gpu)`, per node (the runner runs both hosts' at the same time):

1. **restart or stop**: a container node is reset by `node.reset` (its process groups stopped,
   then the container restarted: that kills every process in it, the writable layer with the
   wheel and eRDMA packages survives); a host node (HARNESS_RUNTIME=host) has its recorded process
   groups stopped with `node.stop_all`.
2. **drain wait**: until every GPU uses at most 1024 MB, at most `TIMEOUT_GPU_DRAIN_S`.
3. **scoped kill**, only when memory stays used: SIGKILL the GPU processes that are provably
   this node's, nothing else on the host:
   - container: `/proc/<pid>/cgroup` names the container's full id (as the shell scripts did);
   - host runtime: the process's group or session is one this run recorded in a PID file
     (read before the stop), or its stdout/stderr is a file under this run's `run/` tree (every
     server `Node.spawn` starts logs there, and engine children that escape a group kill keep
     those descriptors).
   Other GPU processes are listed in the error, never touched.
4. **second drain wait**, at most `TIMEOUT_GPU_DRAIN_AFTER_KILL_S`.

Unreadable GPU memory (no nvidia-smi, an answer that does not parse) fails the reset; it is
never taken for idle GPUs. A failed reset raises `ResetFailed` (step `reset`, the host's name,
the last readings, what was killed and what was left alone); the runner then stops the run.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from harness.prep import gpu as gpu_mod
from harness.errors import HarnessError, HostUnhealthy
from harness.prep.gpu import Drain, GpuMemory, GpuProcess, GpuReadError, NvidiaSmi
from harness.prep.sim_gpu import SimGpu, sim_gpu_dir
from harness.hosts.nodes import ContainerBase, Node, _find_pid_files, read_pid_file
from harness.settings import Settings
from harness.results.timeline import Timeline
from harness.waiting import Cancel

log = logging.getLogger(__name__)

STEP = "reset"
READINGS_SHOWN = 5


@dataclass
class ResetReport:
    """What one node's reset did, phase by phase (seconds per phase in `phases_s`)."""
    node: str
    action: str = ""
    phases_s: dict[str, float] = field(default_factory=dict)
    first: Drain | None = None
    scope: str = ""
    killed: list[GpuProcess] = field(default_factory=list)
    left_alone: list[GpuProcess] = field(default_factory=list)
    second: Drain | None = None

    @property
    def passed(self) -> bool:
        last = self.second or self.first
        return bool(last and last.drained)

    @property
    def total_s(self) -> float:
        return sum(self.phases_s.values())

    def summary(self) -> str:
        parts = [self.action or "nothing to stop"]
        if self.first:
            parts.append(f"drain wait {self.first.describe()}")
        if self.second:
            killed = ", ".join(map(str, self.killed)) or "nothing"
            parts.append(f"killed {killed}")
            if self.left_alone:
                parts.append(f"left alone (not this node's): "
                             f"{', '.join(map(str, self.left_alone))}")
            parts.append(f"second drain wait {self.second.describe()}")
        return "; ".join(parts)


class ResetFailed(HostUnhealthy):
    """The host could not be reset; `report` says what was tried and what the GPUs read."""

    def __init__(self, message: str, report: ResetReport, **kw) -> None:
        kw.setdefault("step", STEP)
        kw.setdefault("host", report.node)
        super().__init__(message, **kw)
        self.report = report

    def details(self) -> str:
        out = [super().details()]
        readings = [r for d in (self.report.first, self.report.second) if d for r in d.readings]
        if readings:
            limit = (self.report.second or self.report.first).limit_mb
            out.append(f"--- last GPU readings (MB per GPU, limit {limit}) ---")
            out += [f"{r.at_s:6.1f}s  {list(r.used_mb)}" for r in readings[-READINGS_SHOWN:]]
        return "\n".join(out)


# --- choosing the source and the scope -----------------------------------------------------------
def gpu_source_for(node: Node, settings: Settings) -> GpuMemory:
    """SimGpu (the simulated engines' records on the node's host) when HARNESS_SIM=true, else
    the real nvidia-smi of the node's host."""
    if settings.harness_sim:
        return SimGpu(node.host, sim_gpu_dir(node.host_layout))
    return NvidiaSmi(node.host)


def recorded_groups(node: Node) -> set[int]:
    """The process groups this run recorded in PID files on the node (read before a stop)."""
    groups = set()
    for path in _find_pid_files(node.host, node.on_host(node.layout.pids)):
        try:
            text = node.host.read_text(path).strip()
        except OSError:
            continue
        recorded = read_pid_file(text)  # "pid starttime" (older files: "pid")
        if recorded:
            groups.add(recorded[0])
    return groups


# --- this run's processes (HARNESS_RUNTIME=host) ---------------------------------------------
# For each PID: its stdout and stderr targets, then its whole stat line (comm may hold spaces).
_FACTS_SCRIPT = r"""
printf 'root\t%s\n' "$(realpath -m -- "$1" 2>/dev/null || printf '%s' "$1")"
shift
for p in "$@"; do
  read -r stat < "/proc/$p/stat" 2>/dev/null || continue
  printf '%s\t%s\t%s\t%s\n' "$p" "$(readlink "/proc/$p/fd/1" 2>/dev/null)" \
    "$(readlink "/proc/$p/fd/2" 2>/dev/null)" "$stat"
done
"""


@dataclass(frozen=True)
class ProcFacts:
    pid: int
    pgid: int
    sid: int
    stdout: str
    stderr: str


def parse_facts(output: str) -> tuple[str | None, dict[int, ProcFacts]]:
    """The facts script's lines → the run dir's real path, and ProcFacts per PID (lines that do
    not parse are skipped)."""
    root, facts = None, {}
    for line in output.splitlines():
        if line.startswith("root\t"):
            root = line[5:]
            continue
        parts = line.split("\t", 3)
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        fields = parts[3].rpartition(") ")[2].split()
        if len(fields) < 4 or not (fields[2].isdigit() and fields[3].isdigit()):
            continue
        pid = int(parts[0])
        facts[pid] = ProcFacts(pid, int(fields[2]), int(fields[3]), parts[1], parts[2])
    return root, facts


def is_run_process(facts: ProcFacts, run_dirs: Iterable[str], groups: Iterable[int] = ()
                   ) -> bool:
    """This run's own: its process group or session is one the run recorded in a PID file, or
    its stdout/stderr is a file under the run tree (every server Node.spawn starts writes its
    log there, and the engines' children inherit that, even ones that left the group)."""
    groups = set(groups)
    if facts.pgid in groups or facts.sid in groups:
        return True
    prefixes = tuple(d.rstrip("/") + "/" for d in run_dirs if d)
    return any(target.startswith(prefixes) for target in (facts.stdout, facts.stderr))


def run_processes(host, pids: Iterable[int], run_dir: object,
                  groups: Iterable[int] = ()) -> list[int]:
    """The PIDs that belong to this run (see `is_run_process`), read through `host`."""
    pids = [int(p) for p in pids]
    if not pids:
        return []
    done = host.run(["bash", "-c", _FACTS_SCRIPT, "facts", str(run_dir), *map(str, pids)],
                    timeout=gpu_mod.SMI_TIMEOUT_S, check=False)
    real_dir, facts = parse_facts(done.output)
    dirs, groups = (str(run_dir), real_dir or ""), set(groups)
    return [pid for pid in pids if pid in facts and is_run_process(facts[pid], dirs, groups)]


@dataclass(frozen=True)
class KillScope:
    """Which GPU processes the reset may kill on a node, and how that is decided."""
    what: str
    owned: Callable[[list[int]], list[int]]


def kill_scope(node: Node, groups: set[int]) -> KillScope:
    if isinstance(node, ContainerBase):
        cid = node.container_id()
        return KillScope(f"only GPU processes whose cgroup names container "
                         f"{node.container_name} ({cid[:12]})",
                         lambda pids: gpu_mod.cgroup_processes(node.host, pids, cid))
    run_dir = str(node.host_layout.run)
    return KillScope(f"only this run's processes: recorded process groups or output under "
                     f"{run_dir}",
                     lambda pids: run_processes(node.host, pids, run_dir, groups))


# --- the reset -----------------------------------------------------------------------------------
def reset_node(node: Node, settings: Settings, gpu: GpuMemory, *,
               limit_mb: int = gpu_mod.LIMIT_MB, poll_s: float = gpu_mod.POLL_S,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], object] | None = None,
               cancel: Cancel | threading.Event | None = None,
               spans: Timeline | None = None, case: str = "") -> ResetReport:
    """Restart/stop, wait for the GPUs, kill only this node's GPU processes, wait again.
    Each phase is a span of `spans` (the run's timeline): the drain waits as kind `drain`."""
    report = ResetReport(node.name)
    spans = spans or Timeline.off()
    container = isinstance(node, ContainerBase)
    groups = set() if container else recorded_groups(node)

    def timed(phase: str, action):
        start = clock()
        kind = "drain" if phase.startswith("drain") else "reset"
        try:
            with spans.span(node.name, kind, phase, case=case):
                return action()
        except GpuReadError as exc:
            raise ResetFailed(f"GPU memory unreadable ({phase}): {exc.message}", report,
                              log_tail=exc.log_tail, hint=exc.hint) from exc
        except ResetFailed:
            raise
        except HarnessError as exc:
            exc.at(step=STEP, host=node.name)
            raise
        finally:
            report.phases_s[phase] = round(clock() - start, 3)
            log.debug("%s: reset %s: %.1fs", node.name, phase, report.phases_s[phase])

    def drain(phase: str, timeout_s: float) -> Drain:
        return timed(phase, lambda: gpu_mod.wait_for_drain(
            gpu, timeout_s=timeout_s, limit_mb=limit_mb, poll_s=poll_s, clock=clock,
            sleep=sleep, cancel=cancel, host=node.name))

    if container:
        timed("restart", lambda: node.reset(settings.timeout_stop_s))
        report.action = f"restarted container {node.container_name}"
    else:
        stopped = timed("stop", lambda: node.stop_all(None, settings.timeout_stop_s))
        report.action = (f"stopped {', '.join(stopped)}" if stopped
                         else "no process group of this run was left")
    report.first = drain("drain", settings.timeout_gpu_drain_s)
    log.debug("%s: reset: %s; GPU memory %s", node.name, report.action, report.first.describe())
    if report.first.drained:
        return report

    timed("kill", lambda: _kill_owned(node, gpu, groups, report))
    report.second = drain("drain-after-kill", settings.timeout_gpu_drain_after_kill_s)
    log.debug("%s: reset: GPU memory %s", node.name, report.second.describe())
    if not report.second.drained:
        raise ResetFailed(_not_drained_message(report), report, hint=(
            "memory is held by something this reset may not kill (a process outside this "
            f"node's scope, or the driver); look at nvidia-smi on host {node.name}: the host "
            "needs intervention"))
    return report


def _kill_owned(node: Node, gpu: GpuMemory, groups: set[int], report: ResetReport) -> None:
    holding = gpu.processes()
    scope = kill_scope(node, groups) if holding else KillScope("no process holds GPU memory", list)
    report.scope = scope.what
    owned = set(scope.owned([p.pid for p in holding]))
    report.killed = [p for p in holding if p.pid in owned]
    report.left_alone = [p for p in holding if p.pid not in owned]
    for proc in report.left_alone:
        log.warning("%s: GPU process %s is not this node's [%s]; leaving it untouched",
                    node.name, proc, scope.what)
    if report.killed:
        log.warning("%s: killing GPU processes [%s]: %s", node.name, scope.what,
                    ", ".join(map(str, report.killed)))
        done = gpu_mod.kill_processes(node.host, [p.pid for p in report.killed])
        if done is not None and not done.ok:
            log.info("%s: kill said: %s", node.name, done.output.strip()[:300])


def _not_drained_message(report: ResetReport) -> str:
    first, second = report.first, report.second
    assert first is not None and second is not None and second.last is not None
    killed = ", ".join(map(str, report.killed)) or "none"
    text = (f"GPU memory still used after the reset: "
            f"{gpu_mod.format_used(second.last.used_mb, second.limit_mb)} "
            f"(limit {second.limit_mb} MB); {report.action}, waited {first.waited_s:.1f}s, "
            f"killed {killed} [{report.scope}], waited {second.waited_s:.1f}s more")
    if report.left_alone:
        text += (f"; left alone, not this node's: "
                 f"{', '.join(map(str, report.left_alone))}")
    return text
