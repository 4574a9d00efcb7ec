"""The fan-out (harness.waiting.fan_out) as the runner relies on it: which token each job gets,
what a stopped sibling says, what is logged of several failures, and Ctrl-C in the caller:
the jobs are cancelled and waited for (a bounded time), then the interrupt goes on up."""
from __future__ import annotations

import ctypes
import logging
import sys
import threading
import time

import pytest

from harness import waiting
from harness.errors import HarnessError, Interrupted
from harness.waiting import Cancel, GroupFailed, fan_out, wait_until

# Far above what any of these takes: a test that reaches it has found a hang.
BOUND_S = 10.0


def waits_for_cancel(name: str, stopped: list[str] | None = None, cleanup_s: float = 0.0):
    """A job that waits (up to a minute) until its token is set; it records why it stopped,
    after a cleanup of `cleanup_s`."""
    def job(cancel: Cancel) -> None:
        try:
            wait_until(lambda: (False, "not yet"), timeout_s=60, awaited=name, cancel=cancel)
        except Interrupted as exc:
            time.sleep(cleanup_s)
            if stopped is not None:
                stopped.append(str(exc))
            raise
    return job


def test_a_lone_job_gets_a_token_that_follows_the_run():
    run, given = Cancel(), []
    fan_out([given.append], run, "prep")
    assert not given[0].is_set()
    run.set("interrupted")
    assert given[0].is_set() and given[0].reason == "interrupted"


def test_jobs_run_in_daemon_threads_named_after_the_fan_out():
    """Daemons: a job that never notices a cancel cannot keep the harness from exiting; the
    names say in a thread dump which fan-out a thread belongs to."""
    seen = {}
    lock = threading.Lock()

    def job(cancel):
        with lock:
            seen[threading.current_thread().name] = threading.current_thread().daemon

    fan_out([job, job, job], Cancel(), "server start")
    assert seen == {"server start-0": True, "server start-1": True, "server start-2": True}


def test_a_stopped_sibling_says_why_and_is_told_at_debug_only(caplog):
    def fails(cancel):
        raise HarnessError("pull failed")

    with caplog.at_level(logging.DEBUG, logger="harness.waiting"), \
            pytest.raises(HarnessError, match="pull failed"):
        fan_out([fails, waits_for_cancel("remote pull")], Cancel(), "prep")
    told = {r.getMessage(): r.levelno for r in caplog.records}
    sibling = ("prep: cancelled: another job of prep failed while waiting for remote pull")
    assert told == {sibling: logging.DEBUG, "prep: pull failed": logging.DEBUG}


def test_several_failures_are_each_told_with_their_details_and_raised_together(caplog):
    local = HarnessError("local broke", host="local", log_tail="local log tail")

    def local_fails(cancel):
        raise local

    def remote_fails(cancel):
        raise ValueError("remote broke")

    with caplog.at_level(logging.DEBUG, logger="harness.waiting"), \
            pytest.raises(GroupFailed) as err:
        fan_out([local_fails, remote_fails, waits_for_cancel("remote pull")], Cancel(), "reset")
    causes = err.value.errors
    assert len(causes) == 2 and local in causes
    assert {type(e) for e in causes} == {HarnessError, ValueError}    # not the stopped sibling
    errors = {r.getMessage() for r in caplog.records if r.levelno == logging.ERROR}
    assert errors == {f"reset: {local.details()}", "reset: ValueError('remote broke')"}
    assert "local log tail" in local.details()


def test_a_run_cancel_raises_what_the_job_that_stopped_said():
    run = Cancel()

    def finishes(cancel):
        run.set("SIGTERM")

    with pytest.raises(Interrupted) as err:
        fan_out([finishes, waits_for_cancel("the payload")], run, "payload")
    assert str(err.value) == "SIGTERM while waiting for the payload"


# --- Ctrl-C in the calling thread ----------------------------------------------------------------
def waiting_on_its_jobs(ident: int) -> bool:
    """Whether thread `ident` is in fan_out's wait for its jobs (a mutation run renames
    fan_out's code `x_fan_out__mutmut_...`)."""
    frame = sys._current_frames().get(ident)
    while frame is not None:
        if frame.f_code.co_name == "wait" and frame.f_back is not None and (
                "fan_out" in frame.f_back.f_code.co_name):
            return True
        frame = frame.f_back
    return False


def press_ctrl_c_in(ident: int) -> threading.Thread:
    """Once thread `ident` waits for its jobs, raise KeyboardInterrupt in it (as Ctrl-C does
    in the main thread)."""
    def press() -> None:
        deadline = time.monotonic() + BOUND_S
        while not waiting_on_its_jobs(ident) and time.monotonic() < deadline:
            time.sleep(0.01)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                   ctypes.py_object(KeyboardInterrupt))
    presser = threading.Thread(target=press, daemon=True)
    presser.start()
    return presser


def backs_off(name: str, stopped: list[str]):
    """A job that retries with back-off pauses on its token (a download), up to a minute."""
    def job(cancel: Cancel) -> None:
        sleep = cancel.sleeper(f"retrying {name}")
        try:
            for _ in range(600):
                sleep(0.1)
        except Interrupted as exc:
            stopped.append(str(exc))
            raise
    return job


def test_ctrl_c_cancels_every_job_and_waits_for_their_cleanup():
    stopped: list[str] = []
    jobs = [waits_for_cancel(f"job {i}", stopped, cleanup_s=0.3) for i in range(2)]
    jobs.append(backs_off("the wheel download", stopped))
    presser = press_ctrl_c_in(threading.get_ident())
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fan_out(jobs, Cancel(), "prep")
    assert time.monotonic() - start < BOUND_S
    presser.join(BOUND_S)
    # both had their cleanup before the interrupt went on up
    assert sorted(stopped) == ["interrupted while retrying the wheel download",
                               "interrupted while waiting for job 0",
                               "interrupted while waiting for job 1"]


def test_ctrl_c_gives_up_on_jobs_that_ignore_the_cancel_after_one_join_limit(monkeypatch):
    """JOIN_AFTER_CANCEL_S bounds the whole wait, not each job's: a dozen stuck jobs still let
    the interrupt go on up after about one limit."""
    monkeypatch.setattr(waiting, "JOIN_AFTER_CANCEL_S", 0.5)
    release = threading.Event()

    def stuck(cancel):
        release.wait(3 * BOUND_S)

    presser = press_ctrl_c_in(threading.get_ident())
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            fan_out([stuck] * 12 + [waits_for_cancel("job")], Cancel(), "prep")
        assert time.monotonic() - start < BOUND_S
    finally:
        release.set()
        presser.join(BOUND_S)
