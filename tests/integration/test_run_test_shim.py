"""scripts/run_test.sh: T-One's old entry point, mapped onto the nox sessions."""
import os
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
SHIM = ROOT / "scripts" / "run_test.sh"


@pytest.fixture
def recording_nox(tmp_path):
    """A `nox` first on PATH that records how it was called (the shim is what is tested)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv"
    (bin_dir / "nox").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    (bin_dir / "nox").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, record


@pytest.mark.parametrize("args,expected", [
    (["run-single", "test_1p1d_erdma.sh"], ["-s", "single", "--", "test_1p1d_erdma.sh"]),
    (["run-all"], ["-s", "all"]),
    (["run-all", "SGLANG"], ["-s", "sglang"]),
    (["run-all", "vllm"], ["-s", "vllm"]),
])
def test_commands_map_onto_sessions(recording_nox, args, expected):
    env, record = recording_nox
    done = subprocess.run(["bash", str(SHIM), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    argv = record.read_text().split("\n")[:-1]
    assert argv == ["--noxfile", str(ROOT / "noxfile.py"), *expected]


@pytest.mark.parametrize("args,message", [
    (["run-all", "TPU"], "unknown group 'TPU'; accepted: SGLANG, VLLM"),
    (["run-single"], "usage:"),
    (["deploy"], "usage:"),
])
def test_bad_input_is_one_line_and_exit_2(recording_nox, args, message):
    env, record = recording_nox
    done = subprocess.run(["bash", str(SHIM), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not record.exists()
