"""junit.xml from run_summary.json, read back by a real consumer (junitparser), and the run summary
a rerun updates."""
import json
from pathlib import Path

import pytest
from junitparser import Failure, JUnitXml, Properties

from harness.results import outcome as results
from harness.results.junit import write_junit
from harness.layout import Layout
from harness.results.outcome import CaseResult
from harness.results.status import Outcome
from harness.results.summary import failed_cases


def summary_with(tmp_path: Path, cases: list[CaseResult], **kw) -> Path:
    results.write_run_summary(Layout.at(tmp_path), cases, group="SGLANG", pr_id="77",
                              prep_s={}, duration_s=30.0, **kw)
    return tmp_path / "run/logs"


def suites(logs: Path) -> dict:
    return {suite.name: suite for suite in JUnitXml.fromfile(str(logs / "junit.xml"))}


def test_a_testsuite_per_group_and_a_testcase_per_case_with_its_time(tmp_path):
    logs = summary_with(tmp_path, [
        CaseResult("hicache", Outcome.PASSED, duration_s=12.5, group="SGLANG"),
        CaseResult("pd", Outcome.FAILED, "decode exited with status 1", step="start servers",
                   host="remote", server="decode", duration_s=3.25, group="SGLANG",
                   models={"Org/A": "Pass", "Org/B": "Fail: decode exited"},
                   log_tail="line one\nFAULT PLAYED decode:crash\x1b[0m\x00"),
        CaseResult("vllm_pd", duration_s=1.0, reason="run did not finish", group="VLLM"),
    ])
    found = suites(logs)
    assert sorted(found) == ["SGLANG", "VLLM"]
    sglang, vllm = found["SGLANG"], found["VLLM"]
    assert (sglang.tests, sglang.failures, vllm.tests, vllm.failures) == (2, 1, 1, 1)
    cases = {case.name: case for suite in found.values() for case in suite}
    assert cases["hicache"].is_passed and cases["hicache"].time == 12.5
    pd = cases["pd"]
    assert pd.time == 3.25 and not pd.is_passed
    (failure,) = pd.result
    assert isinstance(failure, Failure)
    assert failure.message == "decode exited with status 1"
    for where in ("step: start servers", "host: remote", "server: decode",
                  "Org/B: Fail: decode exited"):
        assert where in failure.text
    assert "FAULT PLAYED decode:crash" in pd.system_out  # the log tail, less what XML can't hold
    assert "Org/A: Pass" in pd.system_out
    # the schema allows a testcase no properties: its facts are lines of its system-out
    assert pd.child(Properties) is None
    for fact in ("host: remote", "step: start servers", "outcome: failed", "started: 20"):
        assert fact in pd.system_out, pd.system_out
    assert cases["vllm_pd"].result[0].message == "run did not finish"


def test_the_summary_of_a_run_in_progress_is_not_finished(tmp_path):
    logs = summary_with(tmp_path, [CaseResult("a", reason="run did not finish")],
                        finished=False)
    summary = json.loads((logs / "run_summary.json").read_text())
    assert summary["finished"] is None and summary["passed"] is False
    assert suites(logs)["SGLANG"].failures == 1  # no group on the entry: the run's label


def test_a_rerun_replaces_its_cases_and_keeps_the_others_in_place(tmp_path):
    earlier = [CaseResult(n, Outcome.PASSED if n != "b" else Outcome.FAILED, group="SGLANG",
                          reason="" if n != "b" else "boom").to_summary() for n in "abc"]
    logs = summary_with(tmp_path, [CaseResult("b", Outcome.PASSED, group="SGLANG")],
                        earlier=earlier)
    summary = json.loads((logs / "run_summary.json").read_text())
    assert [(c["case"], c["status"]) for c in summary["cases"]] == [
        ("a", "Pass"), ("b", "Pass"), ("c", "Pass")]
    assert summary["passed"] is True and summary["reran"] == ["b"]
    assert failed_cases(summary) == []
    assert suites(logs)["SGLANG"].tests == 3


def test_write_junit_needs_only_the_summary(tmp_path):
    (tmp_path / "run_summary.json").write_text(json.dumps({
        "group": "merged", "cases": [{"case": "x", "status": "Fail", "reason": "r\nmore",
                                      "group": "VLLM", "duration_s": 2}]}))
    path = write_junit(tmp_path)
    (suite,) = JUnitXml.fromfile(str(path))
    (case,) = suite
    assert (suite.name, case.name, case.time, case.result[0].message) == ("VLLM", "x", 2.0, "r")


