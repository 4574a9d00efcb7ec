"""The invoke tasks, run as a person would (`invoke ...` in the project dir), on the real engine."""
import os
import subprocess
import sys
import uuid

import pytest

from tests.integration.test_single_docker import containers_named, harness_env



def invoke(project, env, *args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


@pytest.mark.integration
def test_every_task_has_help(project):
    listing = invoke(project, dict(os.environ), "--list")
    assert listing.returncode == 0, listing.stdout
    for name in ("prepare", "prepare-remote", "get-wheel", "start-container", "stop-container",
                 "install-erdma", "reset", "clean", "serve"):
        assert name in listing.stdout
        shown = invoke(project, dict(os.environ), "--help", name)
        assert shown.returncode == 0 and "--settings" not in shown.stdout


@pytest.mark.integration
def test_get_wheel_from_a_local_path(project, mooncake_wheel):
    env = harness_env("mh-unused", "unused", MOONCAKE_WHEEL=str(mooncake_wheel))
    done = invoke(project, env, "get-wheel")
    assert done.returncode == 0, done.stdout
    assert (project / "run/whls" / mooncake_wheel.name).exists()


@pytest.mark.integration
def test_bad_input_is_one_line(project):
    done = invoke(project, harness_env("mh-unused", "unused"), "prepare", "--group", "TPU")
    assert done.returncode == 2 and "unknown group 'TPU'" in done.stdout
    assert "Traceback" not in done.stdout
    done = invoke(project, harness_env("mh-unused", "unused", IMAGE_PULL="often"),
                  "start-container")
    assert done.returncode == 1 and "bad value for IMAGE_PULL" in done.stdout
    assert "Traceback" not in done.stdout


@pytest.mark.docker
def test_prepare_leaves_a_container_that_stop_and_clean_remove(project, docker_client,
                                                               test_image):
    name = f"mh-test-{uuid.uuid4().hex[:8]}"
    env = harness_env(name, test_image)
    try:
        done = invoke(project, env, "prepare")
        assert done.returncode == 0, done.stdout
        assert "start-container" in done.stdout and "install-erdma" in done.stdout
        [container] = containers_named(docker_client, name)
        assert container.status == "running"
        assert (project / "run/.shrc").exists()
        started_at = container.attrs["State"]["StartedAt"]
        done = invoke(project, env, "reset")
        assert done.returncode == 0, done.stdout
        container.reload()
        assert container.status == "running" and container.attrs["State"]["StartedAt"] != started_at
        done = invoke(project, env, "stop-container")
        assert done.returncode == 0 and not containers_named(docker_client, name)
        done = invoke(project, env, "start-container")
        assert done.returncode == 0, done.stdout
        assert containers_named(docker_client, name)[0].status == "running"
        done = invoke(project, env, "clean", "--wheels")
        assert done.returncode == 0, done.stdout
        assert not containers_named(docker_client, name)
        assert not (project / "run/logs").exists() and not (project / "run/.shrc").exists()
    finally:
        for container in containers_named(docker_client, name):
            container.remove(force=True)


@pytest.mark.docker
@pytest.mark.ssh
def test_prepare_remote_pushes_the_tree_and_starts_the_remote_container(
        project, docker_client, test_image, sshd, tmp_path):
    remote_name = f"mh-test-remote-{uuid.uuid4().hex[:8]}"
    remote_dir = tmp_path / "remote-host" / "project"
    env = harness_env("mh-unused-local", test_image, **{
        "HARNESS_REMOTE": "ssh", "LOCAL_IP": "127.0.0.1", "REMOTE_IP": sshd.host,
        "REMOTE_USER": sshd.user, "REMOTE_SSH_PORT": str(sshd.port),
        "REMOTE_SSH_KEY": str(sshd.client_key), "SSH_KNOWN_HOSTS": str(tmp_path / "kh"),
        "REMOTE_TEST_DIR": str(remote_dir), "REMOTE_CONTAINER_NAME": remote_name})
    try:
        done = invoke(project, env, "prepare-remote")
        assert done.returncode == 0, done.stdout
        assert (remote_dir / "harness" / "run" / "runner.py").exists()
        assert not (remote_dir / ".git").exists() and not (remote_dir / "run" / "logs").exists()
        shrc = (remote_dir / "run" / ".shrc").read_text()
        assert f"export TEST_RESULT_DIR={remote_dir}/run/logs" in shrc
        [container] = containers_named(docker_client, remote_name)
        assert container.status == "running"
        mounts = {m["Destination"]: m["Source"] for m in container.attrs["Mounts"]}
        assert mounts["/test_run"] == str(remote_dir)
        assert not containers_named(docker_client, "mh-unused-local")  # only the remote side
    finally:
        for container in containers_named(docker_client, remote_name):
            container.remove(force=True)
