"""Command lines of the engines the double cases start, built one way for every case.

The simulator (sim/) answers these same command lines when HARNESS_SIM=true.
"""
from __future__ import annotations

from typing import Sequence

from harness.run.cases import CaseContext
from harness.hosts.nodes import Node
from harness.servers.server import Server, app_startup_ready, offline_env, router_ready, sglang_ready

ROUTER_PORT = 8000


def sglang_server(ctx: CaseContext, name: str, node: Node, model: str, port: int,
                  args: Sequence[str], log_name: str, *, encoder_only: bool = False) -> Server:
    """`python3 -m sglang.launch_server` on `node`, bound to the node's address."""
    s = ctx.settings
    address = node.address
    argv = ["python3", "-m", "sglang.launch_server", "--model-path", model,
            "--host", address, "--port", str(port), *args]
    ready = (app_startup_ready if encoder_only else sglang_ready)(
        address, port, s.timeout_server_ready_s, s.timeout_health_s)
    env = {**offline_env(node, model), **ctx.sim_env(node, name)}
    return ctx.server(name, node, argv, log=ctx.model_logs(node, model) / log_name, ready=ready,
                      env=env, pythonpath=ctx.pythonpath(node))


def sglang_router(ctx: CaseContext, model: str, prefill_url: str, decode_url: str) -> Server:
    """The real sglang-router in PD mode on the local node, listening on 0.0.0.0:8000."""
    node = ctx.local
    argv = ["python3", "-m", "sglang_router.launch_router", "--pd-disaggregation",
            "--prefill", prefill_url, "--decode", decode_url,
            "--host", "0.0.0.0", "--port", str(ROUTER_PORT)]
    if ctx.settings.harness_sim:  # keep the router's metrics on loopback on shared test hosts
        argv += ["--prometheus-host", "127.0.0.1"]
        # the simulator's launcher applies router:* faults, then runs this same real router
        argv[1:3] = ["-m", "harness_sim.router"]
    return ctx.server("router", node, argv, log=ctx.model_logs(node, model) / "load_balancer.log",
                      ready=router_ready(ROUTER_PORT, 2, ctx.settings.timeout_router_s),
                      env=ctx.sim_env(node, "router"), pythonpath=ctx.pythonpath(node))
