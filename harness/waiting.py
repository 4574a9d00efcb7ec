"""Waiting and fanning out: the run's cancel token, the one wait loop, parallel jobs.

Every wait of the harness (server readiness, a payload, GPU drain) is `wait_until`: a deadline,
a poll interval, the run's `Cancel` token and a description of what is awaited. Work on both
hosts at once (prep, resets, server start and stop) is `fan_out`: the first failure cancels the
siblings at their next step or poll, and every job's error is reported, not only the first.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

from harness.errors import HarnessError, Interrupted

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

    def child(self) -> "Cancel":
        return Cancel(self)


def wait_until(check: Callable[[], tuple[bool, str]], *, timeout_s: float, awaited: str,
               cancel: Cancel | threading.Event | None = None, poll_s: float = POLL_S,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], object] | None = None) -> tuple[bool, str, float]:
    """Poll `check` until it says met, for at most `timeout_s`.

    `check()` returns (met, why not yet) and may raise to stop the wait (a server that exited).
    It runs at least once, and once more at the deadline. Returns (met, last why-not, waited s);
    a cancel raises Interrupted naming what was awaited. Between polls it sleeps on the cancel
    token, so a cancel is noticed at once.
    """
    start = clock()
    while True:
        met, why = check()
        waited = clock() - start
        if met or waited >= timeout_s:
            return met, why, waited
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

    def run(job: Callable[[Cancel], None]) -> None:
        try:
            job(group)
        except BaseException as exc:  # noqa: BLE001 - collected, raised by the caller
            with lock:
                errors.append(exc)
            group.set(f"cancelled: another job of {what} failed")

    threads = [threading.Thread(target=run, args=(job,), daemon=True, name=f"{what}-{i}")
               for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(POLL_S)
    except BaseException:
        group.set("interrupted")
        deadline = time.monotonic() + JOIN_AFTER_CANCEL_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        raise
    if not errors:
        return
    causes = [e for e in errors if not _is_cancelled(e, group)]
    if not causes:  # the run itself was cancelled: each job only says so
        raise errors[0]
    for exc in causes:
        log.error("%s: %s", what, exc.details() if isinstance(exc, HarnessError) else repr(exc))
    for exc in errors:
        if exc not in causes:
            log.info("%s: %s", what, exc)
    if len(causes) == 1:
        raise causes[0]
    raise GroupFailed(causes)


def _is_cancelled(exc: BaseException, group: Cancel) -> bool:
    """An error that only says the job stopped because a sibling failed."""
    return isinstance(exc, Interrupted) and group.is_set() and str(group.reason) in str(exc)
