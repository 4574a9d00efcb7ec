"""Progress lines: a wait that lasts says every PROGRESS_EVERY_S what it waits for, where, for how
long out of how long, and what the awaited thing said last; a short wait says nothing."""
import logging
import time

import pytest

from harness import waiting
from harness.containers.docker_sdk import PullProgress
from harness.waiting import note_progress, reporting, wait_until
from tests.unit.test_waiting import FakeClock


@pytest.fixture(autouse=True)
def every_30s():
    waiting.set_progress_every(30.0)
    yield
    waiting.set_progress_every(30.0)


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("still waiting")]


def test_a_long_wait_prints_one_line_per_interval_with_elapsed_timeout_and_detail(caplog):
    caplog.set_level(logging.INFO, logger="harness.waiting")
    clock = FakeClock()
    said = iter(f"loading shard {i}" for i in range(1000))
    met, _, waited = wait_until(lambda: (False, "no ready line"), timeout_s=100,
                                awaited="prefill on remote (log line 'ready')", poll_s=1.0,
                                clock=clock, sleep=clock.sleep, detail=lambda: next(said))
    assert not met and waited == 100
    lines = progress_lines(caplog)
    assert len(lines) == 3, lines  # at 30, 60 and 90 s; the deadline itself is the error's job
    assert lines[0].startswith("still waiting for prefill on remote (log line 'ready'): 30s of "
                               "100s; loading shard")
    assert [line.split(": ")[1].split(";")[0] for line in lines] == [
        "30s of 100s", "60s of 100s", "90s of 100s"]


def test_without_a_detail_the_line_says_why_the_wait_is_not_over(caplog):
    caplog.set_level(logging.INFO, logger="harness.waiting")
    clock = FakeClock()
    wait_until(lambda: (False, "8 GPUs: max 3000 MB > 1024 MB"), timeout_s=45,
               awaited="GPU memory to drain on local", poll_s=5, clock=clock, sleep=clock.sleep)
    assert progress_lines(caplog) == [
        "still waiting for GPU memory to drain on local: 30s of 45s; "
        "8 GPUs: max 3000 MB > 1024 MB"]


def test_a_wait_shorter_than_the_interval_prints_nothing(caplog):
    caplog.set_level(logging.INFO, logger="harness.waiting")
    clock = FakeClock()
    checks = iter([False] * 25 + [True])
    met, _, _ = wait_until(lambda: (next(checks), "not yet"), timeout_s=240, awaited="router",
                           poll_s=1, clock=clock, sleep=clock.sleep)
    assert met and progress_lines(caplog) == []


def test_a_detail_that_fails_never_fails_the_wait(caplog):
    caplog.set_level(logging.INFO, logger="harness.waiting")
    clock = FakeClock()

    def broken() -> str:
        raise OSError("log unreadable")

    checks = iter([False] * 40 + [True])
    met, _, _ = wait_until(lambda: (next(checks), ""), timeout_s=240, awaited="decode",
                           poll_s=1, clock=clock, sleep=clock.sleep, detail=broken)
    assert met
    assert progress_lines(caplog) == [
        "still waiting for decode: 30s of 240s; (no detail: log unreadable)"]


def test_a_blocking_call_inside_reporting_gets_lines_with_the_latest_note(caplog):
    caplog.set_level(logging.INFO, logger="harness.waiting")
    waiting.set_progress_every(0.2)
    with reporting("pull-image on local"):
        note_progress("1/3 layers done")
        time.sleep(0.5)
        note_progress("2/3 layers done")
        time.sleep(0.3)
    lines = progress_lines(caplog)
    assert lines and all(line.startswith("still waiting for pull-image on local: ")
                         for line in lines)
    assert lines[0].endswith("; 1/3 layers done") and lines[-1].endswith("; 2/3 layers done")
    time.sleep(0.3)  # the timer ended with the block
    assert len(progress_lines(caplog)) == len(lines)


def test_pull_progress_counts_layers_and_bytes_from_the_engine_messages():
    pull = PullProgress()
    messages = [
        {"status": "Pulling from library/sglang", "id": "v0.5"},
        {"status": "Pulling fs layer", "id": "aaa"},
        {"status": "Pulling fs layer", "id": "bbb"},
        {"status": "Already exists", "id": "ccc"},
        {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 5e8, "total": 2e9}},
        {"status": "Downloading", "id": "bbb", "progressDetail": {"current": 1e9, "total": 1e9}},
        {"status": "Download complete", "id": "bbb"},
        {"status": "Extracting", "id": "bbb", "progressDetail": {"current": 3, "total": 9}},
    ]
    for message in messages:
        pull.feed(message)
    assert pull.describe() == "2/3 layers done, 1.50 of 3.00 GB downloaded"
