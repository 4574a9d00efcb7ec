"""The cancel token, the one wait loop and the fan-out (harness.waiting)."""
import logging
import threading
import time

import pytest

from harness.errors import HarnessError, Interrupted
from harness.waiting import Cancel, GroupFailed, fan_out, wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0
        self.started = time.monotonic()

    def __call__(self) -> float:
        # A wait that keeps reading this clock without sleeping on it never ends: fail, don't
        # hang (a fake-clock wait takes milliseconds of real time).
        self.reads += 1
        assert self.reads < 10_000 and time.monotonic() - self.started < 20, (
            "the wait does not end on the fake clock")
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_until_met_returns_at_once():
    calls = []
    met, why, waited = wait_until(lambda: (calls.append(1) or True, ""), timeout_s=5,
                                  awaited="x", sleep=lambda s: None)
    assert met and waited < 1 and len(calls) == 1


def test_wait_until_times_out_after_a_last_look_at_the_deadline():
    clock, seen = FakeClock(), []

    def check():
        seen.append(clock.now)
        return False, f"not yet at {clock.now:.1f}"
    met, why, waited = wait_until(check, timeout_s=1.0, awaited="x", poll_s=0.3, clock=clock,
                                  sleep=clock.sleep)
    assert not met and waited == pytest.approx(1.0)
    assert seen[-1] == pytest.approx(1.0) and why == "not yet at 1.0"
    assert len(seen) == 5  # 0, .3, .6, .9, 1.0


def test_wait_until_cancelled_names_what_was_awaited():
    cancel = Cancel()
    cancel.set("interrupted")
    with pytest.raises(Interrupted, match="interrupted while waiting for the payload"):
        wait_until(lambda: (False, ""), timeout_s=60, awaited="the payload", cancel=cancel)


def test_wait_until_wakes_on_cancel_instead_of_sleeping_out_the_poll():
    cancel = Cancel()
    threading.Timer(0.2, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(Interrupted):
        wait_until(lambda: (False, ""), timeout_s=60, awaited="x", cancel=cancel, poll_s=30)
    assert time.monotonic() - start < 5


def test_child_token_follows_its_parent_but_not_the_other_way():
    parent = Cancel()
    child = parent.child()
    child.set("sibling failed")
    assert child.is_set() and not parent.is_set()
    other = parent.child()
    parent.set("interrupted")
    assert other.is_set() and other.reason == "interrupted"
    assert parent.child().is_set()  # a child of a cancelled token starts cancelled


def test_fan_out_first_failure_cancels_the_siblings_at_their_next_poll():
    finished = []

    def failing(cancel):
        raise HarnessError("pull failed", step="pull-image", host="local")

    def slow(cancel):
        wait_until(lambda: (False, "pulling"), timeout_s=60, awaited="remote pull",
                   cancel=cancel)
        finished.append("slow")

    start = time.monotonic()
    with pytest.raises(HarnessError, match="pull failed") as err:
        fan_out([failing, slow], Cancel(), "prep")
    assert time.monotonic() - start < 5 and finished == []
    assert not isinstance(err.value, GroupFailed)  # the sibling only stopped: not a failure
    assert err.value.host == "local" and err.value.step == "pull-image"


def test_fan_out_reports_every_hosts_error():
    def fail(host):
        def job(cancel):
            raise HarnessError(f"{host} broke", step="reset", host=host)
        return job

    with pytest.raises(GroupFailed) as err:
        fan_out([fail("local"), fail("remote")], Cancel(), "reset")
    text = str(err.value)
    assert "local broke" in text and "remote broke" in text
    assert err.value.step == "reset" and len(err.value.errors) == 2


def test_fan_out_tells_each_of_several_errors_and_leaves_a_lone_one_to_its_caller(caplog):
    def fail(host):
        def job(cancel):
            raise HarnessError(f"{host} broke", log_tail=f"{host} log tail")
        return job

    with caplog.at_level(logging.ERROR, logger="harness.waiting"), pytest.raises(GroupFailed):
        fan_out([fail("local"), fail("remote")], Cancel(), "reset")
    told = sorted(r.getMessage() for r in caplog.records)
    assert len(told) == 2 and "local log tail" in told[0] and "remote log tail" in told[1]
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="harness.waiting"), pytest.raises(HarnessError):
        fan_out([fail("local"), lambda cancel: None], Cancel(), "reset")
    assert caplog.records == []


def test_fan_out_lone_job_runs_in_the_calling_thread():
    seen = []
    fan_out([lambda cancel: seen.append(threading.current_thread())], Cancel(), "x")
    assert seen == [threading.main_thread()]


def test_fan_out_run_cancel_reaches_every_job():
    run = Cancel()
    stopped = []

    def job(cancel):
        try:
            wait_until(lambda: (False, ""), timeout_s=60, awaited="x", cancel=cancel)
        except Interrupted:
            stopped.append(1)
            raise

    threading.Timer(0.2, run.set, args=("interrupted",)).start()
    with pytest.raises(Interrupted):
        fan_out([job, job], run, "prep")
    assert stopped == [1, 1]


def test_a_back_off_sleep_wakes_and_stops_when_cancelled():
    cancel = Cancel()
    sleep = cancel.sleeper("waiting to retry the wheel download")
    sleep(0.01)                                      # not cancelled: a plain pause
    threading.Timer(0.1, cancel.set, args=("interrupted",)).start()
    started = time.monotonic()
    with pytest.raises(Interrupted, match="interrupted while waiting to retry the wheel"):
        sleep(30)
    assert time.monotonic() - started < 5


def test_wait_until_without_a_token_or_a_sleep_still_ends_on_time():
    start = time.monotonic()
    met, why, waited = wait_until(lambda: (False, "still loading"), timeout_s=0.3, awaited="x",
                                  poll_s=0.05)
    assert (met, why) == (False, "still loading")
    assert 0.3 <= waited < 5 and time.monotonic() - start < 5


def test_wait_until_on_a_token_that_is_never_set_ends_on_time():
    start = time.monotonic()
    met, _, waited = wait_until(lambda: (False, ""), timeout_s=0.3, awaited="x", poll_s=0.05,
                                cancel=Cancel())
    assert not met and 0.3 <= waited < 5 and time.monotonic() - start < 5


@pytest.mark.parametrize("make, said", [
    (lambda: Cancel(), "SIGTERM while waiting for the router"),        # the run's own reason
    (lambda: threading.Event(), "interrupted while waiting for the router"),  # no reason at all
])
def test_wait_until_cancelled_says_why(make, said):
    cancel = make()
    cancel.set(*(["SIGTERM"] if isinstance(cancel, Cancel) else []))
    with pytest.raises(Interrupted) as err:
        wait_until(lambda: (False, ""), timeout_s=60, awaited="the router", cancel=cancel)
    assert str(err.value) == said
