"""The run's timeline: one JSON line per span in `run/logs/timeline.jsonl` (read by
harness.results.report).

A span is something that took time on one host: a prep step, a reset, a server's start -> ready
-> stop, the case's request, a payload, a GPU drain wait. Each line:

    {"run": "<run id>", "host": "local"|"remote", "case": "<case>" or "" (prep),
     "kind": "prep"|"reset"|"drain"|"server"|"request"|"payload", "name": "...",
     "start": <epoch s>, "ready": <epoch s or null; servers only>, "end": <epoch s or null>,
     "outcome": "ok"|"failed"|"cancelled"|"skipped"|"HTTP 500"|"exit 1"|"left running",
     "detail": "<first line of the error, or ''>", "log": "<path relative to run/logs or null>"}

A line is written when its span closes; the file is append-only, so the timelines of several
host pairs merge by concatenation (`run` tells the pairs apart). Every time is this machine's
clock: the harness runs the remote host's commands from here, so its spans are timed here too.

Why an object and not a logger: the spans need start/ready/end across calls (a server's start,
its readiness and its stop happen in three places), which a log record per event would make the
reader pair up again. The run owns one `Timeline` (on `Environment`); it is passed down to the
node-level code the way the run's `Cancel` is: `CaseContext.timeline`, `Server.timeline`, the
reset's `spans`. Code started outside a run (invoke tasks, unit tests) gets `Timeline.off()`.
"""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from harness import redaction
from harness.errors import HarnessError, Interrupted
from harness.text import first_line as first_line_of

OK, FAILED, CANCELLED, SKIPPED, LEFT_RUNNING = "ok", "failed", "cancelled", "skipped", \
    "left running"


def outcome_of(exc: BaseException) -> str:
    """A span that ended in `exc`: cancelled (Ctrl-C, another host's failure) or failed."""
    if isinstance(exc, (Interrupted, KeyboardInterrupt)):
        return CANCELLED
    return FAILED


def first_line(exc: BaseException) -> str:
    return first_line_of(exc.message if isinstance(exc, HarnessError)
                         else str(exc) or type(exc).__name__)


@dataclass(eq=False)
class Span:
    """One open span; `close()` writes its line (once)."""
    timeline: "Timeline"
    host: str
    case: str
    kind: str
    name: str
    log: str | None = None
    start: float = field(default_factory=time.time)
    ready: float | None = None
    end: float | None = None
    outcome: str = ""       # set before close() to override the default
    detail: str = ""
    closed: bool = False

    def mark_ready(self) -> None:
        self.ready = time.time()

    def failed(self, exc: BaseException) -> None:
        """Remember how it went wrong; the line is written at close()."""
        self.outcome, self.detail = outcome_of(exc), first_line(exc)

    def close(self, outcome: str = "") -> None:
        self.timeline.close(self, outcome)

    def to_json(self) -> dict:
        return {"run": self.timeline.run_id, "host": self.host, "case": self.case,
                "kind": self.kind, "name": self.name, "start": round(self.start, 3),
                "ready": None if self.ready is None else round(self.ready, 3),
                "end": None if self.end is None else round(self.end, 3),
                "outcome": self.outcome or OK, "detail": self.detail, "log": self.log}


class Timeline:
    """Appends spans to one file; safe to use from every thread of the run (fan_out)."""

    def __init__(self, path: Path | None, run_id: str = "") -> None:
        self.path = path
        self.run_id = run_id
        self._lock = threading.Lock()
        self._open: set[Span] = set()

    @classmethod
    def fresh(cls, path: Path, run_id: str) -> "Timeline":
        """The run's timeline, started empty (as harness.log is at the start of a run)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        return cls(path, run_id)

    @classmethod
    def off(cls) -> "Timeline":
        """Records nothing: for code that runs outside a run."""
        return cls(None)

    def open(self, host: str, kind: str, name: str, *, case: str = "",
             log: str | None = None) -> Span:
        span = Span(self, host, case, kind, name, log)
        with self._lock:
            self._open.add(span)
        return span

    @contextmanager
    def span(self, host: str, kind: str, name: str, *, case: str = "",
             log: str | None = None) -> Iterator[Span]:
        """A span around a block: `failed`/`cancelled` when the block raises."""
        span = self.open(host, kind, name, case=case, log=log)
        try:
            yield span
        except BaseException as exc:
            span.failed(exc)
            raise
        finally:
            span.close()

    def skipped(self, host: str, kind: str, name: str, why: str, *, case: str = "") -> None:
        """A step that did not run: a zero-length span, so the report still lists it."""
        span = self.open(host, kind, name, case=case)
        span.detail = why
        span.end = span.start
        self.close(span, SKIPPED)

    def close(self, span: Span, outcome: str = "") -> None:
        with self._lock:
            if span.closed:
                return
            span.closed = True
            self._open.discard(span)
            if span.end is None and outcome != LEFT_RUNNING:
                span.end = time.time()
            span.outcome = outcome or span.outcome
            self._write(span)

    def close_open(self) -> None:
        """At the end of a run: spans still open (servers kept up) get a line with no end."""
        with self._lock:
            still_open = list(self._open)
        for span in sorted(still_open, key=lambda s: s.start):
            self.close(span, LEFT_RUNNING)

    def _write(self, span: Span) -> None:
        if self.path is None:
            return
        line = redaction.scrub(json.dumps(span.to_json())) + "\n"
        try:
            with open(self.path, "a") as fh:  # one write of one whole line (O_APPEND)
                fh.write(line)
        except OSError:  # the record is a nicety: never what fails a case
            pass


def log_ref(logs_root: object, path: object) -> str | None:
    """`path` relative to the run's logs dir (as the report links it), or None if outside."""
    try:
        return str(PurePosixPath(str(path)).relative_to(PurePosixPath(str(logs_root))))
    except ValueError:
        return None


def read_spans(path: Path) -> list[dict]:
    """The spans of a timeline file (lines that do not parse, e.g. a torn last line, skipped)."""
    spans = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return spans
    for line in text.splitlines():
        try:
            span = json.loads(line)
        except ValueError:
            continue
        if isinstance(span, dict) and isinstance(span.get("start"), (int, float)):
            spans.append(span)
    return spans
