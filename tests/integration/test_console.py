"""The console a person reads on T-One's job page: a sign of life while a server starts slowly,
and one line per event (prep skips, resets) rather than the same news twice."""
import re
import subprocess
import sys

import pytest

from tests.simproc import demo_env

pytestmark = pytest.mark.integration
TIMESTAMPED = re.compile(r"^\d\d:\d\d:\d\d (.*)$")


def harness_lines(output: str) -> list[str]:
    """The harness's own console lines (a payload's echoed output has no timestamp)."""
    return [m.group(1) for m in map(TIMESTAMPED.match, output.splitlines()) if m]


def test_a_slow_start_up_says_what_it_waits_for_each_interval(project, tmp_path):
    env = demo_env(tmp_path / "remote", HARNESS_SIM_STARTUP_S="2.6", PROGRESS_EVERY_S="1")
    done = subprocess.run([sys.executable, "-m", "harness", "single", "test_1p1d_erdma"],
                          cwd=project, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    lines = harness_lines(done.stdout)
    for server, host in (("prefill", "local"), ("decode", "remote")):
        waiting = [line for line in lines
                   if line.startswith(f"still waiting for {server} on {host} (")]
        # 2.6 s of start-up per model, a line a second: two lines for each of the two models
        assert len(waiting) >= 4, "\n".join(lines)
        assert "1s of 240s; log: " in waiting[0] and "[harness-sim]" in waiting[0], waiting[0]


def test_prep_skips_and_resets_are_one_line_each(project, tmp_path):
    env = demo_env(tmp_path / "remote")
    done = subprocess.run([sys.executable, "-m", "harness", "demo"], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    lines = harness_lines(done.stdout)
    for host in ("local", "remote"):
        skips = [line for line in lines if line.startswith(f"prep {host}:") and "skipped" in line]
        assert len(skips) == 1, skips
        assert "pull-image, start-container, install-erdma skipped (HARNESS_RUNTIME=host)" \
            in skips[0]
        resets = [line for line in lines if "reset" in line and host in line]
        assert len(resets) == 4, resets  # five cases, a reset between two: one line each
    assert not [line for line in lines if "prep" in line and "run-dir:" in line]
