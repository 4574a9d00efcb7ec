"""The demo: the whole SGLANG group on two local nodes, simulated engines, the real router."""
import json
import re
import subprocess
import sys

import pytest

from tests.simproc import demo_env, run_processes

pytestmark = pytest.mark.integration
SGLANG_CASES = ["test_hicache_storage_mooncake_backend", "test_disaggregation_different_tp",
                "test_1p1d_erdma", "test_epd_sglang", "test_moe_mooncake"]


def run_group(project, tmp_path, group="SGLANG", **extra):
    env = demo_env(tmp_path / "remote-host" / "project", relocated=True, **extra)
    return subprocess.run([sys.executable, "-m", "harness", "group", group], cwd=project,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)


def statuses(project):
    out = {}
    for case in SGLANG_CASES:
        data = json.loads((project / f"run/logs/{case}/test_results.json").read_text())
        out[case] = data["status"]
    return out


def test_demo_group_passes_with_remote_logs_collected(project, tmp_path):
    done = run_group(project, tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]
    assert set(statuses(project).values()) == {"Pass"}
    model_dir = project / "run/logs/test_1p1d_erdma/Qwen__Qwen3-8B"
    for name in ("sglang_server_local.log", "sglang_server_remote.log", "load_balancer.log",
                 "curl_response.log"):
        assert (model_dir / name).stat().st_size > 0, name
    assert "ready to roll" in (model_dir / "sglang_server_remote.log").read_text()
    epd = project / "run/logs/test_epd_sglang/Qwen__Qwen2.5-VL-7B-Instruct"
    assert "cat" in json.loads((epd / "curl_response.log").read_text())[
        "choices"][0]["message"]["content"].lower()
    assert "skipped" in done.stdout  # prep steps that cannot apply are shown, not dropped
    # a payload's output reaches the console too (the old scripts' tee; T-One keeps the console)
    assert "test_moe_mooncake.py::TestMooncakeElasticEP::test_mmlu" in done.stdout
    for case in SGLANG_CASES:  # the old scripts' result lines
        assert f"{case}: Pass" in done.stdout.splitlines()
    # This machine has the RDMA libraries: the hicache case ran the REAL Mooncake master, not
    # the simulator's stand-in (which says SIMULATED; see the test without the libraries).
    masters = sorted((project / "run/logs/test_hicache_storage_mooncake_backend").rglob(
        "*master*.log"))
    assert masters
    for log in masters:
        text = log.read_text(errors="replace")
        assert "SIMULATED mooncake_master" not in text, f"{log}: the stand-in ran"
        assert re.search(r"master\.cpp:\d+\] Master service started on port", text), log
    assert "test_moe_mooncake" in done.stdout.split("case ")[-1]  # the summary table


def test_decode_crash_fails_only_the_double_cases(project, tmp_path, junit_schema):
    done = run_group(project, tmp_path, HARNESS_SIM_FAULTS="decode:crash")
    assert done.returncode == 1, done.stdout[-4000:]
    assert statuses(project) == {
        "test_hicache_storage_mooncake_backend": "Pass", "test_disaggregation_different_tp": "Pass",
        "test_1p1d_erdma": "Fail", "test_epd_sglang": "Fail", "test_moe_mooncake": "Pass"}
    for case in ("test_1p1d_erdma", "test_epd_sglang"):
        summary = json.loads((project / f"run/logs/{case}/case_summary.json").read_text())
        assert summary["host"] == "remote" and summary["server"] == "decode"
        assert "decode exited with status 1" in summary["reason"]
    assert not run_processes(project, tmp_path / "remote-host")
    # what a strict consumer (Jenkins' xUnit plugin) would say of its junit.xml
    errors = [f"{e.path}: {e.reason}"
              for e in junit_schema.iter_errors(str(project / "run/logs/junit.xml"))]
    assert errors == [], errors


@pytest.mark.docker
def test_demo_on_a_machine_without_the_rdma_libraries(project, test_image, docker_client):
    """A fresh Linux box has no libibverbs, so the real mooncake_master cannot start there:
    the demo still passes, the simulator's stand-in taking the master's place (and saying so).
    Run in a container of the test image with the RDMA libraries deleted."""
    script = ("rm -f /usr/lib/x86_64-linux-gnu/libibverbs.so.1* "
              "/usr/lib/x86_64-linux-gnu/libnl-route-3.so.200* && "
              "mooncake_master --version > /dev/null 2>&1; echo real-master-exit=$? && "
              "cd /project && python3 -m harness demo")
    output = docker_client.containers.run(
        test_image, ["bash", "-c", script], remove=True, network_mode="host",
        volumes={str(project): {"bind": "/project", "mode": "rw"}},
        environment={"HARNESS_SIM_FAULTS": ""}, stdout=True, stderr=True)
    text = output.decode(errors="replace")
    assert "real-master-exit=127" in text
    assert "5 of 5 cases passed" in text, text[-4000:]
    hicache_log = (project / "run/logs/test_hicache_storage_mooncake_backend/"
                   "test_hicache_storage_mooncake_backend.log").read_text()
    assert "SIMULATED mooncake_master: the real one cannot run here" in (
        hicache_log + "".join(p.read_text() for p in
                             (project / "run/logs/test_hicache_storage_mooncake_backend")
                             .glob("*master*.log")))


def test_all_runs_sglang_then_vllm_with_resets_between(project, tmp_path):
    done = run_group(project, tmp_path, "ALL")
    assert done.returncode == 0, done.stdout[-4000:]
    summary = json.loads((project / "run/logs/run_summary.json").read_text())
    assert [c["case"] for c in summary["cases"]] == SGLANG_CASES + ["test_vllm_1p1d_erdma"]
    assert all(c["status"] == "Pass" for c in summary["cases"])
    resets = [k for k in summary["prep_s"] if ":reset before " in k]
    assert len(resets) == 2 * 5  # both nodes, before each case but the first
    assert "local:reset before test_vllm_1p1d_erdma" in resets
