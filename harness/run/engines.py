"""Command lines and readiness rules of the engines the double cases start, built one way for
every case: SGLang servers and sglang-router, vLLM servers and the proxy in front of them.

The simulator (sim/) answers these same command lines when HARNESS_SIM=true.
"""
from __future__ import annotations

import json
import logging
from typing import Sequence

from packaging.version import Version

from harness.errors import HarnessError
from harness.hosts.nodes import Node
from harness.run.cases import CaseContext
from harness.servers.server import (AnyOf, HttpOk, OwnsPort, PostNot503, Server,
                                    app_startup_ready, log_line, offline_env, router_ready,
                                    sglang_ready)
from harness.vllm_version import parse_version, uses_connector_proxy

log = logging.getLogger(__name__)

ROUTER_PORT = 8000
ANY_ADDRESS = "0.0.0.0"   # the router and the proxy listen on every address of their host


def front_address(ctx: CaseContext) -> str:
    """Where the router or proxy listens: every address of its host (SPEC §7). A simulated
    cluster keeps it, and the router's metrics, on its local address instead, so several
    simulated clusters share one machine on different loopback addresses."""
    return ctx.local.address if ctx.settings.harness_sim else ANY_ADDRESS


# --- SGLang ------------------------------------------------------------------------------------
def sglang_server(ctx: CaseContext, name: str, node: Node, model: str, port: int,
                  args: Sequence[str], log_name: str, *, encoder_only: bool = False) -> Server:
    """`python3 -m sglang.launch_server` on `node`, bound to the node's address."""
    s = ctx.settings
    address = node.address
    argv = ["python3", "-m", "sglang.launch_server", "--model-path", model,
            "--host", address, "--port", str(port), *args]
    ready = (app_startup_ready if encoder_only else sglang_ready)(
        s.timeout_server_ready_s, s.timeout_health_s)
    env = {**offline_env(node, model), **ctx.sim_env(node, name)}
    return ctx.server(name, node, argv, log=ctx.model_logs(node, model) / log_name, ready=ready,
                      address=address, port=port, env=env, pythonpath=ctx.pythonpath(node))


def sglang_router(ctx: CaseContext, model: str, prefill: Server, decode: Server) -> Server:
    """The real sglang-router in PD mode on the local node, listening on 0.0.0.0:8000."""
    node, address = ctx.local, front_address(ctx)
    argv = ["python3", "-m", "sglang_router.launch_router", "--pd-disaggregation",
            "--prefill", prefill.url(), "--decode", decode.url(),
            "--host", address, "--port", str(ROUTER_PORT)]
    if ctx.settings.harness_sim:
        argv += ["--prometheus-host", address]
        # the simulator's launcher applies router:* faults, then runs this same real router
        argv[1:3] = ["-m", "harness_sim.router"]
    return ctx.server("router", node, argv, log=ctx.model_logs(node, model) / "load_balancer.log",
                      ready=router_ready(2, ctx.settings.timeout_router_s),
                      address=address, port=ROUTER_PORT, env=ctx.sim_env(node, "router"),
                      pythonpath=ctx.pythonpath(node))


# --- vLLM --------------------------------------------------------------------------------------
PROXY_PORT = 8000
CHAT_ROUTE = "/v1/chat/completions"
# Where vLLM images have kept the Mooncake connector proxy, under $VLLM_WORKSPACE.
CONNECTOR_PROXY_PATHS = (
    "examples/disaggregated/mooncake_connector/mooncake_connector_proxy.py",
    "examples/online_serving/disaggregated_serving/mooncake_connector/mooncake_connector_proxy.py",
)
CONNECTOR_PROXY_READY = "All prefiller instances are ready."
OWN_PROXY = "payloads/vllm_proxy/disagg_proxy.py"


VERSION_MARK = "vllm.__version__="


