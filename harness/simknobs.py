"""Checks the simulator's knobs on the harness side, so a typo fails before anything starts."""
from __future__ import annotations

from harness.errors import SettingsError

COMPONENTS = ("prefill", "decode", "encoder", "router", "proxy", "payload")
FAULTS = ("crash", "hang", "die-after-ready", "wrong-answer", "http-500", "gpu-leak")


def check_faults(text: str) -> list[tuple[str, str]]:
    """Parse HARNESS_SIM_FAULTS (`component:fault,...`); anything unknown is a SettingsError."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        component, sep, fault = item.partition(":")
        if not sep or component not in COMPONENTS or fault not in FAULTS:
            raise SettingsError(
                f"bad HARNESS_SIM_FAULTS item {item!r}: expected component:fault with component "
                f"in {', '.join(COMPONENTS)} and fault in {', '.join(FAULTS)}")
        pairs.append((component, fault))
    return pairs
