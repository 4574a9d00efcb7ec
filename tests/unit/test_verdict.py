"""The verdict written before the harness is installed (harness.results.verdict)."""
import json

import pytest
from pathlib import Path

from harness.run import cases as registry
from harness.results.verdict import asked_cases, declared_cases, mark_unfinished

ROOT = Path(__file__).resolve().parent.parent.parent


def test_declared_cases_agree_with_the_registry():
    real = {(c.name, c.group, c.order) for c in registry.discover().values()}
    assert set(declared_cases(ROOT / "cases")) == real


def test_asked_cases_in_group_order():
    assert asked_cases(ROOT, "demo", []) == [c.name for c in registry.group_cases("SGLANG")]
    assert asked_cases(ROOT, "group", ["all"]) == [c.name for c in registry.group_cases("ALL")]
    assert asked_cases(ROOT, "group", ["BOGUS"]) == []
    assert asked_cases(ROOT, "single", ["test_moe_mooncake.sh", "nope"]) == [
        "test_moe_mooncake"]


def test_mark_unfinished_replaces_an_earlier_pass(tmp_path):
    (tmp_path / "cases").symlink_to(ROOT / "cases")
    result = tmp_path / "run/logs/test_vllm_1p1d_erdma/test_results.json"
    result.parent.mkdir(parents=True)
    result.write_text('{"test_case": "test_vllm_1p1d_erdma", "status": "Pass", '
                      '"timestamp": "2020-01-01T00:00:00Z"}\n')
    assert mark_unfinished(tmp_path, "group", ["VLLM"]) == ["test_vllm_1p1d_erdma"]
    data = json.loads(result.read_text())
    assert data["status"] == "Fail" and data["timestamp"] != "2020-01-01T00:00:00Z"
    summary = json.loads((result.parent / "case_summary.json").read_text())
    assert summary["reason"] == "run did not finish"
    run_summary = json.loads((tmp_path / "run/logs/run_summary.json").read_text())
    assert [(c["case"], c["reason"]) for c in run_summary["cases"]] == [
        ("test_vllm_1p1d_erdma", "run did not finish")]
    assert run_summary["finished"] is None and (tmp_path / "run/logs/junit.xml").is_file()


def test_a_rerun_marks_only_the_cases_that_failed(tmp_path):
    (tmp_path / "cases").symlink_to(ROOT / "cases")
    assert mark_unfinished(tmp_path, "rerun", []) == []  # no summary: nothing is marked
    logs = tmp_path / "run/logs"
    passed = logs / "test_moe_mooncake/test_results.json"
    passed.parent.mkdir(parents=True)
    passed.write_text('{"test_case": "test_moe_mooncake", "status": "Pass", '
                      '"timestamp": "2020-01-01T00:00:00Z"}\n')
    (logs / "run_summary.json").write_text(json.dumps({"group": "SGLANG", "cases": [
        {"case": "test_1p1d_erdma", "status": "Fail", "reason": "boom"},
        {"case": "test_moe_mooncake", "status": "Pass", "reason": ""}]}))
    assert asked_cases(tmp_path, "rerun", []) == ["test_1p1d_erdma"]
    assert mark_unfinished(tmp_path, "rerun", []) == ["test_1p1d_erdma"]
    assert "2020-01-01T00:00:00Z" in passed.read_text()  # the earlier pass stands
    summary = json.loads((logs / "run_summary.json").read_text())
    assert summary["group"] == "SGLANG"
    assert [(c["case"], c["status"], c["reason"]) for c in summary["cases"]] == [
        ("test_1p1d_erdma", "Fail", "run did not finish"), ("test_moe_mooncake", "Pass", "")]


def test_a_case_declares_what_its_kind_needs():
    from harness.run.cases import DOUBLE, SINGLE, Case
    with pytest.raises(TypeError, match="a single case declares run"):
        Case("s", "SGLANG", SINGLE, 0, ())
    with pytest.raises(TypeError, match="a double case declares start_servers and check"):
        Case("d", "SGLANG", DOUBLE, 0, ("Org/M",), start_servers=lambda ctx, m: None)


def test_a_double_case_runs_its_before_once_then_each_model_start_then_check():
    from harness.run.cases import DOUBLE, Case
    seen = []

    class Ctx:
        prepared = None

        def each_model(self, models, body):
            for model in models:
                body(self, model)

    case = Case("d", "SGLANG", DOUBLE, 0, ("A/a", "B/b"),
                before=lambda ctx: seen.append("before") or "shared",
                start_servers=lambda ctx, m: seen.append(f"start {m} {ctx.prepared}") or m,
                check=lambda ctx, m, front: seen.append(f"check {m} via {front}"))
    case.execute(Ctx())
    assert seen == ["before", "start A/a shared", "check A/a via A/a",
                    "start B/b shared", "check B/b via B/b"]