def vllm_version(ctx: CaseContext, node: Node) -> Version:
    """The vLLM version in the node's Python, from the one line it prints on stdout (importing
    vLLM logs to stderr, which a node's exec mixes in); a failed read is an error."""
    done = node.exec(["python3", "-c", f"import vllm; print({VERSION_MARK!r} + vllm.__version__)"],
                     env=ctx.sim_env(node), pythonpath=ctx.pythonpath(node), timeout=120,
                     check=False)
    if not done.ok:
        raise HarnessError("cannot read the vLLM version in the container (import vllm "
                           f"failed with status {done.exit_code})", host=node.name,
                           log_tail=done.output[-2000:])
    return parse_version(version_line(done.output))


def version_line(output: str) -> str:
    """What follows VERSION_MARK in `output` (the version print), "" when it is not there."""
    marked = [line.split(VERSION_MARK, 1)[1] for line in output.splitlines()
              if line.startswith(VERSION_MARK)]
    return marked[-1] if marked else ""


def vllm_server(ctx: CaseContext, name: str, node: Node, model: str, port: int, role: str,
                log_name: str) -> Server:
    """vLLM's OpenAI server with the MooncakeConnector in `role` (kv_producer/kv_consumer)."""
    s = ctx.settings
    kv_config = json.dumps({"kv_connector": "MooncakeConnector", "kv_role": role},
                           separators=(",", ":"))
    argv = ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--host", node.address, "--port", str(port), "--tensor-parallel-size", "2",
            "--max-model-len", "32768", "--gpu-memory-utilization", "0.85",
            "--no-enable-prefix-caching", "--kv-transfer-config", kv_config]
    env = {"CUDA_VISIBLE_DEVICES": "6,7", **offline_env(node, model), **ctx.sim_env(node, name)}
    return ctx.server(name, node, argv, log=ctx.model_logs(node, model) / log_name,
                      ready=app_startup_ready(s.timeout_server_ready_s, s.timeout_health_s),
                      address=node.address, port=port, env=env,
                      pythonpath=ctx.pythonpath(node))


def vllm_proxy(ctx: CaseContext, model: str, version: Version, prefill: Server,
               decode: Server) -> Server:
    """The proxy the vLLM version picks, on the local node, listening on 0.0.0.0:8000."""
    node, timeout_s, address = ctx.local, ctx.settings.timeout_proxy_s, front_address(ctx)
    route = ["--prefill", prefill.url(), "--decode", decode.url(), "--host", address,
             "--port", str(PROXY_PORT)]
    if uses_connector_proxy(version):
        script = connector_proxy_path(ctx, node)
        # The line may never reach proxy.log (the older copy logs it through a logger with no
        # handler); both copies answer 503 on the chat route until their prefillers are known.
        # An answer counts only from the proxy itself, not from a leftover on its port.
        ready = [AnyOf((log_line(CONNECTOR_PROXY_READY, timeout_s),
                        PostNot503(CHAT_ROUTE, timeout_s)), timeout_s), OwnsPort(timeout_s)]
    else:
        script = str(node.layout.root / OWN_PROXY)
        ready = [log_line("Application startup complete.", timeout_s),
                 HttpOk("/health", timeout_s)]
    argv = ["python3", "-u", script, *route]
    if ctx.settings.harness_sim and script.endswith(OWN_PROXY):  # proxy:* faults, real proxy
        argv[2:2] = ["-m", "harness_sim.proxy_launcher"]
    return ctx.server("proxy", node, argv, log=ctx.model_logs(node, model) / "proxy.log",
                      ready=ready, address=address, port=PROXY_PORT,
                      env=ctx.sim_env(node, "proxy"), pythonpath=ctx.pythonpath(node))


def connector_proxy_path(ctx: CaseContext, node: Node) -> str:
    """vLLM's `mooncake_connector_proxy.py` in the image, wherever this version keeps it."""
    workspace = ctx.vllm_workspace(node)
    candidates = [f"{workspace}/{path}" for path in CONNECTOR_PROXY_PATHS]
    for path in candidates:
        if node.exec(["test", "-f", path], check=False, timeout=30).ok:
            return path
    raise HarnessError("the image's mooncake_connector_proxy.py is not where vLLM keeps it: "
                       + ", ".join(candidates), host=node.name,
                       hint="set VLLM_WORKSPACE to the folder holding vLLM's examples/")
