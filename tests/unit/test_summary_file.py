"""The run summary read back (rerun, merge, the CLI) and the verdicts written around it: what a
summary file must hold to be read, the one line when it is not, the unfinished verdict a case
carries until it ends, and which summary says it is a rerun."""
from __future__ import annotations

import json

import pytest

from harness.errors import SettingsError
from harness.layout import Layout
from harness.results.outcome import UNFINISHED, CaseResult, write_run_summary, write_unfinished
from harness.results.status import Outcome
from harness.results.summary import failed_cases, read_run_summary, read_summary_file


def test_a_summary_with_named_cases_is_read_as_written(tmp_path):
    layout = Layout.at(tmp_path)
    write_run_summary(layout, [CaseResult("a", Outcome.PASSED), CaseResult("b")], group="VLLM",
                      pr_id="9", prep_s={}, duration_s=1.0)
    summary = read_run_summary(layout)
    assert [c["case"] for c in summary["cases"]] == ["a", "b"]
    assert failed_cases(summary) == ["b"]
    assert read_summary_file(tmp_path / "run/logs/run_summary.json") == summary


def test_a_missing_summary_is_one_line_naming_where_it_was_looked_for(tmp_path):
    path = tmp_path / "run_summary.json"
    with pytest.raises(SettingsError) as caught:
        read_summary_file(path)
    assert caught.value.message == f"no run summary at {path}"
    assert caught.value.__suppress_context__


@pytest.mark.parametrize("text,why", [
    ('{"cases": [', "Expecting value: line 1 column 12 (char 11)"),
    ("", "Expecting value: line 1 column 1 (char 0)"),
])
def test_a_summary_that_is_not_json_is_one_line_saying_why(tmp_path, text, why):
    path = tmp_path / "run_summary.json"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        read_summary_file(path)
    assert caught.value.message == f"{path} is not a readable run summary ({why})"
    assert caught.value.__suppress_context__


def test_a_directory_where_the_summary_should_be_is_unreadable_not_missing(tmp_path):
    with pytest.raises(SettingsError) as caught:
        read_summary_file(tmp_path)
    assert caught.value.message.startswith(f"{tmp_path} is not a readable run summary ([Errno")


@pytest.mark.parametrize("summary", [
    [],                                             # not an object
    [{"case": "a"}],
    {},                                             # no cases
    {"cases": {}},                                  # cases, but not a list
    {"cases": "abc"},
    {"cases": 5},
    {"cases": [{"case": "a"}, "b"]},                # an entry that is not an object
    {"cases": [{"case": "a"}, {"status": "Pass"}]},  # an entry without a name
    {"cases": [{"case": 3}]},                       # a name that is not text
])
def test_a_summary_without_a_list_of_named_cases_is_refused(tmp_path, summary):
    path = tmp_path / "run_summary.json"
    path.write_text(json.dumps(summary))
    with pytest.raises(SettingsError) as caught:
        read_summary_file(path)
    assert caught.value.message == (f"{path} is not a readable run summary "
                                    "(no list of named cases)")


def test_an_empty_list_of_cases_is_a_summary_of_nothing_failed(tmp_path):
    path = tmp_path / "run_summary.json"
    path.write_text('{"cases": []}')
    assert failed_cases(read_summary_file(path)) == []


# --- the unfinished verdict and the rerun's summary ------------------------------------------

def case_files(tmp_path, case: str) -> tuple[dict, dict]:
    logs = tmp_path / "run/logs" / case
    return (json.loads((logs / "test_results.json").read_text()),
            json.loads((logs / "case_summary.json").read_text()))


@pytest.mark.parametrize("group", ["VLLM", "SGLANG"])
def test_an_unfinished_case_is_a_fail_in_its_group_until_it_ends(tmp_path, group):
    result = write_unfinished(Layout.at(tmp_path), "test_x", group=group)
    verdict, summary = case_files(tmp_path, "test_x")
    assert verdict["status"] == "Fail"
    assert (summary["outcome"], summary["reason"], summary["group"]) == (
        "unfinished", UNFINISHED, group)
    assert (result.outcome, result.group, result.decided) == (Outcome.UNFINISHED, group, False)


def test_an_unfinished_case_of_no_group_names_none(tmp_path):
    result = write_unfinished(Layout.at(tmp_path), "test_x")
    assert case_files(tmp_path, "test_x")[1]["group"] == "" == result.group


def test_a_case_that_passes_keeps_no_reason():
    result = CaseResult("c", reason=UNFINISHED)
    result.end(Outcome.PASSED)
    assert (result.passed, result.reason) == (True, "")
    assert result.to_summary()["reason"] == ""


def test_only_a_rerun_summary_names_the_cases_it_reran(tmp_path):
    layout = Layout.at(tmp_path)
    write_run_summary(layout, [CaseResult("a", Outcome.PASSED)], group="SGLANG", pr_id="",
                      prep_s={}, duration_s=0.0)
    assert "reran" not in read_run_summary(layout)
    earlier = read_run_summary(layout)["cases"]
    write_run_summary(layout, [CaseResult("a", Outcome.FAILED, "boom")], group="SGLANG",
                      pr_id="", prep_s={}, duration_s=0.0, earlier=earlier)
    assert read_run_summary(layout)["reran"] == ["a"]
