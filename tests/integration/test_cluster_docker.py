"""Run-all on the simulated two-host cluster: real Docker engine on both "hosts", the remote one
reached over a real sshd on 127.0.0.2 (this machine), the real sglang-router. What CI proves.
"""
import json
import subprocess
import sys
import uuid

import pytest

from tests.integration.test_single_docker import (assert_stopped_not_removed, containers_named,
                                                  harness_env)

pytestmark = [pytest.mark.docker, pytest.mark.ssh]


@pytest.fixture
def cluster_env(sshd, tmp_path, test_image, docker_client):
    tag = uuid.uuid4().hex[:8]
    local, remote = f"mh-test-local-{tag}", f"mh-test-remote-{tag}"
    env = harness_env(local, test_image, **{
        "REGISTRY_ADDR_VLLM": test_image, "HARNESS_REMOTE": "ssh",
        "LOCAL_IP": "127.0.0.1", "REMOTE_IP": sshd.host, "REMOTE_USER": sshd.user,
        "REMOTE_SSH_PORT": str(sshd.port), "REMOTE_SSH_KEY": str(sshd.client_key),
        "SSH_HOST_KEY_POLICY": "accept-new", "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "REMOTE_TEST_DIR": str(tmp_path / "remote-host" / "project"),
        "REMOTE_CONTAINER_NAME": remote})
    yield env
    for name in (local, remote):
        for container in containers_named(docker_client, name):
            container.remove(force=True)


def run_group(project, env, group):
    return subprocess.run([sys.executable, "-m", "harness", "group", group], cwd=project,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)


def statuses(project):
    out = {}
    for path in sorted((project / "run/logs").glob("*/test_results.json")):
        out[path.parent.name] = json.loads(path.read_text())["status"]
    return out


def test_sglang_group_on_docker_over_ssh(project, cluster_env, docker_client, tmp_path):
    done = run_group(project, cluster_env, "SGLANG")
    assert done.returncode == 0, done.stdout[-5000:]
    assert statuses(project) == dict.fromkeys(
        ["test_1p1d_erdma", "test_disaggregation_different_tp", "test_epd_sglang",
         "test_hicache_storage_mooncake_backend", "test_moe_mooncake"], "Pass")
    remote_log = project / "run/logs/test_1p1d_erdma/Qwen__Qwen3-8B/sglang_server_remote.log"
    assert "ready to roll" in remote_log.read_text()
    # The KV crossed between the two containers through the image's Mooncake (CPU build),
    # checked by the decode: local prefill 127.0.0.1 -> remote decode 127.0.0.2.
    pd = json.loads((project / "run/logs/test_1p1d_erdma/case_summary.json").read_text())
    assert pd["mooncake"]["transfers"] >= 1 and pd["mooncake"]["failures"] == 0, pd["mooncake"]
    assert "from=127.0.0.1:" in remote_log.read_text() and "to=127.0.0.2:" in remote_log.read_text()
    # the remote copy got a .shrc whose paths point at the remote dir, and no token
    shrc = (tmp_path / "remote-host/project/run/.shrc").read_text()
    assert f"BASE_DIR={tmp_path / 'remote-host/project'}" in shrc
    summary = json.loads((project / "run/logs/run_summary.json").read_text())
    assert summary["prep_s"]["remote:sync-project"] > 0
    assert summary["prep_s"]["remote:start-container"] > 0
    for name in (cluster_env["CONTAINER_NAME"], cluster_env["REMOTE_CONTAINER_NAME"]):
        assert_stopped_not_removed(docker_client, name)


def test_gpu_leak_stops_the_run_as_unhealthy(project, cluster_env, docker_client):
    """The decode of test_1p1d_erdma leaks GPU memory: the case fails at the drain before its
    second model, the reset after it fails, and the cases after it are not run but failed,
    saying the environment was unhealthy."""
    env = {**cluster_env, "HARNESS_SIM_FAULTS": "decode:gpu-leak", "TIMEOUT_GPU_DRAIN_S": "2",
           "TIMEOUT_GPU_DRAIN_AFTER_KILL_S": "2"}
    done = run_group(project, env, "SGLANG")
    assert done.returncode == 1, done.stdout[-5000:]
    assert statuses(project) == {
        "test_hicache_storage_mooncake_backend": "Pass", "test_disaggregation_different_tp": "Pass",
        "test_1p1d_erdma": "Fail", "test_epd_sglang": "Fail", "test_moe_mooncake": "Fail"}
    pd = json.loads((project / "run/logs/test_1p1d_erdma/case_summary.json").read_text())
    assert pd["step"] == "Qwen/Qwen3-8B: gpu drain" and pd["host"] == "remote", pd
    assert "GPU memory still used" in pd["reason"]  # seen before the second model, too
    for case in ("test_epd_sglang", "test_moe_mooncake"):
        summary = json.loads((project / f"run/logs/{case}/case_summary.json").read_text())
        assert summary["reason"].startswith("environment unhealthy"), summary["reason"]
        assert summary["outcome"] == "environment unhealthy", summary
        assert summary["step"] == "reset" and summary["host"] == "remote"
        assert "GPU memory still used" in summary["reason"]
    assert not (project / "run/logs/test_epd_sglang/Qwen__Qwen2.5-VL-7B-Instruct").exists()
    for name in (cluster_env["CONTAINER_NAME"], cluster_env["REMOTE_CONTAINER_NAME"]):
        assert_stopped_not_removed(docker_client, name)


@pytest.mark.parametrize("version,proxy_line", [
    ("0.17.0", "All prefiller instances are ready."),   # the image's Mooncake connector proxy
    ("0.15.1", "disagg_proxy"),                         # the project's own proxy
])
def test_vllm_group_on_docker_over_ssh(project, cluster_env, version, proxy_line):
    done = run_group(project, {**cluster_env, "HARNESS_SIM_VLLM_VERSION": version}, "VLLM")
    assert done.returncode == 0, done.stdout[-5000:]
    assert statuses(project) == {"test_vllm_1p1d_erdma": "Pass"}
    model_dir = project / "run/logs/test_vllm_1p1d_erdma/deepseek-ai__DeepSeek-V2-Lite"
    assert proxy_line in (model_dir / "proxy.log").read_text()
    assert "Application startup complete." in (model_dir / "vllm_server_remote.log").read_text()
    answer = json.loads((model_dir / "curl_response.log").read_text())
    assert "paris" in answer["choices"][0]["message"]["content"].lower()
