"""The one step recorder, used by prep, the reset between cases, the cases and `invoke serve`.

A step is told once on the console when it starts and when it ends (with its time), timed into
the run's record (`prep_s`, a case's `steps_s`, a reset's phases), drawn as a span on the
run's timeline, and any HarnessError raised in it names the step and its host. A step that does
not run is decided once, where its reason is known, and told once: `skip`, or an action that
answers `Skipped(why)`.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

from harness.errors import HarnessError, Interrupted
from harness.results.timeline import Timeline
from harness.waiting import Cancel, reporting

log = logging.getLogger(__name__)
T = TypeVar("T")

# The per-host preparation steps (SPEC §5).
STEP_RUN_DIR = "run-dir"
STEP_GET_WHEEL = "get-wheel"
STEP_PULL_IMAGE = "pull-image"
STEP_START_CONTAINER = "start-container"
STEP_INSTALL_ERDMA = "install-erdma"
STEP_PIP_INSTALL = "pip-install"


@dataclass(frozen=True)
class Skipped:
    """What an action answers when it found it had nothing to do, and why."""
    why: str


@dataclass
class Steps:
    """Steps of one host (`host`), told as `<label>: <step>`; their times go to `times` under
    `key(step)`, their spans (when `kind` is given) to `timeline`. `cancel` set: the next step
    does not start."""
    host: str
    label: str
    times: dict[str, float]
    timeline: Timeline = field(default_factory=Timeline.off)
    kind: str = ""
    cancel: Cancel | None = None
    key: Callable[[str], str] = str
    tag_host: bool = True
    progress: bool = False    # a blocking step: "still waiting" lines from a timer thread
    _skipped: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, name: str, action: Callable[[], T]) -> T:
        """Run `action` as the step `name`; its value (a `Skipped` answer is told as a skip)."""
        with self.step(name) as span:
            value = action()
            if isinstance(value, Skipped):
                self._note_skip(name, value.why)
                if span is not None:
                    span.detail, span.outcome = value.why, "skipped"
        return value

    @contextmanager
    def step(self, name: str) -> Iterator[object]:
        self.tell_skipped()
        if self.cancel is not None and self.cancel.is_set():
            raise Interrupted(f"{self.cancel.reason} before this step", step=name,
                              host=self.host if self.tag_host else None)
        log.info("%s: %s", self.label, name)
        start = time.monotonic()
        try:
            with self._span(name) as span, self._progress(name):
                yield span
        except HarnessError as exc:
            exc.at(step=name, host=self.host if self.tag_host else None)
            raise
        finally:
            took = time.monotonic() - start
            key = self.key(name)
            self.times[key] = round(self.times.get(key, 0.0) + took, 3)
        log.info("%s: %s done (%.1fs)", self.label, name, took)

    @contextmanager
    def _span(self, name: str) -> Iterator[object]:
        if not self.kind:
            yield None
            return
        with self.timeline.span(self.host, self.kind, name) as span:
            yield span

    @contextmanager
    def _progress(self, name: str) -> Iterator[None]:
        if not self.progress:
            yield
            return
        with reporting(f"{name} on {self.host}"):
            yield

    def skip(self, name: str, why: str, value: T = None) -> T:
        """A step that does not run: on the timeline and in the times as such, told once."""
        if self.kind:
            self.timeline.skipped(self.host, self.kind, name, why)
        self.times[self.key(name)] = 0.0
        self._note_skip(name, why)
        return value

    def _note_skip(self, name: str, why: str) -> None:
        self._skipped.append((name, why))

    def tell_skipped(self) -> None:
        """One line for the steps skipped so far: `a, b skipped (why); c skipped (why)`."""
        if not self._skipped:
            return
        by_reason: dict[str, list[str]] = {}
        for name, why in self._skipped:
            by_reason.setdefault(why, []).append(name)
        self._skipped = []
        log.info("%s: %s", self.label, "; ".join(
            f"{', '.join(names)} skipped ({why})" for why, names in by_reason.items()))


def starting(step: str, host: str, what: str) -> None:
    """What a step is doing, for the record (the console has the step's own start line)."""
    log.debug("[%s] %s: %s", host, step, what)


@contextmanager
def at_step(step: str, host: str) -> Iterator[None]:
    """Fill in step and host on any HarnessError raised inside."""
    try:
        yield
    except HarnessError as exc:
        exc.at(step=step, host=host)
        raise
