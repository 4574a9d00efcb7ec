"""`python -m harness merge DIR... [--out OUT]` through the real CLI, on run trees written by the
harness's own result writers (tests/integration/test_rerun_merge.py merges trees of real runs)."""
import html
import json
import re
import subprocess
import sys
from pathlib import Path

from junitparser import JUnitXml

from harness.layout import Layout
from harness.results.outcome import CaseResult, write_case_result, write_run_summary
from harness.results.status import Outcome, Status

ROOT = Path(__file__).resolve().parent.parent.parent


def host_pair_tree(root: Path, cases: dict[str, Status], *, timeline: str | None = None) -> Path:
    """What one host pair's job leaves: run/logs with its cases, harness.log and summary."""
    layout = Layout.at(root)
    results = [CaseResult(name, status, group="SGLANG", duration_s=2.0,
                          reason="" if status is Outcome.PASSED else "decode exited")
               for name, status in cases.items()]
    for result in results:
        write_case_result(layout, result)
        (root / "run/logs" / result.case / f"{result.case}.log").write_text(f"{result.case}\n")
    write_run_summary(layout, results, group=" ".join(cases), pr_id="42", prep_s={"wheel": 1.0},
                      duration_s=10.0)
    (root / "run/logs/harness.log").write_text(f"log of {root.name}\n")
    if timeline is not None:
        (root / "run/logs/timeline.jsonl").write_text(timeline)
    return root / "run/logs"


def merge(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "merge", *map(str, args)], cwd=cwd,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)


def test_two_host_pairs_become_one_tree(tmp_path):
    first = host_pair_tree(tmp_path / "pair1", {"test_moe_mooncake": Outcome.PASSED,
                                                "test_1p1d_erdma": Outcome.FAILED},
                           timeline='{"a": 1}\n')
    second = host_pair_tree(tmp_path / "pair2", {"test_hicache_storage_mooncake_backend":
                                                 Outcome.PASSED}, timeline='{"b": 2}')
    out = tmp_path / "merged"
    done = merge(first, tmp_path / "pair2", "--out", out, cwd=tmp_path)  # a dir holding run/logs
    assert done.returncode == 1, done.stderr  # merged, and one case failed
    assert "merged 2 run trees" in done.stdout and "2 of 3 cases passed" in done.stdout
    summary = json.loads((out / "run_summary.json").read_text())
    assert [c["case"] for c in summary["cases"]] == [  # group order, whichever tree ran it
        "test_hicache_storage_mooncake_backend", "test_1p1d_erdma", "test_moe_mooncake"]
    assert summary["cases"][0]["tree"] == str(second.resolve())
    assert summary["passed"] is False and summary["pr_id"] == "42"
    for case in ("test_hicache_storage_mooncake_backend", "test_1p1d_erdma", "test_moe_mooncake"):
        assert json.loads((out / case / "test_results.json").read_text())["test_case"] == case
        assert (out / case / f"{case}.log").read_text() == f"{case}\n"
    assert (out / "harness-1.log").read_text() == "log of pair1\n"
    assert (out / "harness-2.log").read_text() == "log of pair2\n"
    assert (out / "timeline.jsonl").read_text().splitlines() == ['{"a": 1}', '{"b": 2}']
    (suite,) = JUnitXml.fromfile(str(out / "junit.xml"))
    assert (suite.name, suite.tests, suite.failures) == ("SGLANG", 3, 1)
    page = (out / "report.html").read_text()  # one report of the three cases, links in the tree
    for case in ("test_hicache_storage_mooncake_backend", "test_1p1d_erdma", "test_moe_mooncake"):
        assert f'href="{case}/{case}.log"' in page
    links = [html.unescape(h) for h in re.findall(r'href="([^"#]+)"', page)]
    assert links and all((out / link).is_file() for link in links), links


def test_a_case_in_two_trees_is_refused_naming_both(tmp_path):
    first = host_pair_tree(tmp_path / "pair1", {"test_moe_mooncake": Outcome.PASSED})
    second = host_pair_tree(tmp_path / "pair2", {"test_moe_mooncake": Outcome.FAILED})
    done = merge(first, second, "--out", tmp_path / "merged", cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "test_moe_mooncake" in line and str(first) in line and str(second) in line
    assert not (tmp_path / "merged").exists()  # nothing written, nothing chosen


def test_bad_dirs_get_one_line_and_exit_2(tmp_path):
    tree = host_pair_tree(tmp_path / "pair1", {"test_moe_mooncake": Outcome.PASSED})
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken/run/logs").mkdir(parents=True)
    (tmp_path / "broken/run/logs/run_summary.json").write_text("{not json")
    (tmp_path / "used").mkdir()
    (tmp_path / "used/x").write_text("")
    for args, says in [((tmp_path / "nowhere",), "is not a directory"),
                       ((tmp_path / "empty",), "is not a run tree"),
                       ((tmp_path / "broken",), "is not a readable run summary"),
                       ((tree, "--out", tmp_path / "used"), "is not an empty directory"),
                       ((tree, "--out", tree / "merged"), "lies in the tree")]:
        done = merge(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and says in done.stderr, done.stderr


def test_the_default_output_is_run_logs_of_this_checkout(project, tmp_path):
    """Merged where tone-cli and people look: run/logs of the project the harness runs from."""
    tree = host_pair_tree(tmp_path / "pair1", {"test_moe_mooncake": Outcome.PASSED})
    done = subprocess.run([sys.executable, "-m", "harness", "merge", str(tree)], cwd=project,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (project / "run/logs/test_moe_mooncake/test_results.json").is_file()
