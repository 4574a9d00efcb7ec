"""The verdict files CI reads (SPEC §4), checked the way tone-cli reads them.

`test_results.json` must be one line in the old scripts' exact format and must never be seen
half-written: a reader racing the writer sees the old file or the whole new one. The run summary
says `passed` only when every case passed and there was at least one.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from harness.results import outcome as results
from harness.files import write_json_atomic
from harness.layout import Layout
from harness.results.outcome import CaseResult
from harness.results.status import Outcome, Status

SPEC_LINE = re.compile(r'\{"test_case": "(?P<case>[^"]+)", "status": "(?P<status>Pass|Fail)", '
                       r'"timestamp": "(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"\}\n')


def results_file(root: Path, case: str) -> Path:
    return root / "run" / "logs" / case / "test_results.json"


def test_results_file_is_the_old_scripts_one_line(tmp_path):
    layout = Layout.at(tmp_path)
    results.write_case_result(layout, CaseResult("test_a", Outcome.PASSED, reason="fine"))
    results.write_case_result(layout, CaseResult("test_b", Outcome.FAILED, reason="boom"))
    for case, status in (("test_a", "Pass"), ("test_b", "Fail")):
        text = results_file(tmp_path, case).read_text()
        match = SPEC_LINE.fullmatch(text)
        assert match, text
        assert match["case"] == case and match["status"] == status
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_results_timestamp_is_utc_when_the_case_ended(tmp_path):
    ended = 1765198220.0  # 2025-12-08T12:50:20Z
    result = CaseResult("test_a", Outcome.PASSED, started=ended - 3600)
    result.ended = ended
    results.write_case_result(Layout.at(tmp_path), result)
    match = SPEC_LINE.fullmatch(results_file(tmp_path, "test_a").read_text())
    assert match and match["ts"] == "2025-12-08T12:50:20Z"
    summary = json.loads((tmp_path / "run/logs/test_a/case_summary.json").read_text())
    assert summary["started"] == "2025-12-08T11:50:20Z"
    assert summary["ended"] == "2025-12-08T12:50:20Z"
    assert summary["status"] == "Pass" and summary["outcome"] == "passed"
    assert set(summary) == {"case", "status", "outcome", "reason", "step", "host", "server",
                            "started", "ended", "duration_s", "steps_s", "models",
                            "cleanup_errors", "log_tail", "group", "mooncake"}


@pytest.fixture
def far_from_utc(monkeypatch):
    """A local time zone 8 hours from UTC (the T-One hosts' own), so UTC is not the default."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_utc_timestamp_format(far_from_utc):
    assert results.utc_timestamp(0) == "1970-01-01T00:00:00Z"
    assert results.utc_timestamp(1765198220.9) == "2025-12-08T12:50:20Z"
    now = results.utc_timestamp()
    assert abs(time.mktime(time.strptime(now, "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(
        time.gmtime())) < 5


def test_case_summary_is_indented_json_and_says_when_the_case_ended(tmp_path):
    result = CaseResult("test_a", Outcome.PASSED)
    assert result.to_summary()["ended"] is None and result.to_summary()["status"] == "Pass"
    results.write_case_result(Layout.at(tmp_path), result)
    text = (tmp_path / "run/logs/test_a/case_summary.json").read_text()
    assert text.startswith('{\n  "case": "test_a",\n  "status": "Pass",\n')
    stamp = SPEC_LINE.fullmatch(results_file(tmp_path, "test_a").read_text())["ts"]
    assert json.loads(text)["ended"] == stamp


def test_case_summary_carries_the_detail_test_results_must_not(tmp_path):
    result = CaseResult("test_a", Outcome.FAILED, reason="decode crashed\nline 2", step="start",
                        host="remote", server="decode", duration_s=12.34567,
                        models={"m": "Fail"}, cleanup_errors=["x left"], log_tail="tail")
    result.steps_s["start"] = 0.5
    results.write_case_result(Layout.at(tmp_path), result)
    summary = json.loads((tmp_path / "run/logs/test_a/case_summary.json").read_text())
    assert summary["case"] == "test_a" and summary["status"] == "Fail"
    assert summary["reason"] == "decode crashed\nline 2"
    assert (summary["step"], summary["host"], summary["server"]) == ("start", "remote", "decode")
    assert summary["duration_s"] == 12.346
    assert summary["models"] == {"m": "Fail"} and summary["cleanup_errors"] == ["x left"]
    assert "start" in summary["steps_s"] and summary["log_tail"] == "tail"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", summary["started"])
    line = json.loads(results_file(tmp_path, "test_a").read_text())
    assert set(line) == {"test_case", "status", "timestamp"}


def test_a_step_adds_up_its_time_and_names_itself_on_an_error_raised_in_it(caplog):
    from harness.errors import HarnessError
    from harness.results.steps import Steps
    times: dict[str, float] = {}
    steps = Steps("remote", "prep remote", times, key=lambda name: f"remote:{name}")
    with caplog.at_level("INFO"):
        with steps.step("pull-image"):
            time.sleep(0.02)
        with pytest.raises(HarnessError) as info:
            with steps.step("pull-image"):
                time.sleep(0.02)
                raise HarnessError("registry said no")
    assert 0.04 <= times["remote:pull-image"] < 5
    assert (info.value.step, info.value.host) == ("pull-image", "remote")
    assert "prep remote: pull-image done (" in caplog.text


def test_a_skip_is_told_once_with_its_one_reason(caplog):
    from harness.results.steps import Skipped, Steps
    times: dict[str, float] = {}
    steps = Steps("local", "prep local", times)
    with caplog.at_level("INFO"):
        steps.skip("get-wheel", "no wheel asked for")
        assert steps("pull-image", lambda: Skipped("the image is present")) == \
            Skipped("the image is present")
        steps.tell_skipped()
        steps.tell_skipped()
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    # told before the next step starts, each once
    assert lines == ["prep local: get-wheel skipped (no wheel asked for)",
                     "prep local: pull-image skipped (the image is present)"]
    assert times["get-wheel"] == 0.0


def test_a_case_is_fail_unless_it_says_pass():
    assert CaseResult("c").status is Status.FAIL and not CaseResult("c").passed
    assert CaseResult("c", Outcome.PASSED).passed


# --- atomicity -----------------------------------------------------------------------------------
def test_the_target_only_ever_changes_by_renaming_a_complete_file(tmp_path, monkeypatch):
    """Every rename onto test_results.json brings the whole new line from the same directory,
    and until that rename the old file is whole: there is no moment with a part of a file."""
    layout = Layout.at(tmp_path)
    target = results_file(tmp_path, "test_a")
    results.write_case_result(layout, CaseResult("test_a", Outcome.FAILED))
    old = target.read_text()
    seen = []
    real_replace, real_rename = os.replace, os.rename

    def spy(real):
        def move(src, dst, *args, **kwargs):
            if Path(dst) == target:
                seen.append((Path(src), target.read_text(), Path(src).read_text()))
            return real(src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "replace", spy(real_replace))
    monkeypatch.setattr(os, "rename", spy(real_rename))
    results.write_case_result(layout, CaseResult("test_a", Outcome.PASSED))
    assert len(seen) == 1, "test_results.json was not written by one rename of a complete file"
    src, before, incoming = seen[0]
    assert before == old
    assert src.parent == target.parent and src != target
    assert SPEC_LINE.fullmatch(incoming) and '"Pass"' in incoming
    assert target.read_text() == incoming


def test_a_reader_racing_the_writer_never_sees_a_partial_file(tmp_path):
    """tone-cli may read while the harness rewrites: hammer the file from another thread."""
    layout = Layout.at(tmp_path)
    target = results_file(tmp_path, "test_a")
    results.write_case_result(layout, CaseResult("test_a", Outcome.FAILED))
    bad: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                text = target.read_text()
            except FileNotFoundError:
                bad.append("<missing>")
                continue
            reads += 1
            if not SPEC_LINE.fullmatch(text):
                bad.append(text)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    try:
        for i in range(150):
            status = Outcome.PASSED if i % 2 else Outcome.FAILED
            results.write_case_result(layout, CaseResult("test_a", status, reason="x" * 4000))
            if bad or time.monotonic() > deadline:
                break
    finally:
        stop.set()
        thread.join(5)
    assert not bad, f"a reader saw {len(bad)} partial/missing files, e.g. {bad[0]!r}"
    assert reads > 0


def test_write_json_atomic_replaces_the_old_content_and_leaves_no_temp(tmp_path):
    path = tmp_path / "deep" / "er" / "x.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert path.read_text().endswith("\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


# --- the run summary -----------------------------------------------------------------------------
def run_summary(tmp_path: Path, cases: list[CaseResult]) -> dict:
    results.write_run_summary(Layout.at(tmp_path), cases, group="SGLANG", pr_id="1234",
                              prep_s={"local:wheel": 1.23456}, duration_s=9.87654)
    return json.loads((tmp_path / "run/logs/run_summary.json").read_text())


def test_run_summary_passes_only_when_every_case_passed(tmp_path):
    ok = run_summary(tmp_path, [CaseResult("a", Outcome.PASSED), CaseResult("b", Outcome.PASSED)])
    assert ok["passed"] is True
    assert ok["group"] == "SGLANG" and ok["pr_id"] == "1234"
    assert ok["duration_s"] == 9.877 and ok["prep_s"] == {"local:wheel": 1.23456}
    assert [c["case"] for c in ok["cases"]] == ["a", "b"]
    assert [c["status"] for c in ok["cases"]] == ["Pass", "Pass"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ok["finished"])
    one_failed = run_summary(tmp_path, [CaseResult("a", Outcome.PASSED), CaseResult("b")])
    assert one_failed["passed"] is False
    assert run_summary(tmp_path, [])["passed"] is False  # nothing ran: not a pass


def test_summary_table_lines_up_and_shows_the_first_line_of_a_reason():
    rows = [CaseResult("a", Outcome.PASSED, duration_s=1.25),
            CaseResult("a_longer_case", Outcome.FAILED, reason="boom\nmore", duration_s=3),
            CaseResult("c", Outcome.FAILED, reason="r" * 300, duration_s=0.04)]
    lines = results.summary_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["case", "status", "duration", "reason"]
    assert lines[1].split() == ["a", "Pass", "1.2s"]
    assert lines[2].split() == ["a_longer_case", "Fail", "3.0s", "boom"]
    assert lines[3].split()[:3] == ["c", "Fail", "0.0s"] and len(lines[3].split()[3]) == 160
    # columns: each cell starts where its header starts
    for name in ("status", "duration", "reason"):
        column = lines[0].index(name)
        assert lines[2][column - 2:column] == "  " and lines[2][column] != " "
    assert all(line == line.rstrip() for line in lines)


# --- the one wait loop ---------------------------------------------------------------------------
def test_wait_until_polls_without_a_cancel_token_until_met():
    from harness.waiting import wait_until
    answers = iter([(False, "a"), (False, "b"), (True, "")])
    met, why, waited = wait_until(lambda: next(answers), timeout_s=10, awaited="x", poll_s=0.01)
    assert met and why == "" and waited < 5


def test_wait_until_with_a_plain_event_says_interrupted():
    from harness.errors import Interrupted
    from harness.waiting import wait_until
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted) as err:
        wait_until(lambda: (False, ""), timeout_s=10, awaited="the decode server", cancel=stop)
    assert str(err.value) == "interrupted while waiting for the decode server"


def test_every_outcome_maps_to_the_seed_status_and_only_a_pass_is_pass():
    assert {o: o.status for o in Outcome} == {
        Outcome.PASSED: Status.PASS, Outcome.FAILED: Status.FAIL,
        Outcome.UNFINISHED: Status.FAIL, Outcome.NOT_RUN: Status.FAIL,
        Outcome.INTERRUPTED: Status.FAIL, Outcome.UNHEALTHY: Status.FAIL}
    result = CaseResult("c")
    assert not result.decided and result.status is Status.FAIL
    result.end(Outcome.INTERRUPTED, "interrupted (Ctrl-C or SIGTERM); run stopped")
    assert result.decided and not result.passed
    assert result.to_summary()["outcome"] == "interrupted"
