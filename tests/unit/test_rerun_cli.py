"""`python -m harness rerun` where it has nothing to run or cannot start (the real CLI in a project
copy; tests/integration/test_rerun_merge.py reruns a real failed run)."""
import json
import subprocess
import sys
from pathlib import Path

SUMMARY = {"group": "SGLANG", "pr_id": "", "finished": "2026-01-01T00:00:00Z", "cases": [
    {"case": "test_moe_mooncake", "status": "Pass", "reason": "", "group": "SGLANG"},
    {"case": "test_1p1d_erdma", "status": "Fail", "reason": "boom", "group": "SGLANG"}]}


def rerun(project: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "rerun"], cwd=project,
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          timeout=60)


def write_summary(project: Path, summary: dict) -> Path:
    path = project / "run/logs/run_summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return path


def test_no_summary_is_one_line_and_exit_2(project):
    done = rerun(project)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: nothing to rerun: no run summary at {project}/run/logs/run_summary.json"]


def test_nothing_failed_is_one_line_and_exit_0(project):
    passed = {**SUMMARY, "cases": SUMMARY["cases"][:1]}
    write_summary(project, passed)
    done = rerun(project)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert "nothing to rerun: every case" in done.stdout


def test_bad_settings_fail_only_the_cases_to_rerun_and_keep_the_rest(project):
    path = write_summary(project, SUMMARY)
    done = rerun(project, TIMEOUT_STOP_S="-1", LOCAL_IP="127.0.0.1", REMOTE_IP="127.0.0.2")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "TIMEOUT_STOP_S" in done.stderr
    summary = json.loads(path.read_text())
    assert summary["group"] == "SGLANG"
    assert [(c["case"], c["status"]) for c in summary["cases"]] == [
        ("test_moe_mooncake", "Pass"), ("test_1p1d_erdma", "Fail")]
    assert "TIMEOUT_STOP_S" in summary["cases"][1]["reason"]
