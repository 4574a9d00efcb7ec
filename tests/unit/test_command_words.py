"""The command words every host builds (harness.hosts.argv): the `env` prefix, the `timeout -k`
wrapper, and which exit codes mean the limit passed."""
from __future__ import annotations

import subprocess

import pytest

from harness.hosts.argv import timed_out, with_env, with_timeout


def test_env_prefix_sets_each_variable_before_the_command():
    assert with_env(["python", 3], {"A": "1", "B": "x y"}) == ["env", "A=1", "B=x y",
                                                                "python", "3"]


@pytest.mark.parametrize("env", [None, {}])
def test_nothing_to_set_is_the_command_alone(env):
    assert with_env(("python", "-V"), env) == ["python", "-V"]


def test_timeout_wrapper_words():
    assert with_timeout(["sleep", 5], 2.5, 10) == ["timeout", "-k", "10", "2.5", "sleep", "5"]


@pytest.mark.parametrize("seconds", [0, -3])
def test_a_limit_already_spent_is_still_a_limit(seconds):
    """`timeout 0` would run the command with no limit at all: a spent limit becomes 1 ms."""
    words = with_timeout(["sleep", "5"], seconds, 1)
    assert words[3] == "0.001"
    done = subprocess.run(words, check=False)
    assert timed_out(done.returncode)


@pytest.mark.parametrize("code, expected", [(124, True), (137, True), (0, False), (1, False),
                                            (None, False)])
def test_which_exit_codes_mean_the_limit_passed(code, expected):
    assert timed_out(code) is expected
