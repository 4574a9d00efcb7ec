"""HARNESS_SIM_FAULTS: which simulated component misbehaves, and how.

The knob is a comma list of `component:fault`, e.g. `decode:http-500,payload:crash`.
A server knows its own component from HARNESS_SIM_COMPONENT, which only the harness sets
(for servers it starts in a double case); servers a pytest payload starts for itself have
no component, so they are never affected. Payloads ask for `active_faults("payload")`.

Anything unknown, and any pair that nothing applies (see ACTING), is a ValueError with one
line naming what is accepted, because a fault knob that does nothing is a test that cannot
fail. This table is the only one: `harness/simknobs.py` reads this file for the harness's
start-up check (so it imports nothing but the standard library).

Whoever plays a fault says so with `played()`: one timestamped line in its log, from which
the fault matrix (benchmarks/faults.py) measures how long the harness took to report it.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping

FAULTS_ENV = "HARNESS_SIM_FAULTS"
COMPONENT_ENV = "HARNESS_SIM_COMPONENT"

COMPONENTS: tuple[str, ...] = ("prefill", "decode", "encoder", "router", "proxy", "payload",
                               "mooncake")
FAULTS: tuple[str, ...] = (
    "crash",            # exit 1 before ready
    "hang",             # never ready (but still stops on SIGTERM)
    "die-after-ready",  # print the ready lines, then exit 3
    "wrong-answer",     # answer without the right content
    "http-500",         # healthy, but generation requests answer HTTP 500
    "gpu-leak",         # the host reset later finds GPU memory held (not the engine's business)
    "corrupt",          # mooncake: the KV written through Mooncake arrives with wrong bytes
    "refuse",           # mooncake: the transfer fails inside Mooncake (its handshake refused)
)

# The pairs that act, and who plays them. Everything else is refused.
_SERVER_FAULTS = FAULTS[:6]  # a simulated SGLang or vLLM server plays every server fault
ACTING: dict[str, tuple[str, ...]] = {
    "prefill": _SERVER_FAULTS,
    "decode": _SERVER_FAULTS,
    "encoder": _SERVER_FAULTS,
    # harness_sim.router wraps the real sglang-router: it can keep it from starting, stall it,
    # or end it once ready; what the real router answers is not ours to change, and it holds
    # no GPU memory.
    "router": ("crash", "hang", "die-after-ready"),
    # The simulated Mooncake connector proxy (vLLM >= 0.16) plays these itself; the project's
    # own proxy (older vLLM) is real code, wrapped by harness_sim.proxy_launcher, which plays
    # only OWN_PROXY_ACTING. A proxy holds no GPU memory.
    "proxy": ("crash", "hang", "die-after-ready", "wrong-answer", "http-500"),
    # The payload process plays crash and hang (sglang.test.test_utils on import); the servers
    # it starts for itself play the rest (they get HARNESS_SIM_COMPONENT=payload).
    "payload": _SERVER_FAULTS,
    # Every simulated server that sends KV through Mooncake (a PD prefill) plays these on its
    # transfers, whatever its own component; the receiver must notice.
    "mooncake": ("corrupt", "refuse"),
}
OWN_PROXY_ACTING: tuple[str, ...] = ("crash", "hang", "die-after-ready")
PAYLOAD_SERVER_FAULTS: tuple[str, ...] = ("die-after-ready", "wrong-answer", "http-500",
                                          "gpu-leak")

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
        if fault not in ACTING[component]:
            raise ValueError(f"{FAULTS_ENV} item {item!r} is refused: nothing in the simulator "
                             f"plays it; {component} faults that act: "
                             f"{', '.join(ACTING[component])}")
        pairs.append((component, fault))
    return pairs


def played(component: str | None, fault: str, what: str) -> None:
    """One timestamped line in this process's log: the moment a fault takes effect."""
    from harness_sim.console import say  # console has no imports of ours; keep this module light
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    say(f"[harness-sim] FAULT PLAYED {component or '-'}:{fault} at {now:.3f} ({stamp}): {what}")


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


_played_already: set[tuple[str | None, str]] = set()


def played_once(component: str | None, fault: str, what: str) -> None:
    """`played()` the first time a fault that acts per request (wrong-answer, http-500) acts."""
    if (component, fault) not in _played_already:
        _played_already.add((component, fault))
        played(component, fault, what)
