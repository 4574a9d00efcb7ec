"""`python3 -u -m harness_sim.proxy_launcher SCRIPT ARGS`: the project's own vLLM proxy
(payloads/vllm_proxy/disagg_proxy.py, real code, used for vLLM < 0.16), with the simulator's
faults for component `proxy`.

The harness starts the proxy through this launcher only when HARNESS_SIM=true. Faults that
act here (harness_sim.launcher): crash, hang, die-after-ready. `wrong-answer` and `http-500`
would mean changing what the real proxy answers, so they are refused for this branch (the
harness refuses them at start when HARNESS_SIM_VLLM_VERSION < 0.16).
Ready, as the harness judges it: `Application startup complete.` and `/health` answering 200.
"""
from __future__ import annotations

import sys

from harness_sim import faults
from harness_sim.console import say
from harness_sim.launcher import http_ok, launch, local_url
from harness_sim.serving import TAG

READY_LINE = "Application startup complete."


def proxy_ready(argv: list[str]):
    health = local_url(argv, "8000", "/health")

    def ready(output: str) -> bool:
        return READY_LINE in output and http_ok(health)
    return ready


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or not args[0].endswith(".py"):
        say(f"{TAG} error: usage: python3 -m harness_sim.proxy_launcher PROXY_SCRIPT.py ARGS...")
        return faults.EXIT_USAGE
    return launch("proxy", [sys.executable, "-u", *args], faults.OWN_PROXY_ACTING,
                  proxy_ready(args[1:]), "project's own vLLM proxy")


if __name__ == "__main__":
    sys.exit(main())
