"""Checks the simulator's knobs on the harness side, so a typo fails before anything starts.

A fault knob that nothing applies is a test that cannot fail, so a pair that does not act is
refused at start as firmly as a typo. Which pairs act is the simulator's table, read here from
its own file (sim/site/harness_sim/faults.py: standard library only, and it does not import the
harness, since it runs inside serving images); this module adds why the others cannot act.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from packaging.version import InvalidVersion, Version

from harness.errors import SettingsError
from harness.vllm_version import uses_connector_proxy

SIM_FAULTS_FILE = Path(__file__).resolve().parent.parent / "sim/site/harness_sim/faults.py"


def _sim_table():
    spec = importlib.util.spec_from_file_location("harness_sim_fault_table", SIM_FAULTS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TABLE = _sim_table()
COMPONENTS: tuple[str, ...] = _TABLE.COMPONENTS
FAULTS: tuple[str, ...] = _TABLE.FAULTS
ACTING: dict[str, tuple[str, ...]] = _TABLE.ACTING   # component -> the faults that act on it
# The project's own proxy (real code, harness.vllm_version): only the launcher's faults act.
OWN_PROXY_ACTING: tuple[str, ...] = _TABLE.OWN_PROXY_ACTING
WHY_NOT = {
    "router": "the router is the real sglang-router: harness_sim.router can keep it from "
              "starting, stall it or end it once ready, not change its answers, and it holds "
              "no GPU memory",
    "proxy": "a vLLM proxy holds no GPU memory",
    "mooncake": "the transfer faults are mooncake:corrupt and mooncake:refuse",
    **dict.fromkeys(("prefill", "decode", "encoder", "payload"),
                    "corrupt and refuse are Mooncake transfer faults: mooncake:corrupt, "
                    "mooncake:refuse"),
}


def _version(text: str) -> Version | None:
    try:
        return Version((text or "").strip())
    except InvalidVersion:
        return None


def _refuse(item: str, component: str, why: str, acting: tuple[str, ...]) -> SettingsError:
    return SettingsError(f"HARNESS_SIM_FAULTS item {item!r} is refused: nothing applies it "
                         f"({why}); {component} faults that act: {', '.join(acting)}")


def check_faults(text: str, vllm_version: str = "") -> list[tuple[str, str]]:
    """Parse HARNESS_SIM_FAULTS (`component:fault,...`): unknown names, and pairs that nothing
    applies (with HARNESS_SIM_VLLM_VERSION `vllm_version`, which picks the vLLM proxy), are a
    SettingsError of one line."""
    pairs = []
    version = _version(vllm_version)
    own_proxy = version is not None and not uses_connector_proxy(version)
    for item in filter(None, (part.strip() for part in text.split(","))):
        component, sep, fault = item.partition(":")
        if not sep or component not in COMPONENTS or fault not in FAULTS:
            raise SettingsError(
                f"bad HARNESS_SIM_FAULTS item {item!r}: expected component:fault with component "
                f"in {', '.join(COMPONENTS)} and fault in {', '.join(FAULTS)}")
        if fault not in ACTING[component]:
            raise _refuse(item, component, WHY_NOT.get(component, ""), ACTING[component])
        if component == "proxy" and own_proxy and fault not in OWN_PROXY_ACTING:
            raise _refuse(item, component, f"HARNESS_SIM_VLLM_VERSION {vllm_version} runs the "
                          "project's own proxy, real code that the launcher can stop from "
                          "starting, stall or end, not make answer wrongly", OWN_PROXY_ACTING)
        pairs.append((component, fault))
    return pairs


def acting_pairs() -> list[tuple[str, str]]:
    """Every (component, fault) that acts, in table order."""
    return [(c, f) for c in COMPONENTS for f in FAULTS if f in ACTING[c]]


def refused_pairs() -> list[tuple[str, str]]:
    """Every (component, fault) that is refused whatever the vLLM version."""
    return [(c, f) for c in COMPONENTS for f in FAULTS if f not in ACTING[c]]
