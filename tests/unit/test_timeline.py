"""harness.results.timeline: one JSON line per span, append-only, safe from many threads."""
import json
import threading

import pytest

from harness import redaction
from harness.errors import HarnessError, Interrupted
from harness.results.timeline import Timeline, log_ref, read_spans


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_span_is_one_line_with_its_times_and_outcome(tmp_path):
    timeline = Timeline.fresh(tmp_path / "timeline.jsonl", "run1")
    with timeline.span("remote", "prep", "sync-project"):
        pass
    server = timeline.open("local", "server", "prefill", case="c", log="c/m/prefill.log")
    server.mark_ready()
    server.close()
    server.close()  # a second stop writes nothing more
    [prep, srv] = lines(tmp_path / "timeline.jsonl")
    assert prep["host"] == "remote" and prep["case"] == "" and prep["kind"] == "prep"
    assert prep["outcome"] == "ok" and prep["ready"] is None and prep["end"] >= prep["start"]
    assert srv["run"] == "run1" and srv["log"] == "c/m/prefill.log"
    assert srv["start"] <= srv["ready"] <= srv["end"]


def test_failures_and_cancels_are_told_apart(tmp_path):
    timeline = Timeline.fresh(tmp_path / "t.jsonl", "r")
    with pytest.raises(HarnessError):
        with timeline.span("local", "reset", "stop"):
            raise HarnessError("GPU memory unreadable\nmore detail")
    with pytest.raises(Interrupted):
        with timeline.span("remote", "drain", "drain"):
            raise Interrupted("interrupted")
    timeline.skipped("local", "prep", "pull-image", "HARNESS_RUNTIME=host")
    failed, cancelled, skipped = lines(tmp_path / "t.jsonl")
    assert (failed["outcome"], failed["detail"]) == ("failed", "GPU memory unreadable")
    assert cancelled["outcome"] == "cancelled"
    assert skipped["outcome"] == "skipped" and skipped["end"] == skipped["start"]
    assert skipped["detail"] == "HARNESS_RUNTIME=host"


def test_a_fresh_timeline_forgets_the_last_run_and_spans_left_open_get_no_end(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"old": 1}\n')
    timeline = Timeline.fresh(path, "r")
    timeline.open("local", "server", "router")  # kept up (never stopped)
    timeline.close_open()
    [span] = lines(path)
    assert span["name"] == "router" and span["end"] is None
    assert span["outcome"] == "left running"


def test_threads_write_whole_lines(tmp_path):
    timeline = Timeline.fresh(tmp_path / "t.jsonl", "r")

    def spans(host):
        for index in range(200):
            with timeline.span(host, "request", f"{host}-{index}" + "x" * 500):
                pass

    threads = [threading.Thread(target=spans, args=(f"h{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(lines(tmp_path / "t.jsonl")) == 8 * 200


def test_off_writes_nothing_and_secrets_never_reach_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(redaction, "_known", set())
    Timeline.off().open("local", "prep", "run-dir").close()
    redaction.remember("ghp_timelineSecret42")
    timeline = Timeline.fresh(tmp_path / "t.jsonl", "r")
    with pytest.raises(HarnessError):
        with timeline.span("local", "prep", "get-wheel"):
            raise HarnessError("download with ghp_timelineSecret42 refused")
    assert "ghp_timelineSecret42" not in (tmp_path / "t.jsonl").read_text()


def test_reading_skips_a_torn_line_and_log_refs_are_relative(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"host": "local", "start": 1.0}\n{"host": "rem')
    assert read_spans(path) == [{"host": "local", "start": 1.0}]
    assert read_spans(tmp_path / "missing.jsonl") == []
    assert log_ref("/test_run/run/logs", "/test_run/run/logs/c/m/x.log") == "c/m/x.log"
    assert log_ref("/test_run/run/logs", "/elsewhere/x.log") is None
