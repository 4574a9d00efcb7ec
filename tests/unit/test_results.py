import json
import re

from harness.layout import Layout, model_dir_name
from harness.results.outcome import CaseResult, summary_table, write_case_result
from harness.results.status import Outcome


def test_results_file_is_exactly_the_spec_format(tmp_path):
    layout = Layout.at(tmp_path)
    result = CaseResult("test_x", Outcome.FAILED, reason="decode server crashed", step="start")
    write_case_result(layout, result)
    data = json.loads((tmp_path / "run/logs/test_x/test_results.json").read_text())
    assert set(data) == {"test_case", "status", "timestamp"}
    assert data["test_case"] == "test_x" and data["status"] == "Fail"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["timestamp"])
    summary = json.loads((tmp_path / "run/logs/test_x/case_summary.json").read_text())
    assert summary["reason"] == "decode server crashed" and summary["step"] == "start"
    assert not list((tmp_path / "run/logs/test_x").glob("*.tmp"))


def test_summary_table_shows_reason_first_line():
    rows = [CaseResult("a", Outcome.PASSED, duration_s=1.25),
            CaseResult("bb", Outcome.FAILED, reason="boom\nmore", duration_s=3)]
    table = summary_table(rows)
    assert "Pass" in table and re.search(r"1\.[23]s", table)
    assert "boom" in table and "more" not in table


def test_layout_paths():
    layout = Layout.at("/p")
    assert str(layout.results_file("c")) == "/p/run/logs/c/test_results.json"
    assert str(layout.pid_file("c", "decode")) == "/p/run/pids/c/decode.pid"
    assert str(layout.model_logs("c", "Qwen/Qwen3-8B")) == "/p/run/logs/c/Qwen__Qwen3-8B"
    assert model_dir_name("a/b") == "a__b"
    container = layout.view("/test_run")
    assert str(layout.translate("/p/run/logs/c/x.log", container)) == "/test_run/run/logs/c/x.log"
    assert layout.path_entries()["TEST_RESULT_DIR"] == "/p/run/logs"
