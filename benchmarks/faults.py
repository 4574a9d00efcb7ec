"""The fault matrix (`nox -s faults`): every fault that acts x every component it acts on, on
the simulated cluster, with short timeouts; one table of what each run ended with.

    python benchmarks/faults.py [--only COMPONENT[:FAULT]]... [--budget-s 1500]

Runs in a copy of the project (so nothing else's processes are counted, and run/ of the
working tree is left alone). SGLANG-group faults run the demo (`python -m harness demo`),
vLLM and proxy faults run `python -m harness group VLLM` with the same simulated settings
(the proxy's faults on both proxy branches: HARNESS_SIM_VLLM_VERSION 0.17.0 and 0.15.1).

Per row: the status of every case, the time from the fault (the simulator's timestamped
`FAULT PLAYED` line) to the case's `Fail` (its end in run/logs/harness.log), the processes of
the run left afterwards (HARNESS_OWNER= one of the run's project roots in /proc/<pid>/environ,
or cmdline/cwd under them), and whether every test_results.json is well formed. A gpu-leak
row also says whether the host reset after the run fails, which is where a leak shows.
Goal: every result well formed, 0 processes left, a crash reported <= 2 s after it happens,
a hang at its timeout. Exit status 1 when a row misses the goal or a run does not end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import simknobs  # noqa: E402
from harness.cli import DEMO_SETTINGS  # noqa: E402
from tests.conftest import copy_project  # noqa: E402

SHORT = {"TIMEOUT_SERVER_READY_S": "8", "TIMEOUT_HEALTH_S": "8", "TIMEOUT_ROUTER_S": "8",
         "TIMEOUT_PROXY_S": "8", "TIMEOUT_CASE_S": "15", "TIMEOUT_STOP_S": "5",
         "TIMEOUT_GPU_DRAIN_S": "2", "TIMEOUT_GPU_DRAIN_AFTER_KILL_S": "2"}
HANG_TIMEOUT_S = {"payload": 15.0, "router": 8.0, "proxy": 8.0}   # the wait a hang runs into
RUN_LIMIT_S = 300
CRASH_GOAL_S = 2.0
RESULT_LINE = re.compile(r'\{"test_case": "[\w.-]+", "status": "(Pass|Fail)", '
                         r'"timestamp": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"\}\n?')
PLAYED = re.compile(r"FAULT PLAYED (\S+):(\S+) at (\d+\.\d+)")
CASE_END = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \S+ \S+: === (\S+): "
                      r"(Pass|Fail) \(", re.M)
SHORT_NAMES = {"test_hicache_storage_mooncake_backend": "hicache",
               "test_disaggregation_different_tp": "diff_tp", "test_1p1d_erdma": "1p1d",
               "test_epd_sglang": "epd", "test_moe_mooncake": "moe",
               "test_vllm_1p1d_erdma": "vllm"}


@dataclass
class Row:
    component: str
    fault: str
    group: str                      # SGLANG (the demo) or VLLM
    vllm_version: str = "0.17.0"
    statuses: dict[str, str] = field(default_factory=dict)
    fail_after_s: float | None = None
    left: list[str] = field(default_factory=list)
    well_formed: bool = False
    note: str = ""
    wall_s: float = 0.0

    @property
    def label(self) -> str:
        proxy = {"0.17.0": " (connector)", "0.15.1": " (own)"}
        return (f"{self.component}:{self.fault}"
                + (proxy[self.vllm_version] if self.component == "proxy" else ""))

    def goal_missed(self) -> str:
        if not self.well_formed:
            return "a result is missing or malformed"
        if self.left:
            return f"{len(self.left)} processes left"
        if self.fault == "gpu-leak":  # seen by the reset between cases, or the one after
            seen = "Fail" in self.statuses.values() or "reset after the run fails" in self.note
            return "" if seen else "the leak went unseen"
        if "Fail" not in self.statuses.values():
            return "no case failed"
        if self.fault == "crash" and (self.fail_after_s is None
                                      or self.fail_after_s > CRASH_GOAL_S):
            return f"crash reported after {self.fail_after_s}s"
        return ""


def matrix_rows(only: list[str]) -> list[Row]:
    rows = []
    for component, fault in simknobs.acting_pairs():
        if component in ("prefill", "decode", "encoder", "router", "payload", "mooncake"):
            rows.append(Row(component, fault, "SGLANG"))
        if component in ("prefill", "decode", "proxy"):
            rows.append(Row(component, fault, "VLLM"))
        if component == "proxy" and fault in simknobs.OWN_PROXY_ACTING:
            rows.append(Row(component, fault, "VLLM", "0.15.1"))
    return [r for r in rows if not only or any(
        f"{r.component}:{r.fault}".startswith(o) for o in only)]


def harness_env(project: Path, row: Row) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MOONCAKE_"))}
    env.update(DEMO_SETTINGS)
    env.update(SHORT)
    env.update({"REMOTE_TEST_DIR": str(remote_root(project)),
                "HARNESS_SIM_FAULTS": f"{row.component}:{row.fault}",
                "HARNESS_SIM_VLLM_VERSION": row.vllm_version,
                "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")})
    return env


def remote_root(project: Path) -> Path:
    return project.parent / "remote-host" / "project"


def run_row(project: Path, row: Row) -> None:
    argv = ["demo"] if row.group == "SGLANG" else ["group", "VLLM"]
    started = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "harness", *argv], cwd=project,
                       env=harness_env(project, row), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=RUN_LIMIT_S, start_new_session=True)
    except subprocess.TimeoutExpired:
        row.note = f"run did not end within {RUN_LIMIT_S}s"
    row.wall_s = time.monotonic() - started
    read_outcome(project, row)
    row.left = processes_left([project, remote_root(project)])
    if row.fault == "gpu-leak":
        row.note = leak_note(project)


def read_outcome(project: Path, row: Row) -> None:
    logs = project / "run/logs"
    summary = json.loads((logs / "run_summary.json").read_text())
    names = [c["case"] for c in summary["cases"]]
    row.well_formed = bool(names)
    for name in names:
        text = (logs / name / "test_results.json").read_text()
        match = RESULT_LINE.fullmatch(text)
        row.well_formed &= bool(match)
        row.statuses[name] = match[1] if match else "?"
    ends = {m[3]: _epoch(m[1], m[2]) for m in CASE_END.finditer(
        (logs / "harness.log").read_text(errors="replace")) if m[4] == "Fail"}
    row.fail_after_s = fault_to_fail(logs, names, ends, row)


def _epoch(stamp: str, millis: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def fault_to_fail(logs: Path, names: list[str], ends: dict[str, float], row: Row
                  ) -> float | None:
    """From the last time the fault was played before a failed case ended, to that end."""
    played = []
    for name in names:
        for path in (logs / name).rglob("*.log"):
            for m in PLAYED.finditer(path.read_text(errors="replace")):
                if (m[1], m[2]) == (row.component, row.fault):
                    played.append(float(m[3]))
    for name in names:
        if name in ends:
            before = [t for t in played if t <= ends[name]]
            if before:
                return round(ends[name] - max(before), 2)
    return None


def _environ_owner(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def processes_left(roots: list[Path]) -> list[str]:
    """Processes of this run still alive: HARNESS_OWNER= one of `roots` in their environment
    (the marker every spawned process carries), or cmdline/cwd under one of them."""
    mine = {str(os.getpid())}
    names = [str(r) for r in roots]
    owners = [f"HARNESS_OWNER={r}".encode() for r in names]
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if pid in mine:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        environ = _environ_owner(pid)
        if (any(o + b"\0" in environ + b"\0" for o in owners)
                or any(n in cmdline or cwd.startswith(n) for n in names)):
            found.append(f"{pid} {cmdline[:100]}")
    return found


def leak_note(project: Path) -> str:
    """Whether the host reset after the run fails, as the reset between cases would."""
    from harness.hosts.local import LocalHost
    from harness.hosts.nodes import HostNode
    from harness.prep.reset import ResetFailed, gpu_source_for, reset_node
    from harness.settings import Settings
    settings = Settings.from_env({"HARNESS_SIM": "true", "HARNESS_RUNTIME": "host", **SHORT})
    failed = []
    for name, root in (("local", project), ("remote", remote_root(project))):
        node = HostNode(LocalHost(name, "127.0.0.1"), root)
        try:
            reset_node(node, settings, gpu_source_for(node, settings))
        except ResetFailed:
            failed.append(name)
    return f"reset after the run fails ({', '.join(failed)})" if failed else \
        "reset after the run passes"


def table(rows: list[Row]) -> str:
    head = ["fault", "group", "cases (P/F)", "fault->Fail s", "left", "results", "wall s", "note"]
    lines = []
    for r in rows:
        cases = " ".join(f"{SHORT_NAMES.get(n, n)}:{s[0]}" for n, s in r.statuses.items())
        missed = r.goal_missed()
        note = "; ".join(filter(None, [r.note, f"GOAL MISSED: {missed}" if missed else ""]))
        lines.append([r.label, r.group, cases,
                      "-" if r.fail_after_s is None else f"{r.fail_after_s:.2f}",
                      str(len(r.left)), "ok" if r.well_formed else "BAD", f"{r.wall_s:.0f}",
                      note])
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=False)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    sep = "-|-".join("-" * w for w in widths)
    return "\n".join([fmt.format(*head), sep, *(fmt.format(*line) for line in lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[],
                        help="run only rows whose component:fault starts with this")
    parser.add_argument("--budget-s", type=float, default=1500,
                        help="stop starting rows after this many seconds")
    args = parser.parse_args(argv)
    rows = matrix_rows(args.only)
    done: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mh-faults-") as tmp:
        project = copy_project(Path(tmp) / "project")
        for row in rows:
            if time.monotonic() - started > args.budget_s:
                print(f"budget of {args.budget_s:.0f}s spent: {len(rows) - len(done)} rows not "
                      "run", flush=True)
                break
            run_row(project, row)
            done.append(row)
            print(f"{row.label} [{row.group}]: {row.statuses} fault->Fail {row.fail_after_s} "
                  f"left {len(row.left)} {row.note}", flush=True)
    print("\n" + table(done), flush=True)
    missed = [r for r in done if r.goal_missed()]
    print(f"\n{len(done)} rows in {time.monotonic() - started:.0f}s; "
          f"{len(missed)} missed the goal", flush=True)
    return 1 if missed or len(done) < len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
