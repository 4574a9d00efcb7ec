"""HARNESS_SIM is a setting of every session: `nox -s single` on the simulated cluster installs
what the cluster runs (sglang-router, Mooncake), as `nox -s demo` does."""
import json
import subprocess
import sys

import pytest

from tests.simproc import demo_env

pytestmark = pytest.mark.integration


def test_single_session_runs_a_double_case_on_the_simulated_cluster(project, tmp_path):
    env = demo_env(tmp_path / "remote", relocated=True)  # HARNESS_SIM=true, two local nodes
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run([sys.executable, "-m", "nox", "-s", "single", "--", "test_1p1d_erdma"],
                          cwd=project, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "No module named" not in done.stdout
    result = json.loads((project / "run/logs/test_1p1d_erdma/test_results.json").read_text())
    assert result["status"] == "Pass"
