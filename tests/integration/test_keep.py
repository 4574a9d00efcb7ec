"""KEEP_ON_FAILURE and `invoke serve`, through the real CLI on the demo cluster (issue 9, item 5).

- A double case that fails at its answer check (the decode answers HTTP 500) with
  KEEP_ON_FAILURE=true: the run stops there, the later cases are Fail with the keep reason, the
  URLs it prints answer HTTP (the servers are really up), and `invoke clean` leaves nothing.
- `invoke serve test_1p1d_erdma`: the router answers a POST /generate; SIGINT or SIGTERM stops
  everything, exit 0. Bad input is one line.
"""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.simproc import LoggedProcess, demo_env, killed_afterwards, run_processes, wait_for

pytestmark = pytest.mark.integration
SGLANG_CASES = ["test_hicache_storage_mooncake_backend", "test_disaggregation_different_tp",
                "test_1p1d_erdma", "test_epd_sglang", "test_moe_mooncake"]
SERVER_LINE = re.compile(r"^\s+(prefill|decode|encoder|router|proxy)\s+(http://\S+)\s+(up|EXITED)"
                         r"\s+log (?:remote:)?(\S+)$", re.M)
STORY = {"text": "Let me tell you a short story ", "sampling_params": {"temperature": 0}}


def harness(project, env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def status_of(project, case):
    return json.loads((project / f"run/logs/{case}/test_results.json").read_text())["status"]


def left_running(*roots) -> dict:
    """What is still running of these trees after a bounded wait (empty: nothing)."""
    wait_for(lambda: not run_processes(*roots), timeout_s=10)
    return run_processes(*roots)


@pytest.fixture
def cluster(project, tmp_path):
    """The demo cluster's settings for `project`; whatever a test leaves is stopped after it."""
    remote = tmp_path / "remote-host" / "project"
    yield remote
    leftovers = run_processes(project, remote)
    if leftovers:  # a failed test: stop its servers (they hold the shared ports)
        harness(project, demo_env(remote), "invoke", "clean", timeout=120)
        for pid in run_processes(project, remote):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_keep_on_failure_stops_the_run_and_leaves_the_servers_up(project, cluster):
    env = demo_env(cluster, HARNESS_SIM_FAULTS="decode:http-500", KEEP_ON_FAILURE="true")
    done = harness(project, env, "harness", "group", "SGLANG")
    out = done.stdout
    assert done.returncode == 1, out[-4000:]
    # every result is written: the failing case with its own reason, the later ones not run
    assert [status_of(project, c) for c in SGLANG_CASES] == ["Pass", "Pass", "Fail", "Fail",
                                                             "Fail"]
    failed = json.loads((project / "run/logs/test_1p1d_erdma/case_summary.json").read_text())
    assert "HTTP 500" in failed["reason"], failed
    for case in ("test_epd_sglang", "test_moe_mooncake"):
        reason = json.loads((project / f"run/logs/{case}/case_summary.json").read_text())[
            "reason"]
        assert "KEEP_ON_FAILURE" in reason and "test_1p1d_erdma's servers" in reason, reason
    assert "=== test_epd_sglang" not in out  # really not run

    # the block at the end says how to reach and stop them, and what it says is true
    block = out[out.rindex("KEEP_ON_FAILURE: test_1p1d_erdma's servers are left up"):]
    servers = {name: (url, state, Path(log)) for name, url, state, log in
               SERVER_LINE.findall(block)}
    assert set(servers) == {"prefill", "decode", "router"}, block
    assert all(state == "up" for _, state, _ in servers.values()), block
    assert f"cd {project}" in block and f"cd {cluster}" in block  # host runtime: the dirs
    assert "invoke clean" in block
    for name, (url, _, log) in servers.items():
        assert log.is_file(), f"{name}: {log}"
        answer = requests.get(f"{url}/health", timeout=5)  # raises if nothing listens
        assert answer.status_code == 200 or name == "router", (name, answer.status_code)
    router = servers["router"][0]
    answer = requests.post(f"{router}/generate", json=STORY, timeout=30)
    assert answer.status_code == 500 and "http-500" in answer.text  # the kept fault, live
    assert run_processes(project, cluster)

    cleaned = harness(project, demo_env(cluster), "invoke", "clean", timeout=120)
    assert cleaned.returncode == 0, cleaned.stdout
    assert not left_running(project, cluster)
    for url, _, _ in servers.values():
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/health", timeout=5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_invoke_serve_holds_the_servers_until_a_signal(project, cluster, tmp_path, sig):
    with killed_afterwards() as keep:
        serve = keep(LoggedProcess(tmp_path / "serve.log",
                                   [sys.executable, "-m", "invoke", "serve", "test_1p1d_erdma"],
                                   demo_env(cluster), project))
        serve.wait_for("Ctrl-C or SIGTERM stops everything", timeout=120)
        text = serve.text()
        assert "router   http://127.0.0.1:8000" in text, text
        answer = requests.post("http://127.0.0.1:8000/generate", json=STORY, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"].strip(), answer.text
        os.killpg(serve.proc.pid, sig)  # a terminal's Ctrl-C goes to the foreground group
        assert serve.wait_exit(60) == 0, serve.text()[-4000:]
    assert "every server stopped" in serve.text()
    assert not left_running(project, cluster)


def test_invoke_serve_a_vllm_case_with_its_second_model(project, cluster, tmp_path):
    model = "deepseek-ai/DeepSeek-V2-Lite"
    with killed_afterwards() as keep:
        serve = keep(LoggedProcess(tmp_path / "serve.log",
                                   [sys.executable, "-m", "invoke", "serve",
                                    "test_vllm_1p1d_erdma", "--model", model],
                                   demo_env(cluster), project))
        serve.wait_for("Ctrl-C or SIGTERM stops everything", timeout=120)
        assert f"test_vllm_1p1d_erdma ({model}) is up" in serve.text()
        answer = requests.post("http://127.0.0.1:8000/v1/chat/completions", timeout=60, json={
            "model": model, "messages": [{"role": "user",
                                          "content": "Where is the capital of France?"}]})
        assert answer.status_code == 200 and "Paris" in answer.text, answer.text
        os.killpg(serve.proc.pid, signal.SIGINT)
        assert serve.wait_exit(60) == 0, serve.text()[-4000:]
    assert (project / "run/logs/test_vllm_1p1d_erdma/deepseek-ai__DeepSeek-V2-Lite/"
            "proxy.log").is_file()
    assert not left_running(project, cluster)


@pytest.mark.parametrize("args, says", [
    (["test_moe_mooncake"], "test_moe_mooncake is a single-host case"),
    (["test_1p1d_erdma", "--model", "nope/Nope"], "unknown model 'nope/Nope'"),
    (["test_nope"], "unknown case 'test_nope'"),
])
def test_invoke_serve_bad_input_is_one_line(project, cluster, args, says):
    done = harness(project, demo_env(cluster), "invoke", "serve", *args, timeout=120)
    assert done.returncode == 1, done.stdout
    assert says in done.stdout and "Traceback" not in done.stdout, done.stdout
    assert len(done.stdout.strip().splitlines()) == 1, done.stdout
