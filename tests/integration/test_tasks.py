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
    for name in ("prepare", "get-wheel", "start-container", "stop-container", "install-erdma",
                 "clean"):
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
