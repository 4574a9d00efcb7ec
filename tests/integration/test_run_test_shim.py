"""scripts/run_test.sh: T-One's old entry point, mapped onto the nox sessions.

Each test runs a copy of the shim in its own project dir, so the results it writes never touch
this checkout's run tree.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from harness.run import cases as registry
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
BASH = shutil.which("bash")
STAMP = re.compile(r'\{"test_case": "(\w+)", "status": "Fail", "timestamp": '
                   r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"\}\n')
# What the shim may use besides bash builtins; nothing else is on the bare PATH below.
SHIM_TOOLS = ("date", "mkdir", "mv", "rm")


def project(tmp_path: Path) -> Path:
    """A project dir holding a copy of the shim (root = its parent's parent, as in the repo)."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "run_test.sh", root / "scripts" / "run_test.sh")
    return root


def bare_path(tmp_path: Path, scripts: dict[str, str]) -> str:
    """A PATH with the shim's tools and the given executables only: no python3.1x, no nox."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in SHIM_TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def shim(root: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(root / "scripts" / "run_test.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def failed_cases(root: Path) -> dict[str, str]:
    """case -> reason, for every test_results.json under run/logs, checking its exact format."""
    found = {}
    for results in sorted((root / "run" / "logs").glob("*/test_results.json")):
        match = STAMP.fullmatch(results.read_text())
        assert match and match.group(1) == results.parent.name, results.read_text()
        found[match.group(1)] = json.loads((results.parent / "case_summary.json").read_text())[
            "reason"]
    return found


def names(group: str) -> set[str]:
    return {c.name for c in registry.group_cases(group)}


PYTHON36 = '#!/bin/sh\n[ "$1" = --version ] && { echo "Python 3.6.9"; exit 0; }\nexit 1\n'


@pytest.mark.parametrize("args,asked", [
    (["run-single", "test_moe_mooncake.sh"], {"test_moe_mooncake"}),
    (["run-all", "SGLANG"], names("SGLANG")),
    (["run-all"], names("ALL")),
])
def test_python_36_only_fails_every_asked_case(tmp_path, args, asked):
    root = project(tmp_path)
    earlier = root / "run/logs/test_moe_mooncake/test_results.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"test_case": "test_moe_mooncake", "status": "Pass", '
                       '"timestamp": "2020-01-01T00:00:00Z"}\n')
    env = {"PATH": bare_path(tmp_path, {"python3": PYTHON36}), "HOME": str(tmp_path)}
    done = shim(root, *args, env=env)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "no Python >= 3.10" in done.stderr and "python3 is Python 3.6.9" in done.stderr
    reasons = failed_cases(root)
    assert set(reasons) == asked
    assert all("no Python >= 3.10" in reason for reason in reasons.values())
    assert not (root / ".venv").exists()


def test_venv_that_cannot_be_made_fails_every_case(tmp_path):
    """A Python new enough whose `-m venv` fails (Debian without python3-venv)."""
    no_venv = ('#!/bin/sh\n[ "$1" = -m ] && { echo "ensurepip is not available" >&2; exit 1; }\n'
               'exit 0\n')
    root = project(tmp_path)
    env = {"PATH": bare_path(tmp_path, {"python3.12": no_venv}), "HOME": str(tmp_path)}
    done = shim(root, "run-all", "vllm", env=env)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "python3.12 -m venv failed (python3-venv missing?)" in done.stderr
    assert set(failed_cases(root)) == names("VLLM")
    assert "ensurepip is not available" in (root / "run/logs/bootstrap.log").read_text()


def test_no_package_index_fails_every_case(tmp_path):
    """A real Python >= 3.10 makes the venv; `pip install nox` finds no index."""
    root = project(tmp_path)
    path = bare_path(tmp_path, {})
    (Path(path) / "python3").symlink_to(Path(sys.executable).resolve())
    env = {"PATH": path, "HOME": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0",
           "PIP_TIMEOUT": "5"}
    done = shim(root, "run-single", "test_1p1d_erdma", env=env)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "'pip install nox'" in done.stderr and "no package index" in done.stderr
    assert set(failed_cases(root)) == {"test_1p1d_erdma"}
    assert "nox" in (root / "run/logs/bootstrap.log").read_text()


def test_nox_dying_before_its_session_leaves_fail(tmp_path):
    root = project(tmp_path)
    path = bare_path(tmp_path, {"nox": "#!/bin/sh\necho 'nox > noxfile.py: error' >&2\nexit 3\n"})
    done = shim(root, "run-all", "SGLANG", env={"PATH": path, "HOME": str(tmp_path)})
    assert done.returncode == 3
    reasons = failed_cases(root)
    assert set(reasons) == names("SGLANG")
    assert all(r.startswith("run did not finish") for r in reasons.values())


@pytest.fixture
def recording_nox(tmp_path):
    """A `nox` first on PATH that records how it was called (the shim is what is tested)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv"
    (bin_dir / "nox").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    (bin_dir / "nox").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return project(tmp_path), env, record


@pytest.mark.parametrize("args,expected", [
    (["run-single", "test_1p1d_erdma.sh"], ["-s", "single", "--", "test_1p1d_erdma.sh"]),
    (["run-all"], ["-s", "all"]),
    (["run-all", "SGLANG"], ["-s", "sglang"]),
    (["run-all", "vllm"], ["-s", "vllm"]),
])
def test_commands_map_onto_sessions(recording_nox, args, expected):
    root, env, record = recording_nox
    done = shim(root, *args, env=env)
    assert done.returncode == 0, done.stderr
    argv = record.read_text().split("\n")[:-1]
    assert argv == ["--noxfile", str(root / "noxfile.py"), *expected]


@pytest.mark.parametrize("args,message", [
    (["run-all", "TPU"], "unknown group 'TPU'; accepted: SGLANG, VLLM"),
    (["run-single", "test_nope.sh"], "unknown case 'test_nope.sh'; known cases: "),
    (["run-single"], "usage:"),
    (["deploy"], "usage:"),
])
def test_bad_input_is_one_line_and_exit_2(recording_nox, args, message):
    root, env, record = recording_nox
    done = shim(root, *args, env=env)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not record.exists()
    assert not (root / "run").exists()


@pytest.mark.docker
def test_a_host_with_only_python_36_runs_the_case_in_the_serving_image(
        tmp_path, docker_client, test_image):
    """Where the old scripts ran, it runs: bash, docker and the serving image (the test image
    stands in for it) are enough; the same session runs inside the image, with the Docker
    socket, and leaves the same results in the same places."""
    from tests.conftest import copy_project
    from tests.integration.test_single_docker import containers_named, harness_env
    root = copy_project(tmp_path / "project")
    name = f"mh-test-{uuid.uuid4().hex[:8]}"
    path = bare_path(tmp_path, {"python3": PYTHON36})
    (Path(path) / "docker").symlink_to(shutil.which("docker"))
    (Path(path) / "grep").symlink_to(shutil.which("grep"))
    env = harness_env(name, test_image, PATH=path, HOME=str(tmp_path))
    try:
        done = subprocess.run([BASH, str(root / "scripts" / "run_test.sh"), "run-single",
                               "test_moe_mooncake.sh"], env=env, capture_output=True,
                              text=True, timeout=900)
    finally:
        for container in containers_named(docker_client, name):
            container.remove(force=True)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert f"no Python >= 3.10 on this host: running the session in {test_image}" in done.stderr
    result = json.loads((root / "run/logs/test_moe_mooncake/test_results.json").read_text())
    assert result["status"] == "Pass"
    assert "test_moe_mooncake: Pass" in out
    assert not (root / ".venv").exists() and not (root / ".nox").exists()  # the host's own
