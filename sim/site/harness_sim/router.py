"""`python3 -m harness_sim.router ARGS`: the REAL sglang-router, with the simulator's faults.

The harness starts the router through this launcher instead of
`python3 -m sglang_router.launch_router` only when HARNESS_SIM=true; it passes the same
arguments. Faults for component `router` (harness_sim.launcher): crash, hang, die-after-ready.
Ready, as the harness judges it: every worker activated and the tokenizer loaded, or
`/readiness` answering 200.
"""
from __future__ import annotations

import re
import sys

from harness_sim import faults
from harness_sim.launcher import http_ok, launch, local_url

REAL_ROUTER = ("-m", "sglang_router.launch_router")
WORKER_ACTIVATED = re.compile(r"Activated 1 worker\(s\) \(marked as healthy\)")
TOKENIZER_LOADED = re.compile(r"Successfully (loaded|registered) tokenizer")


def worker_count(argv: list[str]) -> int:
    return max(1, sum(arg in ("--prefill", "--decode", "--worker-urls") for arg in argv))


def router_ready(argv: list[str]):
    readiness = local_url(argv, "30000", "/readiness")
    workers = worker_count(argv)

    def ready(output: str) -> bool:
        if (len(WORKER_ACTIVATED.findall(output)) >= workers
                and TOKENIZER_LOADED.search(output)):
            return True
        return http_ok(readiness)
    return ready


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return launch("router", [sys.executable, *REAL_ROUTER, *args], faults.ACTING["router"],
                  router_ready(args), "sglang-router")


if __name__ == "__main__":
    sys.exit(main())
