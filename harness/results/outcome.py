"""Results as values, serialised in one place (SPEC §4).

`test_results.json` holds exactly test_case, status and timestamp, written atomically. Everything
richer (reason, failed step, durations, per-model outcome) goes to `case_summary.json` beside it
and to `run/logs/run_summary.json`.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.files import write_json_atomic
from harness.layout import Layout
from harness.results.status import Outcome, Status, all_passed
from harness.results.summary import write_summary


def utc_timestamp(when: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(time.time() if when is None else when, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CaseResult:
    """How one case ended, with the detail that `test_results.json` must not carry."""
    case: str
    outcome: Outcome = Outcome.UNFINISHED
    reason: str = ""
    step: str = ""
    host: str = ""
    server: str = ""
    started: float = field(default_factory=time.time)
    ended: float | None = None   # when the case ended: the timestamp of test_results.json
    duration_s: float = 0.0
    steps_s: dict[str, float] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    cleanup_errors: list[str] = field(default_factory=list)
    log_tail: str = ""
    group: str = ""   # SGLANG or VLLM: the JUnit testsuite the case belongs to
    mooncake: dict | None = None  # simulated runs: what Mooncake moved (results/transfers.py)

    @property
    def status(self) -> Status:
        return self.outcome.status

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED

    @property
    def decided(self) -> bool:
        """Whether the case has its verdict (an unfinished one gets "run did not finish")."""
        return self.outcome is not Outcome.UNFINISHED

    def end(self, outcome: Outcome, reason: str = "") -> None:
        """Decide the case: its outcome and, for anything but a pass, why."""
        self.outcome, self.reason = outcome, reason

    def to_summary(self) -> dict:
        data = {"case": self.case, "status": self.status.value, **asdict(self)}
        data["outcome"] = self.outcome.value
        data["started"] = utc_timestamp(self.started)
        data["ended"] = utc_timestamp(self.ended) if self.ended is not None else None
        data["duration_s"] = round(self.duration_s, 3)
        return data


UNFINISHED = "run did not finish"
DEMO_LABEL = "SGLANG (demo)"   # the demo's run summary: a rerun of it takes the demo's settings


def write_case_result(layout: Layout, result: CaseResult) -> None:
    """`test_results.json` (exact SPEC format: one line, stamped when the case ended) and
    `case_summary.json` for one case."""
    if result.ended is None:
        result.ended = time.time()
    write_json_atomic(Path(layout.results_file(result.case)), {
        "test_case": result.case,
        "status": result.status.value,
        "timestamp": utc_timestamp(result.ended),
    }, one_line=True)
    write_json_atomic(Path(layout.case_summary(result.case)), result.to_summary())


def write_unfinished(layout: Layout, case: str, group: str = "") -> CaseResult:
    """A case's verdict until it ends: `Fail`, "run did not finish". Written before anything
    else runs, so a run killed at any point (SIGKILL, OOM) never leaves an older run's status."""
    result = CaseResult(case, Outcome.UNFINISHED, reason=UNFINISHED, group=group)
    write_case_result(layout, result)
    return result


def write_run_summary(layout: Layout, results: list[CaseResult], *, group: str, pr_id: str,
                      prep_s: dict[str, float], duration_s: float, finished: bool = True,
                      earlier: list[dict] | None = None,
                      settings: list[tuple[str, str]] | None = None,
                      preflight: dict | None = None) -> None:
    """`run_summary.json` and the JUnit file made from it. Written at the start of a run (every
    case unfinished, `finished` null), after every case and at the end, so a killed run leaves
    one that says which cases did not finish. `earlier`: the case entries of the summary a
    rerun updates; this run's results replace theirs, the others stand. `settings`:
    `Settings.env_items()`, the non-secret settings as `.shrc` shows them. `preflight`: what
    the Mooncake pre-flight found (figures, a skip or the failure), once it ran."""
    cases = updated_cases(earlier or [], [r.to_summary() for r in results])
    write_summary(Path(layout.logs), {
        "group": group,
        "pr_id": pr_id,
        "finished": utc_timestamp() if finished else None,
        "duration_s": round(duration_s, 3),
        "prep_s": prep_s,
        "passed": all_passed(cases),
        "cases": cases,
        **({"reran": [r.case for r in results]} if earlier else {}),
        **({"mooncake_preflight": preflight} if preflight else {}),
        "settings": dict(settings or ()),
    })


def updated_cases(earlier: list[dict], current: list[dict]) -> list[dict]:
    """`earlier`'s entries in their order, each replaced by the current one of the same case;
    current entries of new cases after them."""
    by_case = {entry["case"]: entry for entry in current}
    merged = [by_case.pop(entry["case"], entry) for entry in earlier]
    return merged + [entry for entry in current if entry["case"] in by_case]


def summary_table(results: list[CaseResult]) -> str:
    """The table printed at the end of a run: case, status, duration, reason."""
    rows = [("case", "status", "duration", "reason")]
    for r in results:
        reason = r.reason.splitlines()[0] if r.reason else ""
        rows.append((r.case, r.status.value, f"{r.duration_s:.1f}s", reason[:160]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3]))
                     + "  " + row[3])
    return "\n".join(line.rstrip() for line in lines)
