"""Results as values, serialised in one place (SPEC §4).

`test_results.json` holds exactly test_case, status and timestamp, written atomically. Everything
richer (reason, failed step, durations, per-model outcome) goes to `case_summary.json` beside it
and to `run/logs/run_summary.json`.
"""
from __future__ import annotations

import datetime as dt
import enum
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator
from contextlib import contextmanager

from harness.layout import Layout


class Status(str, enum.Enum):
    PASS = "Pass"
    FAIL = "Fail"


def utc_timestamp(when: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(time.time() if when is None else when, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: Path, data: object, *, one_line: bool = False) -> None:
    """Write JSON so a reader sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=None if one_line else 2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class CaseResult:
    """How one case ended, with the detail that `test_results.json` must not carry."""
    case: str
    status: Status = Status.FAIL
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
    mooncake: dict | None = None  # simulated runs: what Mooncake moved (harness/transfers.py)

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Record how long `step` took (also when it raises)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.steps_s[step] = round(self.steps_s.get(step, 0.0) + time.monotonic() - start, 3)

    def to_summary(self) -> dict:
        data = asdict(self)
        data["status"] = self.status.value
        data["started"] = utc_timestamp(self.started)
        data["ended"] = utc_timestamp(self.ended) if self.ended is not None else None
        data["duration_s"] = round(self.duration_s, 3)
        return data


UNFINISHED = "run did not finish"


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


def write_unfinished(layout: Layout, case: str) -> None:
    """A case's verdict until it ends: `Fail`, "run did not finish". Written before anything
    else runs, so a run killed at any point (SIGKILL, OOM) never leaves an older run's status."""
    write_case_result(layout, CaseResult(case, reason=UNFINISHED))


def write_run_summary(layout: Layout, results: list[CaseResult], *, group: str, pr_id: str,
                      prep_s: dict[str, float], duration_s: float) -> None:
    write_json_atomic(Path(layout.run_summary), {
        "group": group,
        "pr_id": pr_id,
        "finished": utc_timestamp(),
        "duration_s": round(duration_s, 3),
        "prep_s": prep_s,
        "passed": all(r.passed for r in results) and bool(results),
        "cases": [r.to_summary() for r in results],
    })


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
