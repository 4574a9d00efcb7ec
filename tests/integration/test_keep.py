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
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.integration.test_cluster_docker import cluster_env  # noqa: F401, F811 (a fixture)
from tests.integration.test_single_docker import containers_named
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
    assert "HTTP 500" in failed["reason"] and failed["outcome"] == "failed", failed
    assert failed["models"]["deepseek-ai/DeepSeek-V2-Lite"].startswith("Fail: not run"), failed
    for case in ("test_epd_sglang", "test_moe_mooncake"):
        summary = json.loads((project / f"run/logs/{case}/case_summary.json").read_text())
        reason = summary["reason"]
        assert "KEEP_ON_FAILURE" in reason and "test_1p1d_erdma's servers" in reason, reason
        assert summary["outcome"] == "not run", summary
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


def test_keep_on_failure_of_a_payload_case_says_there_is_nothing_to_keep(project, cluster):
    env = demo_env(cluster, HARNESS_SIM_FAULTS="payload:crash", KEEP_ON_FAILURE="true")
    done = harness(project, env, "harness", "group", "SGLANG")
    assert done.returncode == 1, done.stdout[-4000:]
    assert [status_of(project, c) for c in SGLANG_CASES] == ["Fail"] * 5
    later = json.loads((project / "run/logs/test_moe_mooncake/case_summary.json").read_text())
    assert "stopped at the failure of test_hicache_storage_mooncake_backend because " \
           "KEEP_ON_FAILURE=true" in later["reason"], later
    block = done.stdout[done.stdout.rindex("KEEP_ON_FAILURE: the run stopped"):]
    assert "is a pytest payload case: its servers were the payload's own" in block, block
    assert "nothing is kept (HARNESS_RUNTIME=host: no container)" in block, block
    assert not SERVER_LINE.findall(block)
    assert not left_running(project, cluster)  # its own cleanup ran, as without the setting


def test_sigterm_with_keep_on_failure_still_stops_everything(project, cluster, tmp_path):
    """The router never gets ready; SIGTERM while waiting for it is a stop, not a failure to
    keep: everything goes, the case reads interrupted, exit 130."""
    env = demo_env(cluster, HARNESS_SIM_FAULTS="router:hang", KEEP_ON_FAILURE="true")
    with killed_afterwards() as keep:
        run = keep(LoggedProcess(tmp_path / "run.log", [sys.executable, "-m", "harness",
                                                        "single", "test_1p1d_erdma"],
                                 env, project))
        run.wait_for("starting router", timeout=120)
        os.killpg(run.proc.pid, signal.SIGTERM)
        assert run.wait_exit(60) == 130, run.text()[-4000:]
    assert "KEEP_ON_FAILURE:" not in run.text()
    summary = json.loads((project / "run/logs/test_1p1d_erdma/case_summary.json").read_text())
    assert "interrupted" in summary["reason"], summary
    assert not left_running(project, cluster)


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
    # the remote host's logs join the local tree, as after a case
    assert "ready to roll" in (project / "run/logs/test_1p1d_erdma/Qwen__Qwen3-8B/"
                               "sglang_server_remote.log").read_text()


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


@pytest.mark.docker
@pytest.mark.ssh
def test_keep_on_failure_in_docker_over_ssh_then_clean_remote(project, cluster_env,  # noqa: F811
                                                              docker_client):
    """The production shape: containers on both hosts, the remote one over SSH. The printed
    shell lines work as printed (run without a terminal here), the containers stay up, and
    `invoke clean --remote` removes both."""
    local, remote = cluster_env["CONTAINER_NAME"], cluster_env["REMOTE_CONTAINER_NAME"]
    env = {**cluster_env, "HARNESS_SIM_FAULTS": "decode:http-500", "KEEP_ON_FAILURE": "true"}
    done = harness(project, env, "harness", "single", "test_1p1d_erdma", timeout=600)
    out = done.stdout
    assert done.returncode == 1, out[-5000:]
    for name in (local, remote):
        [container] = containers_named(docker_client, name)
        assert container.status == "running", name
    block = out[out.rindex("KEEP_ON_FAILURE: test_1p1d_erdma's servers are left up"):]
    shells = dict(re.findall(r"^    (local|remote)\s+(.+)$", block, re.M))
    assert shells["local"] == f"docker exec -it {local} bash", block
    assert shells["remote"].startswith(
        f"ssh -t -p {env['REMOTE_SSH_PORT']} -i {env['REMOTE_SSH_KEY']} ") and shells[
        "remote"].endswith(f"root@{env['REMOTE_IP']} docker exec -it {remote} bash"), block
    for host, line in shells.items():  # as printed, less the terminal, plus a command
        argv = shlex.split(line.replace("ssh -t ", "ssh -T -o BatchMode=yes ")
                           .replace("docker exec -it", "docker exec -i"))
        command = "ls /test_run/run/logs/test_1p1d_erdma"  # ssh hands a shell one string
        seen = subprocess.run([*argv, "-c", shlex.quote(command) if host == "remote" else command],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=60)
        assert seen.returncode == 0 and "Qwen__Qwen3-8B" in seen.stdout, (host, seen.stdout)
    servers = {name: url for name, url, _, _ in SERVER_LINE.findall(block)}
    assert requests.get(f"{servers['decode']}/health", timeout=5).status_code == 200
    assert requests.post(f"{servers['router']}/generate", json=STORY, timeout=30
                         ).status_code == 500
    assert "invoke clean --remote" in block

    cleaned = harness(project, cluster_env, "invoke", "clean", "--remote", timeout=300)
    assert cleaned.returncode == 0, cleaned.stdout
    assert not containers_named(docker_client, local)
    assert not containers_named(docker_client, remote)
    for url in servers.values():
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/health", timeout=5)


@pytest.mark.docker
@pytest.mark.ssh
def test_invoke_serve_in_docker_over_ssh(project, cluster_env, docker_client,  # noqa: F811
                                         tmp_path):
    with killed_afterwards() as keep:
        serve = keep(LoggedProcess(tmp_path / "serve.log",
                                   [sys.executable, "-m", "invoke", "serve", "test_epd_sglang"],
                                   cluster_env, project))
        serve.wait_for("Ctrl-C or SIGTERM stops everything", timeout=300)
        assert f"docker exec -it {cluster_env['REMOTE_CONTAINER_NAME']} bash" in serve.text()
        answer = requests.post("http://127.0.0.1:8000/v1/chat/completions", timeout=60, json={
            "model": "default", "messages": [{"role": "user", "content": "Hello"}]})
        assert answer.status_code == 200, answer.text
        os.killpg(serve.proc.pid, signal.SIGINT)
        assert serve.wait_exit(120) == 0, serve.text()[-4000:]
    for name in (cluster_env["CONTAINER_NAME"], cluster_env["REMOTE_CONTAINER_NAME"]):
        [container] = containers_named(docker_client, name)
        assert container.status == "exited", name  # stopped as after a run, nothing running
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:8000/health", timeout=5)
