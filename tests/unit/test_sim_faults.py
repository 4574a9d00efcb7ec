"""HARNESS_SIM_FAULTS parsing in the simulator (sim/site/harness_sim/faults.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

SIM_SITE = Path(__file__).resolve().parents[2] / "sim" / "site"
if str(SIM_SITE) not in sys.path:
    sys.path.append(str(SIM_SITE))

from harness_sim import faults


def test_parse_pairs_in_order() -> None:
    assert faults.parse("decode:http-500, prefill:crash,payload:wrong-answer") == [
        ("decode", "http-500"), ("prefill", "crash"), ("payload", "wrong-answer")]


@pytest.mark.parametrize("text", ["", "   ", None, ",", "decode:hang,"])
def test_parse_blank_and_trailing_comma(text: str | None) -> None:
    expected = [("decode", "hang")] if text and "decode" in text else []
    assert faults.parse(text) == expected


def test_every_acting_pair_is_accepted() -> None:
    pairs = [(c, f) for c in faults.COMPONENTS for f in faults.ACTING[c]]
    assert faults.parse(",".join(f"{c}:{f}" for c, f in pairs)) == pairs


@pytest.mark.parametrize("item", ["router:wrong-answer", "router:http-500", "router:gpu-leak",
                                  "proxy:gpu-leak"])
def test_pairs_nothing_plays_are_refused_with_one_line(item: str) -> None:
    with pytest.raises(ValueError) as info:
        faults.parse(item)
    message = str(info.value)
    assert "\n" not in message and "refused" in message and item in message
    component = item.split(":")[0]
    assert ", ".join(faults.ACTING[component]) in message


def test_played_line_is_timestamped(capsys: pytest.CaptureFixture[str]) -> None:
    import time
    before = time.time()
    faults.played("decode", "crash", "exiting")
    line = capsys.readouterr().out.strip()
    assert line.startswith("[harness-sim] FAULT PLAYED decode:crash at ")
    stamp = float(line.split(" at ")[1].split()[0])
    assert before - 0.01 <= stamp <= time.time() + 0.01


@pytest.mark.parametrize("text", ["decode:explode", "gpu:crash", "decode", "decode:crash:x",
                                  ":crash", "decode:", "Decode:crash", "decode;crash"])
def test_parse_rejects_with_one_clear_line(text: str) -> None:
    with pytest.raises(ValueError) as info:
        faults.parse(text)
    message = str(info.value)
    assert "\n" not in message
    assert "HARNESS_SIM_FAULTS" in message
    for name in (*faults.COMPONENTS, *faults.FAULTS):
        assert name in message


def test_active_faults_for_a_component() -> None:
    text = "decode:http-500,decode:wrong-answer,prefill:crash"
    assert faults.active_faults("decode", text) == {"http-500", "wrong-answer"}
    assert faults.active_faults("prefill", text) == {"crash"}
    assert faults.active_faults("encoder", text) == set()


def test_no_component_is_never_affected_but_knob_is_still_checked() -> None:
    assert faults.active_faults(None, "decode:crash") == set()
    with pytest.raises(ValueError):
        faults.active_faults(None, "decode:boom")


def test_active_faults_reads_the_environment() -> None:
    env = {"HARNESS_SIM_FAULTS": "payload:crash"}
    assert faults.active_faults("payload", environ=env) == {"crash"}
    assert faults.active_faults("payload", environ={}) == set()


def test_own_component_and_faults() -> None:
    env = {"HARNESS_SIM_COMPONENT": "decode", "HARNESS_SIM_FAULTS": "decode:hang,prefill:crash"}
    assert faults.own_component(env) == "decode"
    assert faults.own_faults(env) == {"hang"}
    assert faults.own_component({}) is None
    assert faults.own_faults({"HARNESS_SIM_FAULTS": "decode:hang"}) == set()


def test_bad_component_env() -> None:
    with pytest.raises(ValueError, match="HARNESS_SIM_COMPONENT"):
        faults.own_component({"HARNESS_SIM_COMPONENT": "scheduler"})
    assert faults.check_component("  ") is None


def test_exit_codes_are_distinct() -> None:
    codes = {faults.EXIT_OK, faults.EXIT_CRASH, faults.EXIT_USAGE, faults.EXIT_DIED_AFTER_READY}
    assert len(codes) == 4
