"""Every range check of the settings, at both edges (SPEC §3: "A timeout must be a finite number
> 0"; a port is 1-65535). A value out of range is one line naming the setting and the value; the
value at the edge is accepted, so a check that is off by one fails here too."""
from __future__ import annotations

import math

import pytest

from harness.errors import SettingsError
from harness.settings import Settings

# Every timeout the SPEC names, plus the harness's own.
TIMEOUTS = ["TIMEOUT_SERVER_READY_S", "TIMEOUT_HEALTH_S", "TIMEOUT_ROUTER_S", "TIMEOUT_PROXY_S",
            "TIMEOUT_STOP_S", "TIMEOUT_GPU_DRAIN_S", "TIMEOUT_GPU_DRAIN_AFTER_KILL_S",
            "TIMEOUT_PREFLIGHT_S", "TIMEOUT_CASE_S"]


def refused(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    text = str(err.value)
    assert "\n" not in text
    return text


def attr(name: str) -> str:
    return name.lower()


def test_every_timeout_setting_is_checked():
    names = {f.metadata["env"] for f in Settings.__dataclass_fields__.values()}
    assert {n for n in names if n.startswith("TIMEOUT_")} == set(TIMEOUTS)


@pytest.mark.parametrize("name", TIMEOUTS)
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "0", "0.0", "-1", "-0.001"])
def test_a_timeout_must_be_finite_and_positive(name, value):
    text = refused({name: value})
    assert name in text and value.lower() in text.lower()


@pytest.mark.parametrize("name", TIMEOUTS)
def test_a_timeout_just_above_zero_or_large_is_accepted(name):
    assert getattr(Settings.from_env({name: "0.001"}), attr(name)) == 0.001
    assert getattr(Settings.from_env({name: "86400"}), attr(name)) == 86400


@pytest.mark.parametrize("name", TIMEOUTS)
def test_a_timeout_given_in_code_is_checked_too(name):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({}, **{attr(name): math.nan})


def test_the_defaults_pass_their_own_checks():
    s = Settings.from_env({})
    assert all(getattr(s, attr(n)) > 0 for n in TIMEOUTS)


@pytest.mark.parametrize("value", ["-0.001", "-1", "nan", "inf"])
def test_sim_startup_must_be_finite_and_not_negative(value):
    assert "HARNESS_SIM_STARTUP_S" in refused({"HARNESS_SIM_STARTUP_S": value})


def test_sim_startup_zero_means_at_once():
    assert Settings.from_env({"HARNESS_SIM_STARTUP_S": "0"}).sim_startup_s == 0


@pytest.mark.parametrize("value", ["0", "-1", "65536", "99999"])
def test_ssh_port_out_of_range_is_refused(value):
    text = refused({"REMOTE_SSH_PORT": value})
    assert "REMOTE_SSH_PORT" in text and value in text


@pytest.mark.parametrize("value", ["1", "22", "65535"])
def test_ssh_port_edges_are_accepted(value):
    assert Settings.from_env({"REMOTE_SSH_PORT": value}).remote_ssh_port == int(value)
