"""junit.xml element by element, as a dashboard reads it: the counts and times of every suite
and of the whole file, each suite's properties, a testcase's class and time, a failure's
message, type and text, and the facts in a testcase's system-out."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.results.junit import write_junit
from harness.results.summary import write_summary

PASSED = {"case": "hicache", "status": "Pass", "outcome": "passed", "group": "SGLANG",
          "duration_s": 12.5, "started": "2025-01-01T10:00:00Z"}
FAILED = {"case": "pd", "status": "Fail", "outcome": "failed", "group": "SGLANG",
          "duration_s": 3.25, "reason": "decode exited with status 1\nsee the log",
          "step": "start servers", "host": "remote", "server": "decode",
          "tree": "/ci/pair1/run/logs", "started": "2025-01-01T10:01:00Z",
          "models": {"Org/A": "Pass", "Org/B": "Fail: decode exited"},
          "log_tail": "loading\nFAULT \x00 PLAYED"}
UNFINISHED = {"case": "vllm_pd", "status": "Fail", "group": "VLLM", "duration_s": 1.0,
              "reason": "run did not finish"}


def junit(tmp_path: Path, cases: list[dict], **summary) -> ET.Element:
    summary = {"group": "ALL", "pr_id": "77", "finished": "2025-01-01T11:00:00Z", **summary,
               "cases": cases}
    (tmp_path / "run_summary.json").write_text(json.dumps(summary))
    return ET.parse(write_junit(tmp_path)).getroot()


def counts(element: ET.Element) -> dict:
    return {k: element.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}


def case_named(root: ET.Element, name: str) -> ET.Element:
    (case,) = [c for c in root.iter("testcase") if c.get("name") == name]
    return case


def test_every_suite_and_the_whole_file_count_their_tests_failures_and_time(tmp_path):
    root = junit(tmp_path, [FAILED, PASSED, UNFINISHED])
    assert root.tag == "testsuites" and root.get("name") == "mooncake-e2e"
    # a failure before a pass still counts: the run's figures add up every suite's
    assert counts(root) == {"tests": "3", "failures": "2", "errors": "0", "skipped": None,
                            "time": "16.750"}
    sglang, vllm = root.findall("testsuite")
    assert sglang.get("name") == "SGLANG" and vllm.get("name") == "VLLM"
    assert counts(sglang) == {"tests": "2", "failures": "1", "errors": "0", "skipped": "0",
                              "time": "15.750"}
    assert counts(vllm) == {"tests": "1", "failures": "1", "errors": "0", "skipped": "0",
                            "time": "1.000"}


def test_each_suite_opens_with_the_runs_properties(tmp_path):
    root = junit(tmp_path, [PASSED, UNFINISHED])
    for suite in root.findall("testsuite"):
        properties = suite[0]
        assert properties.tag == "properties"
        assert [(p.get("name"), p.get("value")) for p in properties] == [
            ("group", "ALL"), ("pr_id", "77"), ("finished", "2025-01-01T11:00:00Z")]


def test_a_run_in_progress_has_empty_properties_not_none(tmp_path):
    root = junit(tmp_path, [UNFINISHED], pr_id=None, finished=None)
    properties = root.find("testsuite/properties")
    assert {p.get("name"): p.get("value") for p in properties} == {
        "group": "ALL", "pr_id": "", "finished": ""}


def test_the_file_declares_itself_as_xml(tmp_path):
    junit(tmp_path, [PASSED])
    text = (tmp_path / "junit.xml").read_text()
    assert text.startswith("<?xml version='1.0' encoding='utf-8'?>\n<testsuites ")
    assert text.endswith("</testsuites>\n")


@pytest.mark.parametrize("summary_group,suite", [("VLLM", "VLLM"), (None, "cases"), ("", "cases")])
def test_a_case_without_a_group_goes_to_the_runs_group_or_else_cases(tmp_path, summary_group,
                                                                       suite):
    root = junit(tmp_path, [{"case": "x", "status": "Pass"}], group=summary_group)
    assert [s.get("name") for s in root.findall("testsuite")] == [suite]
    assert case_named(root, "x").get("classname") == suite


def test_a_testcase_has_its_group_as_class_and_its_duration_as_time(tmp_path):
    root = junit(tmp_path, [PASSED, {"case": "quick", "status": "Pass", "group": "SGLANG"}])
    hicache = case_named(root, "hicache")
    assert (hicache.get("classname"), hicache.get("time")) == ("SGLANG", "12.500")
    assert case_named(root, "quick").get("time") == "0.000"  # no duration recorded: no time
    assert case_named(root, "quick").find("system-out") is None  # nothing to say: no output


def test_a_failure_says_the_reason_first_line_the_step_and_where_it_failed(tmp_path):
    failure = case_named(junit(tmp_path, [FAILED]), "pd").find("failure")
    assert failure.get("message") == "decode exited with status 1"
    assert failure.get("type") == "start servers"
    assert failure.text == ("decode exited with status 1\nsee the log\nstep: start servers\n"
                            "host: remote\nserver: decode\nOrg/A: Pass\nOrg/B: Fail: decode exited")


def test_a_failure_without_reason_or_step_still_says_it_failed(tmp_path):
    failure = case_named(junit(tmp_path, [{"case": "x", "status": "Fail"}]), "x").find("failure")
    assert (failure.get("message"), failure.get("type"), failure.text) == ("failed", "Fail",
                                                                           "failed")


def test_system_out_holds_the_facts_models_and_log_tail_line_by_line(tmp_path):
    out = case_named(junit(tmp_path, [FAILED]), "pd").find("system-out").text
    assert out == ("started: 2025-01-01T10:01:00Z\noutcome: failed\nstep: start servers\n"
                   "host: remote\nserver: decode\ntree: /ci/pair1/run/logs\n"
                   "Org/A: Pass\nOrg/B: Fail: decode exited\n"
                   "log tail:\nloading\nFAULT \N{REPLACEMENT CHARACTER} PLAYED")


def test_a_passed_case_has_no_failure_and_its_facts_in_system_out(tmp_path):
    case = case_named(junit(tmp_path, [PASSED]), "hicache")
    assert case.find("failure") is None
    assert case.find("system-out").text == "started: 2025-01-01T10:00:00Z\noutcome: passed"


def test_write_summary_writes_the_summary_and_the_junit_made_from_it(tmp_path):
    write_summary(tmp_path, {"group": "VLLM", "pr_id": "5", "finished": None,
                             "cases": [UNFINISHED]})
    assert json.loads((tmp_path / "run_summary.json").read_text())["cases"] == [UNFINISHED]
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert counts(root)["failures"] == "1"
