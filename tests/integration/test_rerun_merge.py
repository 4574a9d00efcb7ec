"""JUnit, rerun, subsets and merge through the real CLI on the demo cluster (issue 9: 3, 6, 7).

- A run with `decode:crash`: junit.xml (read by junitparser) has the SGLANG suite with the two
  double cases failed, the crash in their failure and system-out, the times of the summary.
- `nox -s rerun` without the fault runs exactly those two, in group order; afterwards the whole
  tree passes and the earlier passes' files are untouched; another rerun has nothing to do.
- `single a b` runs a subset in group order with one prep; two such host pairs merge into one tree.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from junitparser import JUnitXml

from tests.conftest import copy_project
from tests.simproc import demo_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
SGLANG_CASES = ["test_hicache_storage_mooncake_backend", "test_disaggregation_different_tp",
                "test_1p1d_erdma", "test_epd_sglang", "test_moe_mooncake"]
DOUBLES = ["test_1p1d_erdma", "test_epd_sglang"]
CASE_START = re.compile(r"=== (\w+) \(", re.M)


def harness(project: Path, tmp_path: Path, *args: str, nox: bool = False,
            **extra: str) -> subprocess.CompletedProcess:
    env = demo_env(tmp_path / f"remote-of-{project.name}", relocated=True, **extra)
    argv = ([sys.executable, "-m", "nox", "--no-venv", "-s", *args] if nox
            else [sys.executable, "-m", "harness", *args])
    return subprocess.run(argv, cwd=project, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def junit_cases(logs: Path) -> dict:
    suites = {suite.name: suite for suite in JUnitXml.fromfile(str(logs / "junit.xml"))}
    assert set(suites) <= {"SGLANG", "mooncake_preflight"}  # the pre-flight: its own suite
    return {case.name: case for case in suites["SGLANG"]}


def test_junit_of_a_failing_run_then_rerun_runs_only_what_failed(project, tmp_path):
    logs = project / "run/logs"
    first = harness(project, tmp_path, "group", "SGLANG", HARNESS_SIM_FAULTS="decode:crash")
    assert first.returncode == 1, first.stdout[-3000:]
    summary = json.loads((logs / "run_summary.json").read_text())
    cases = junit_cases(logs)
    assert list(cases) == SGLANG_CASES
    for entry in summary["cases"]:
        case = cases[entry["case"]]
        assert case.time == pytest.approx(entry["duration_s"], abs=0.001) and case.time > 0
        if entry["case"] in DOUBLES:
            (failure,) = case.result
            assert "decode exited with status 1" in failure.message
            assert "host: remote" in failure.text and "server: decode" in failure.text
            assert "FAULT PLAYED decode:crash" in case.system_out  # the decode log's tail
            assert "Qwen" in case.system_out and ": Fail" in case.system_out  # per model
        else:
            assert case.is_passed, entry
    kept = {c: (logs / c / "test_results.json").read_bytes() for c in SGLANG_CASES
            if c not in DOUBLES}

    rerun = harness(project, tmp_path, "rerun", nox=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert CASE_START.findall(rerun.stdout) == DOUBLES  # exactly what failed, in group order
    log_of_rerun = (logs / "harness.log").read_text().split("rerun of the 2 case(s)")[1]
    assert CASE_START.findall(log_of_rerun) == DOUBLES
    assert "5 of 5 cases passed" in rerun.stdout
    for case, before in kept.items():
        assert (logs / case / "test_results.json").read_bytes() == before, case
    summary = json.loads((logs / "run_summary.json").read_text())
    assert [c["case"] for c in summary["cases"]] == SGLANG_CASES and summary["passed"]
    assert all(case.is_passed for case in junit_cases(logs).values())

    again = harness(project, tmp_path, "rerun")
    assert again.returncode == 0 and "nothing to rerun" in again.stdout, again.stdout


def test_two_host_pairs_run_subsets_and_merge_into_one_tree(project, tmp_path):
    second = copy_project(tmp_path / "pair2")
    one = harness(project, tmp_path, "single", "test_moe_mooncake",
                  "test_hicache_storage_mooncake_backend.sh")
    assert one.returncode == 0, one.stdout[-3000:]
    assert CASE_START.findall(one.stdout) == ["test_hicache_storage_mooncake_backend",
                                               "test_moe_mooncake"]  # group order
    prep_s = json.loads((project / "run/logs/run_summary.json").read_text())["prep_s"]
    assert "local:reset before test_moe_mooncake" in prep_s  # one prep, a reset between
    two = harness(second, tmp_path, "single", "test_disaggregation_different_tp")
    assert two.returncode == 0, two.stdout[-3000:]

    out = tmp_path / "merged"
    merged = harness(project, tmp_path, "merge", str(project / "run/logs"),
                     str(second / "run/logs"), "--out", str(out))
    assert merged.returncode == 0, merged.stdout
    assert list(junit_cases(out)) == ["test_hicache_storage_mooncake_backend",
                                      "test_disaggregation_different_tp", "test_moe_mooncake"]
    assert "test_moe_mooncake" in (out / "harness-1.log").read_text()
    assert "test_disaggregation_different_tp" in (out / "harness-2.log").read_text()
    assert (out / "test_disaggregation_different_tp/test_disaggregation_different_tp.log").is_file()

    twice = harness(project, tmp_path, "merge", str(project / "run/logs"),
                    str(project / "run/logs"), "--out", str(tmp_path / "again"))
    assert twice.returncode == 2 and "is in two trees" in twice.stdout
