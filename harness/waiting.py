"""Waiting and fanning out: the run's cancel token, the one wait loop, parallel jobs.

Every wait of the harness (server readiness, a payload, GPU drain) is `wait_until`: a deadline,
a poll interval, the run's `Cancel` token and a description of what is awaited. A wait that lasts
prints a `Progress` line every PROGRESS_EVERY_S (what, elapsed / timeout, the last log line), as
does a blocking call run inside `reporting` (a prep step, an image pull). Work on both
hosts at once (prep, resets, server start and stop) is `fan_out`: the first failure cancels the
siblings at their next step or poll, and every job's error is reported, not only the first.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from harness.errors import HarnessError, Interrupted
from harness.text import one_line

log = logging.getLogger(__name__)

POLL_S = 0.1
# How long a fan-out waits for its jobs to notice a cancel before giving up on them (they are
# daemon threads; each of their own waits is bounded too).
JOIN_AFTER_CANCEL_S = 30.0


class Cancel:
    """A cancel token. The runner owns one per run (set by Ctrl-C/SIGTERM); `child()` gives a
    fan-out its own, set when the parent is or when a sibling fails."""

    def __init__(self, parent: "Cancel | None" = None) -> None:
        self._event = threading.Event()
        self._parent = parent
        self._children: list[Cancel] = []
        self._lock = threading.Lock()
        self.reason = ""
        if parent is not None:
            with parent._lock:
                parent._children.append(self)
            if parent.is_set():
                self.set(parent.reason)

    def set(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            children = list(self._children)
        for child in children:
            child.set(reason)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking at once when cancelled; True if cancelled."""
        return self._event.wait(max(0.0, seconds))

    def check(self, doing: str) -> None:
        """Raise Interrupted (naming what was being done) when cancelled."""
        if self.is_set():
            raise Interrupted(f"{self.reason} while {doing}")

    def sleeper(self, doing: str) -> Callable[[float], None]:
        """A `sleep` for code that pauses between tries (a download's back-off): it wakes at
        once when cancelled and raises Interrupted naming `doing`."""
        def sleep(seconds: float) -> None:
            self.wait(seconds)
            self.check(doing)
        return sleep

    def child(self) -> "Cancel":
        return Cancel(self)


def wait_until(check: Callable[[], tuple[bool, str]], *, timeout_s: float, awaited: str,
               cancel: Cancel | threading.Event | None = None, poll_s: float = POLL_S,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], object] | None = None,
               detail: Callable[[], str] | None = None) -> tuple[bool, str, float]:
    """Poll `check` until it says met, for at most `timeout_s`.

    `check()` returns (met, why not yet) and may raise to stop the wait (a server that exited).
    It runs at least once, and once more at the deadline. Returns (met, last why-not, waited s);
    a cancel raises Interrupted naming what was awaited. Between polls it sleeps on the cancel
    token, so a cancel is noticed at once. While it waits, a progress line every
    PROGRESS_EVERY_S says what it waits for, how long, and `detail()` (default: the why-not).
    """
    start = clock()
    progress = Progress(awaited, timeout_s)
    while True:
        met, why = check()
        waited = clock() - start
        if met or waited >= timeout_s:
            return met, why, waited
        progress.note = why
        progress.tick(waited, detail)
        if cancel is not None and cancel.is_set():
            reason = getattr(cancel, "reason", "") or "interrupted"
            raise Interrupted(f"{reason} while waiting for {awaited}")
        pause = min(poll_s, timeout_s - waited)
        if sleep is not None:
            sleep(pause)
        elif cancel is not None:
            cancel.wait(pause)
        else:
            time.sleep(pause)


# --- progress: a sign of life while something takes long ----------------------------------------
PROGRESS_EVERY_S = 30.0   # the run sets it from the PROGRESS_EVERY_S setting (set_progress_every)
_current = threading.local()


def set_progress_every(seconds: float) -> None:
    global PROGRESS_EVERY_S
    PROGRESS_EVERY_S = seconds


