"""How a run ends, through the real CLI on the demo cluster (issue 7).

- SIGKILL of the whole process group in a reused checkout whose last run passed: every case the
  killed run did not finish reads `Fail` ("run did not finish"), never the older `Pass`.
- SIGTERM at each point of a run (prep, each single-host payload, PD start, router wait, the
  request, the reset between cases): every case has a well-formed result of this run, the case
  that was running says "interrupted", nothing of the run is left, and the exit takes <= 15 s.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from junitparser import JUnitXml

from harness.hosts.local import LocalHost
from harness.hosts.nodes import HostNode
from tests.simproc import demo_env, run_processes

pytestmark = pytest.mark.integration
SGLANG_CASES = ["test_hicache_storage_mooncake_backend", "test_disaggregation_different_tp",
                "test_1p1d_erdma", "test_epd_sglang", "test_moe_mooncake"]
OLD_STAMP = "2020-01-01T00:00:00Z"
RESULT_LINE = re.compile(r'^\{"test_case": "(\w+)", "status": "(Pass|Fail)", '
                         r'"timestamp": "(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"\}\n$')
EXIT_BOUND_S = 15.0


def plant_old_passes(project: Path) -> None:
    """What a reused checkout holds after a run that passed."""
    for case in SGLANG_CASES:
        path = project / "run/logs" / case / "test_results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"test_case": case, "status": "Pass",
                                    "timestamp": OLD_STAMP}) + "\n")


def results(project: Path) -> dict[str, tuple[str, str]]:
    """case -> (status, timestamp), each file checked against the exact one-line format."""
    out = {}
    for case in SGLANG_CASES:
        text = (project / "run/logs" / case / "test_results.json").read_text()
        match = RESULT_LINE.match(text)
        assert match and match.group(1) == case, f"{case}: malformed {text!r}"
        out[case] = (match.group(2), match.group(3))
    return out


def reason(project: Path, case: str) -> str:
    return json.loads((project / "run/logs" / case / "case_summary.json").read_text())["reason"]


class Demo:
    """The demo's run (`group SGLANG` with the demo's settings) in a project copy, in its own
    process group, its console in a file."""

    def __init__(self, project: Path, tmp_path: Path, *, via_nox: bool = False, **extra: str):
        self.project = project
        self.remote = tmp_path / "remote-host" / "project"
        env = demo_env(self.remote, relocated=True, HARNESS_SIM_STARTUP_S="2", **extra)
        if via_nox:  # what tone-cli signals: nox, which must pass it on and wait
            argv = [sys.executable, "-m", "nox", "--no-venv", "-s", "sglang"]
        else:
            argv = [sys.executable, "-m", "harness", "group", "SGLANG"]
        self.console = tmp_path / "console.txt"
        self.proc = subprocess.Popen(argv, cwd=project, env=env, stdout=open(self.console, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.console.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.text()):
            assert self.proc.poll() is None, f"run ended before /{pattern}/:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no /{pattern}/ in:\n{self.text()[-3000:]}"
            time.sleep(0.05)

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.stop_everything()
            raise

    def stop_everything(self) -> None:
        """Test cleanup: the run's group, then whatever its PID files still name."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        for root in (self.project, self.remote):
            HostNode(LocalHost("local"), root).stop_all(None, 5)


def test_sigkill_leaves_fail_for_every_unfinished_case_never_an_older_pass(project, tmp_path):
    plant_old_passes(project)
    demo = Demo(project, tmp_path)
    try:
        demo.wait_for(r"=== test_disaggregation_different_tp \(")
        time.sleep(0.5)
        os.killpg(demo.proc.pid, signal.SIGKILL)
        demo.proc.wait(30)
    finally:
        demo.stop_everything()
    seen = results(project)
    assert all(stamp != OLD_STAMP for _, stamp in seen.values()), seen
    assert seen["test_hicache_storage_mooncake_backend"][0] == "Pass"  # it ended before
    for case in SGLANG_CASES[1:]:
        assert seen[case][0] == "Fail", seen
        assert reason(project, case) == "run did not finish"
    # The run summary and junit.xml say the same: written at the start and after every case.
    summary = json.loads((project / "run/logs/run_summary.json").read_text())
    assert summary["finished"] is None
    assert [(c["case"], c["status"]) for c in summary["cases"]] == [
        (case, status) for case, (status, _) in seen.items()]
    assert [c["outcome"] for c in summary["cases"]] == ["passed"] + ["unfinished"] * 4
    suites = {suite.name: suite for suite in JUnitXml.fromfile(str(project / "run/logs/junit.xml"))}
    suite = suites["SGLANG"]
    assert (suite.name, suite.tests, suite.failures) == ("SGLANG", 5, 4)
    unfinished = {case.name: case.result[0].message for case in suite if not case.is_passed}
    assert unfinished == {case: "run did not finish" for case in SGLANG_CASES[1:]}


# (name, console line that marks the point, seconds after it, signal nox instead of the harness)
POINTS = [
    ("prep", r"prep local: run-dir", 0.0, False),
    ("hicache payload", r"=== test_hicache_storage_mooncake_backend \(", 1.5, True),
    ("different_tp payload", r"=== test_disaggregation_different_tp \(", 1.0, False),
    ("PD start", r"remote: starting decode", 0.3, False),
    ("router wait", r"local: starting router", 0.1, False),
    ("request", r"test_1p1d_erdma: Qwen/Qwen3-8B: request", 0.0, False),
    ("reset", r"=== test_1p1d_erdma: Pass", 0.0, False),
    ("moe payload", r"=== test_moe_mooncake \(", 1.0, False),
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("point, line, delay, via_nox", POINTS, ids=[p[0] for p in POINTS])
def test_sigterm_at_each_point_of_a_run(project, tmp_path, point, line, delay, via_nox):
    plant_old_passes(project)
    demo = Demo(project, tmp_path, via_nox=via_nox)
    try:
        demo.wait_for(line)
        time.sleep(delay)
        signalled = time.monotonic()
        os.killpg(demo.proc.pid, signal.SIGTERM) if not via_nox else \
            demo.proc.send_signal(signal.SIGTERM)
        code = demo.wait_exit(60)
        took = time.monotonic() - signalled
    finally:
        leftovers = [f"{pid}: {cmd}" for pid, cmd in run_processes(project, demo.remote).items()]
        demo.stop_everything()
    console = demo.text()
    print(f"SIGTERM at {point}: exit {code} after {took:.2f}s")  # the figure, with pytest -s
    assert code != 0, console[-3000:]
    assert took <= EXIT_BOUND_S, f"{point}: exit took {took:.1f}s"
    assert leftovers == [], f"{point}: left running:\n" + "\n".join(leftovers)
    seen = results(project)
    assert all(stamp != OLD_STAMP for _, stamp in seen.values()), seen
    failed = [case for case, (status, _) in seen.items() if status == "Fail"]
    assert failed, f"{point}: every case passed although the run was stopped"
    assert any("interrupted" in reason(project, case) for case in failed), [
        reason(project, case) for case in failed]
    outcomes = {c["case"]: c["outcome"] for c in json.loads(
        (project / "run/logs/run_summary.json").read_text())["cases"]}
    assert "interrupted" in outcomes.values(), outcomes
    assert all(outcomes[case] in ("interrupted", "failed") for case in failed), outcomes
    for case in failed:
        assert f"{case}: Fail" in console  # the console line the old scripts printed
