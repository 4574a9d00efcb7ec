"""The harness's fault-knob check (harness/simknobs.py) and its agreement with the simulator."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import simknobs
from harness.errors import SettingsError
from harness.settings import Settings

SIM_SITE = Path(__file__).resolve().parents[2] / "sim" / "site"
if str(SIM_SITE) not in sys.path:
    sys.path.append(str(SIM_SITE))

from harness_sim import faults as sim_faults  # noqa: E402


def test_the_harness_checks_against_the_simulators_own_table() -> None:
    """One table: the simulator's, which plays the faults (no copy to keep equal)."""
    assert simknobs.ACTING is sim_faults.ACTING or simknobs.ACTING == sim_faults.ACTING
    assert simknobs.SIM_FAULTS_FILE == Path(sim_faults.__file__).resolve()
    assert set(sim_faults.PAYLOAD_SERVER_FAULTS) | {"crash", "hang"} == set(
        simknobs.ACTING["payload"])


def test_every_pair_is_either_acting_or_refused() -> None:
    every = {(c, f) for c in simknobs.COMPONENTS for f in simknobs.FAULTS}
    acting, refused = set(simknobs.acting_pairs()), set(simknobs.refused_pairs())
    assert acting | refused == every and not acting & refused
    assert ("router", "crash") in acting and ("router", "http-500") in refused


@pytest.mark.parametrize("component,fault", simknobs.acting_pairs())
def test_an_acting_pair_is_accepted(component: str, fault: str) -> None:
    assert simknobs.check_faults(f"{component}:{fault}") == [(component, fault)]


@pytest.mark.parametrize("component,fault", simknobs.refused_pairs())
def test_a_refused_pair_is_one_line_naming_what_acts(component: str, fault: str) -> None:
    with pytest.raises(SettingsError) as info:
        simknobs.check_faults(f"decode:crash,{component}:{fault}")
    message = str(info.value)
    assert "\n" not in message
    assert f"'{component}:{fault}' is refused" in message
    assert ", ".join(simknobs.ACTING[component]) in message


@pytest.mark.parametrize("version", ["0.15.1", "0.9.2+cu128", "0.16.0rc1", "0.16.0", "0.17.0"])
def test_the_own_proxy_branch_refuses_what_its_launcher_cannot_play(version: str) -> None:
    from harness.vllm_version import parse_version, uses_connector_proxy  # the case's rule
    own_proxy = not uses_connector_proxy(parse_version(version))
    for fault in ("wrong-answer", "http-500"):
        if own_proxy:
            with pytest.raises(SettingsError, match="project's own proxy"):
                simknobs.check_faults(f"proxy:{fault}", version)
        else:
            assert simknobs.check_faults(f"proxy:{fault}", version)
    for fault in simknobs.OWN_PROXY_ACTING:
        assert simknobs.check_faults(f"proxy:{fault}", version)


def test_settings_refuse_through_the_same_check() -> None:
    with pytest.raises(SettingsError, match="router:gpu-leak"):
        Settings.from_env({"HARNESS_SIM": "true", "HARNESS_SIM_FAULTS": "router:gpu-leak"})
    with pytest.raises(SettingsError, match="own proxy"):
        Settings.from_env({"HARNESS_SIM": "true", "HARNESS_SIM_FAULTS": "proxy:http-500",
                           "HARNESS_SIM_VLLM_VERSION": "0.15.1"})
