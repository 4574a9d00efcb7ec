"""Bad input: one clear line, a non-zero exit, no traceback, and the case still gets `Fail`.

Each test runs the real CLI (`python -m harness`, what the nox sessions run) from a copy of the
project, with every setting it relies on given explicitly.
"""
import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.fakes.github_api import FakeGitHubAPI, zip_bytes

CASE = "test_moe_mooncake"
BASE = {"HARNESS_SIM": "false", "HARNESS_RUNTIME": "host", "CONTAINER_NAME": "mh-unused",
        "ARTIFACT_ID": "", "GIT_REPO": "", "MOONCAKE_WHEEL": "", "GITHUB_TOKEN": "",
        "GH_TOKEN": "", "INSTALL_ERDMA": "false", "HARNESS_SIM_FAULTS": ""}


def cli(project, *args, **settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MOONCAKE_"))}
    env.update(BASE)
    env.update(settings)
    env["PATH"] = "/nonexistent-gh:" + env.get("PATH", "")  # harmless; gh is not installed here
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


def outcome(project, case=CASE):
    logs = project / "run/logs" / case
    status = json.loads((logs / "test_results.json").read_text())["status"]
    reason = json.loads((logs / "case_summary.json").read_text())["reason"]
    return status, reason


def assert_clean_failure(done):
    assert done.returncode != 0
    assert "Traceback" not in done.stdout, done.stdout[-3000:]


@pytest.mark.integration
def test_unknown_case(project):
    done = cli(project, "single", "test_no_such_case.sh")
    assert done.returncode == 2 and "Traceback" not in done.stdout
    assert "unknown case 'test_no_such_case.sh'" in done.stdout
    assert "test_moe_mooncake" in done.stdout  # what is accepted
    assert outcome(project, "test_no_such_case")[0] == "Fail"


@pytest.mark.integration
def test_bad_setting_value(project):
    done = cli(project, "single", CASE, IMAGE_PULL="sometimes")
    assert done.returncode == 2 and "Traceback" not in done.stdout
    assert "bad value for IMAGE_PULL: 'sometimes' (accepted: always, missing, never)" in done.stdout
    assert outcome(project)[0] == "Fail"


@pytest.mark.integration
def test_no_wheel_source(project):
    done = cli(project, "single", CASE)
    assert_clean_failure(done)
    status, reason = outcome(project)
    assert status == "Fail"
    assert "set ARTIFACT_ID and GIT_REPO" in reason and "MOONCAKE_WHEEL" in reason
    assert "get-wheel" in reason


@pytest.mark.integration
@pytest.mark.parametrize("setup,expected", [
    (dict(status=404), "artifact 7 not found in repository o/r"),
    (dict(body=zip_bytes({"build.log": b"x"})), "holds no wheel"),
    (dict(body=zip_bytes({"a/mooncake_a-1-py3-none-any.whl": b"1",
                          "b/mooncake_b-1-py3-none-any.whl": b"2"})), "holds 2 wheels"),
])
def test_artifact_problems_fail_the_case_with_the_reason(project, setup, expected):
    with FakeGitHubAPI(token="t0k") as api:
        api.add("o/r", 7, **setup)
        done = cli(project, "single", CASE, ARTIFACT_ID="7", GIT_REPO="o/r",
                   GITHUB_API_URL=api.url, GITHUB_TOKEN="t0k")
    assert_clean_failure(done)
    status, reason = outcome(project)
    assert status == "Fail" and expected in reason
    assert "t0k" not in done.stdout and "t0k" not in reason


@pytest.mark.integration
def test_bad_token(project):
    with FakeGitHubAPI(token="right") as api:
        api.add("o/r", 7, body=zip_bytes({"x.whl": b"1"}))
        done = cli(project, "single", CASE, ARTIFACT_ID="7", GIT_REPO="o/r",
                   GITHUB_API_URL=api.url, GITHUB_TOKEN="wrong-token")
    assert_clean_failure(done)
    status, reason = outcome(project)
    assert status == "Fail" and "HTTP 401" in reason and "GITHUB_TOKEN" in reason
    assert "wrong-token" not in done.stdout


@pytest.mark.integration
def test_malformed_shrc(project):
    shrc = project / "run/.shrc"
    shrc.parent.mkdir(parents=True)
    shrc.write_text("export A=1\nthis is not a setting\n")
    done = cli(project, "single", CASE)
    assert_clean_failure(done)
    status, reason = outcome(project)
    assert status == "Fail" and ".shrc:2" in reason


@pytest.mark.integration
def test_docker_engine_not_reachable(project):
    done = cli(project, "single", CASE, HARNESS_RUNTIME="docker", HARNESS_SIM="true",
               DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert_clean_failure(done)
    status, reason = outcome(project)
    assert status == "Fail" and "Docker engine not reachable" in reason


@pytest.mark.docker
def test_image_that_cannot_be_pulled(project, docker_client):
    name = f"mh-test-{uuid.uuid4().hex[:8]}"
    done = cli(project, "single", CASE, HARNESS_RUNTIME="docker", HARNESS_SIM="true",
               CONTAINER_NAME=name, REGISTRY_ADDR_SGLANG="127.0.0.1:1/nope:latest",
               IMAGE_PULL="always")
    assert_clean_failure(done)
    status, reason = outcome(project)
    assert status == "Fail" and "127.0.0.1:1/nope:latest" in reason and "pull-image" in reason
    assert not docker_client.containers.list(all=True, filters={"name": name})


@pytest.mark.integration
def test_unknown_group(project):
    done = cli(project, "group", "BOGUS")
    assert done.returncode == 2 and "Traceback" not in done.stdout
    assert done.stdout.strip() == "error: unknown group 'BOGUS'; accepted: SGLANG, VLLM, ALL"


@pytest.mark.integration
@pytest.mark.parametrize("name, value, expected", [
    ("REMOTE_SSH_PORT", "99999", "bad value for REMOTE_SSH_PORT: 99999 (accepted: a TCP port, "
                                 "1-65535)"),
    ("TIMEOUT_HEALTH_S", "nan", "bad value for TIMEOUT_HEALTH_S: nan (accepted: a finite "
                                "number > 0, in seconds)"),
    ("TIMEOUT_STOP_S", "-1", "bad value for TIMEOUT_STOP_S: -1.0"),
    ("TIMEOUT_CASE_S", "inf", "bad value for TIMEOUT_CASE_S: inf"),
    ("HARNESS_SIM_STARTUP_S", "-0.5", "bad value for HARNESS_SIM_STARTUP_S: -0.5"),
    ("REMOTE_TEST_DIR", "/usr/lib", "bad value for REMOTE_TEST_DIR: '/usr/lib' (inside the "
                                    "system directory /usr)"),
    ("REMOTE_TEST_DIR", "/root/.ssh", "bad value for REMOTE_TEST_DIR: '/root/.ssh'"),
    ("REMOTE_TEST_DIR", "~", "bad value for REMOTE_TEST_DIR: '~' (not an absolute path)"),
    ("REMOTE_IP", "::1", "bad value for REMOTE_IP: '::1' (IPv6 addresses are not supported"),
])
def test_out_of_range_settings_are_one_line_and_fail_the_case(project, name, value, expected):
    done = cli(project, "single", CASE, **{name: value})
    assert done.returncode == 2 and "Traceback" not in done.stdout, done.stdout
    assert expected in done.stdout and len(done.stdout.strip().splitlines()) == 1, done.stdout
    status, reason = outcome(project)
    assert status == "Fail" and expected in reason


@pytest.mark.integration
def test_run_logs_that_is_a_file_is_one_line(project):
    (project / "run").mkdir()
    (project / "run/logs").write_text("not a directory")
    done = cli(project, "single", CASE)
    assert done.returncode == 2 and "Traceback" not in done.stdout, done.stdout
    assert done.stdout.strip() == (f"error: cannot write the run directory: {project}/run/logs "
                                   "is not a directory")


@pytest.mark.integration
def test_run_dir_that_is_a_file_is_one_line(project):
    (project / "run").write_text("not a directory")
    done = cli(project, "group", "SGLANG")
    assert done.returncode == 2 and "Traceback" not in done.stdout, done.stdout
    assert "run is not a directory" in done.stdout and len(done.stdout.splitlines()) == 1


# Written by every simulated server the harness starts (they carry HARNESS_SIM_COMPONENT), so
# each server log holds bytes that are not UTF-8 before anything else.
_GARBAGE_SITECUSTOMIZE = '''
import os, sys
if os.environ.get("HARNESS_SIM_COMPONENT"):
    sys.stdout.buffer.write(b"\\xff\\xfe not utf-8 \\xc3\\x28 \\x80\\n")
    sys.stdout.flush()
'''


@pytest.mark.integration
def test_non_utf8_server_log_still_gives_a_one_line_fail(project, tmp_path):
    """A server that crashes after writing bytes that are not UTF-8: its log tail is shown with
    replacement characters; the case fails with one reason, no traceback. (Binds the demo's
    ports: run under the shared lock.)"""
    from harness.cli import DEMO_SETTINGS
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_GARBAGE_SITECUSTOMIZE)
    settings = {**DEMO_SETTINGS, "REMOTE_TEST_DIR": str(tmp_path / "remote-host" / "project"),
                "HARNESS_SIM_FAULTS": "prefill:crash", "TIMEOUT_STOP_S": "5",
                "PYTHONPATH": str(inject),
                "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    done = cli(project, "single", "test_1p1d_erdma", **settings)
    assert done.returncode == 1 and "Traceback" not in done.stdout, done.stdout[-3000:]
    status, reason = outcome(project, "test_1p1d_erdma")
    assert status == "Fail" and "prefill exited with status 1" in reason, reason
    assert "Decode" not in reason and "\n" not in reason, reason
    logs = list((project / "run/logs/test_1p1d_erdma").rglob("sglang_server_local.log"))
    assert logs and b"\xff\xfe not utf-8" in logs[0].read_bytes()
    summary = json.loads((project / "run/logs/test_1p1d_erdma/case_summary.json").read_text())
    # the crash's log tail made it, the bad bytes replaced, the fault's own line after them
    assert "\ufffd\ufffd not utf-8" in summary["log_tail"], summary
    assert "FAULT PLAYED prefill:crash" in summary["log_tail"], summary