def test_the_file_validates_against_the_published_junit_schema(tmp_path, junit_schema):
    logs = summary_with(tmp_path, [
        CaseResult("hicache", Outcome.PASSED, duration_s=12.5, group="SGLANG"),
        CaseResult("pd", Outcome.FAILED, "decode exited", step="start servers", host="remote",
                   server="decode", group="SGLANG", models={"Org/A": "Fail: x"},
                   log_tail="tail \x00\x1b[0m"),
        CaseResult("vllm_pd", reason="run did not finish", group="VLLM")])
    errors = [f"{e.path}: {e.reason}" for e in junit_schema.iter_errors(str(logs / "junit.xml"))]
    assert errors == []


PREFLIGHT = {"ok": True, "build": "mooncake-transfer-engine 0.3.14", "protocol": "rdma",
             "memory": "gpu", "route": "10.0.0.1 -> 10.0.0.2", "duration_s": 4.5,
             "sizes": [{"bytes": 4096, "write_gbps": 0.01, "write_ms": 0.4, "read_gbps": 0.02,
                        "read_ms": 0.2}],
             "store": {"bytes": 1048576, "put_ms": 2.0, "get_ms": 3.0, "master": "h:1"}}


@pytest.mark.parametrize("found", [PREFLIGHT, {"ok": False, "error": "Mooncake pre-flight: x"},
                                   {"ok": False, "skipped": "PREFLIGHT=false"}],
                         ids=["figures", "failed", "skipped"])
def test_the_preflight_is_its_own_suite_and_the_file_still_validates(tmp_path, junit_schema,
                                                                     found):
    logs = summary_with(tmp_path, [CaseResult("pd", Outcome.PASSED, group="SGLANG")],
                        preflight=found)
    errors = [f"{e.path}: {e.reason}" for e in junit_schema.iter_errors(str(logs / "junit.xml"))]
    assert errors == []
    suite = suites(logs)["mooncake_preflight"]
    assert suite.tests == 1 and suites(logs)["SGLANG"].tests == 1
    assert suite.failures == (0 if found.get("ok") or found.get("skipped") else 1)
    assert suite.skipped == (1 if found.get("skipped") else 0)
    (case,) = suite
    assert (case.name, case.classname) == ("mooncake_preflight", "mooncake")
    assert case.time == (4.5 if found.get("ok") else 0.0)
    if found.get("ok"):
        plotted = {p.name: p.value for p in suite.properties()}
        assert plotted == {"build": "mooncake-transfer-engine 0.3.14", "protocol": "rdma",
                           "memory": "gpu", "route": "10.0.0.1 -> 10.0.0.2",
                           "write_gbps_4096": "0.01", "write_ms_4096": "0.4",
                           "read_gbps_4096": "0.02", "read_ms_4096": "0.2",
                           "store_put_ms": "2.0", "store_get_ms": "3.0"}
        assert case.system_out.splitlines() == [
            "build: mooncake-transfer-engine 0.3.14", "protocol: rdma", "memory: gpu",
            "route: 10.0.0.1 -> 10.0.0.2",
            "4096 bytes: write 0.01 GB/s 0.4 ms, read 0.02 GB/s 0.2 ms",
            "store put_ms: 2.0", "store get_ms: 3.0"]
    elif found.get("skipped"):
        assert case.result[0].message == "PREFLIGHT=false" and case.system_out is None


def test_a_failed_preflight_is_a_failure_whose_message_is_the_errors_first_line(tmp_path):
    error = "Mooncake pre-flight: on remote (10.0.0.2): write returned -1\nthe target said: x"
    logs = summary_with(tmp_path, [], preflight={"ok": False, "error": error,
                                                 "protocol": "tcp", "duration_s": 1.25})
    suite = suites(logs)["mooncake_preflight"]
    (case,) = suite
    (failure,) = case.result
    assert isinstance(failure, Failure)
    assert (failure.message, failure.type, failure.text) == (error.splitlines()[0],
                                                             "preflight", error)
    assert case.time == 1.25 and case.system_out == "protocol: tcp"
    assert {p.name: p.value for p in suite.properties()} == {
        "build": "", "protocol": "tcp", "memory": "", "route": ""}
    assert suite.failures == 1 and suite.skipped == 0


def test_a_failed_preflight_without_an_error_still_says_it_failed(tmp_path):
    logs = summary_with(tmp_path, [], preflight={"ok": False, "duration_s": 0.5})
    (case,) = suites(logs)["mooncake_preflight"]
    assert case.result[0].message == "failed" and case.result[0].text == "failed"
