"""HARNESS_SIM_FAULTS: which simulated component misbehaves, and how.

The knob is a comma list of `component:fault`, e.g. `decode:http-500,payload:crash`.
A server knows its own component from HARNESS_SIM_COMPONENT, which only the harness sets
(for servers it starts in a double case); servers a pytest payload starts for itself have
no component, so they are never affected. Payloads ask for `active_faults("payload")`.

Anything unknown is a ValueError with one line naming what is accepted, because a typo in
a fault knob must fail loudly rather than silently test nothing.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

FAULTS_ENV = "HARNESS_SIM_FAULTS"
COMPONENT_ENV = "HARNESS_SIM_COMPONENT"

COMPONENTS: tuple[str, ...] = ("prefill", "decode", "encoder", "router", "proxy", "payload")
FAULTS: tuple[str, ...] = (
    "crash",            # exit 1 before ready
    "hang",             # never ready (but still stops on SIGTERM)
    "die-after-ready",  # print the ready lines, then exit 3
    "wrong-answer",     # answer without the right content
    "http-500",         # healthy, but generation requests answer HTTP 500
    "gpu-leak",         # the host reset later finds GPU memory held (not the engine's business)
)

# Exit codes of a simulated server, so the harness and tests can tell causes apart.
EXIT_OK = 0
EXIT_CRASH = 1          # `crash` fault, port in use, failed wiring at start-up
EXIT_USAGE = 2          # bad knob or argument
EXIT_DIED_AFTER_READY = 3


def _accepted() -> str:
    return (f"expected a comma list of component:fault with component in {', '.join(COMPONENTS)} "
            f"and fault in {', '.join(FAULTS)}")


def parse(text: str | None) -> list[tuple[str, str]]:
    """Parse a HARNESS_SIM_FAULTS value into (component, fault) pairs, in order.

    Blank text and empty items (a trailing comma) are allowed; anything else that is not
    exactly `known-component:known-fault` raises ValueError with one clear line.
    """
    pairs: list[tuple[str, str]] = []
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        component, sep, fault = (s.strip() for s in item.partition(":"))
        if not sep or component not in COMPONENTS or fault not in FAULTS:
            raise ValueError(f"bad {FAULTS_ENV} item {item!r}: {_accepted()}")
        pairs.append((component, fault))
    return pairs


def check_component(name: str | None) -> str | None:
    """Validate a HARNESS_SIM_COMPONENT value; blank means "no component" (None)."""
    name = (name or "").strip()
    if not name:
        return None
    if name not in COMPONENTS:
        raise ValueError(f"bad {COMPONENT_ENV} {name!r}: expected one of {', '.join(COMPONENTS)} "
                         "(or unset)")
    return name


def active_faults(component: str | None, text: str | None = None,
                  environ: Mapping[str, str] | None = None) -> set[str]:
    """The faults that apply to `component` (None -> none apply).

    `text` defaults to $HARNESS_SIM_FAULTS. The whole value is validated even when the
    component is None, so a bad knob is reported by every simulated process.
    """
    env = os.environ if environ is None else environ
    pairs = parse(env.get(FAULTS_ENV, "") if text is None else text)
    component = check_component(component)
    if component is None:
        return set()
    return {fault for comp, fault in pairs if comp == component}


def own_component(environ: Mapping[str, str] | None = None) -> str | None:
    """This process's component, from $HARNESS_SIM_COMPONENT (validated)."""
    env = os.environ if environ is None else environ
    return check_component(env.get(COMPONENT_ENV))


def own_faults(environ: Mapping[str, str] | None = None) -> set[str]:
    """The faults for this process's own component (empty when it has none)."""
    env = os.environ if environ is None else environ
    return active_faults(own_component(env), environ=env)