class Progress:
    """The 'still waiting' lines of one wait: one each PROGRESS_EVERY_S of elapsed time, saying
    what is awaited, for how long out of how long, and a detail (the last line of a log, the
    layers pulled), so a start-up of minutes is never minutes of silence."""

    def __init__(self, awaited: str, timeout_s: float | None = None) -> None:
        self.awaited = awaited
        self.timeout_s = timeout_s
        self.every_s = PROGRESS_EVERY_S
        self.next_at = self.every_s
        self.note = ""

    def tick(self, elapsed: float, detail: Callable[[], str] | None = None) -> None:
        if elapsed < self.next_at:
            return
        self.next_at = (elapsed // self.every_s + 1) * self.every_s
        log.info("%s", self.line(elapsed, detail))

    def line(self, elapsed: float, detail: Callable[[], str] | None = None) -> str:
        limit = f" of {self.timeout_s:.0f}s" if self.timeout_s else ""
        try:
            said = detail() if detail is not None else self.note
        except Exception as exc:  # noqa: BLE001 - a progress line must never fail the wait
            said = f"(no detail: {exc})"
        said = one_line(said, 200)
        return f"still waiting for {self.awaited}: {elapsed:.0f}s{limit}" + (
            f"; {said}" if said else "")


@contextmanager
def reporting(awaited: str, timeout_s: float | None = None) -> Iterator[Progress]:
    """Progress lines from a timer thread while the block runs a blocking call (a prep step, a
    pull); `note_progress()` inside the block, in the same thread, sets the detail."""
    progress = Progress(awaited, timeout_s)
    done = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not done.wait(min(1.0, progress.every_s)):
            progress.tick(time.monotonic() - start)

    outer = getattr(_current, "progress", None)
    _current.progress = progress
    timer = threading.Thread(target=tick, daemon=True, name=f"progress: {awaited}")
    timer.start()
    try:
        yield progress
    finally:
        done.set()
        _current.progress = outer
        timer.join(2.0)


def note_progress(text: str) -> None:
    """The detail of the innermost `reporting` block of this thread (nothing outside one)."""
    progress = getattr(_current, "progress", None)
    if progress is not None:
        progress.note = text


class GroupFailed(HarnessError):
    """Jobs run at once failed: every job's error, the first one (the cause) leading."""

    def __init__(self, errors: Sequence[BaseException]) -> None:
        self.errors = list(errors)
        first, *others = self.errors
        also = "".join(f"; also {_one_line(e)}" for e in others)
        if isinstance(first, HarnessError):
            super().__init__(first.message + also, step=first.step, host=first.host,
                             server=first.server, log_tail=first.log_tail, hint=first.hint)
        else:
            super().__init__(repr(first) + also)


def _one_line(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, HarnessError) else repr(exc)


def fan_out(jobs: Sequence[Callable[[Cancel], None]], cancel: Cancel, what: str) -> None:
    """Run `jobs` at once, each handed a child token of `cancel`.

    The first failure sets that token, so the others stop at their next step or poll; every
    failure is logged; one error is raised with all of them (a lone error as itself). Ctrl-C in
    the calling thread cancels the jobs, waits for them briefly, and goes on up.
    """
    group = cancel.child()
    if len(jobs) == 1:
        jobs[0](group)
        return
    errors: list[BaseException] = []
    lock = threading.Lock()
    # Each job says it is done with an Event, not by its thread ending: Python 3.11's
    # Thread.join, interrupted by Ctrl-C, marks the thread it waited for stopped while it
    # still runs (its bpo-45274 workaround), so the wait after a cancel would skip that job.
    finished = [threading.Event() for _ in jobs]

    def run(job: Callable[[Cancel], None], done: threading.Event) -> None:
        try:
            job(group)
        except BaseException as exc:  # noqa: BLE001 - collected, raised by the caller
            with lock:
                errors.append(exc)
            group.set(f"cancelled: another job of {what} failed")
        finally:
            done.set()

    for i, job in enumerate(jobs):
        threading.Thread(target=run, args=(job, finished[i]), daemon=True,
                         name=f"{what}-{i}").start()
    try:
        for done in finished:
            while not done.wait(POLL_S):
                pass
    except BaseException:
        group.set("interrupted")
        deadline = time.monotonic() + JOIN_AFTER_CANCEL_S
        for done in finished:
            done.wait(max(0.0, deadline - time.monotonic()))
        raise
    if not errors:
        return
    causes = [e for e in errors if not _is_cancelled(e, group)]
    if not causes:  # the run itself was cancelled: each job only says so
        raise errors[0]
    # The caller tells the error raised below: a lone cause is not told twice; of several,
    # each one's details (its log tail) are told here, the raised error names them all.
    level = logging.ERROR if len(causes) > 1 else logging.DEBUG
    for exc in causes:
        log.log(level, "%s: %s", what,
                exc.details() if isinstance(exc, HarnessError) else repr(exc))
    for exc in errors:
        if exc not in causes:
            log.debug("%s: %s", what, exc)
    if len(causes) == 1:
        raise causes[0]
    raise GroupFailed(causes)


def _is_cancelled(exc: BaseException, group: Cancel) -> bool:
    """An error that only says the job stopped because a sibling failed."""
    return isinstance(exc, Interrupted) and group.is_set() and str(group.reason) in str(exc)
