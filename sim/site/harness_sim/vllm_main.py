"""`python3 -m vllm.entrypoints.openai.api_server ...` under HARNESS_SIM: the server's life.

Start-up, in order: say what it is, read the arguments and knobs (bad -> exit 2), wait
HARNESS_SIM_STARTUP_S (the "model load"), apply the start-up faults, bind the Mooncake
bootstrap port (kv_producer / kv_both) and the HTTP port, print vLLM's and uvicorn's start-up
lines ending with `INFO:     Application startup complete.`, serve until SIGTERM/SIGINT, then
close the sockets and exit 0. Exit statuses are the SGLang simulator's (sim/README.md).
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping

from harness_sim import TOKENIZER_DIR, faults, gpu, handoff, kv_transfer, mooncake
from harness_sim.console import say
from harness_sim.serving import (
    TAG,
    Binding,
    announce,
    bind,
    die_once_ready,
    load_model,
    say_ignored,
    say_uvicorn_starting,
    serving,
    until_stopped,
    usage_error,
)
from harness_sim.sglang_main import MODEL_DIR_ENV, STARTUP_COMPLETE_LINE, STARTUP_ENV, seconds_knob
from harness_sim.vllm_args import VllmArgs, parse_vllm_args
from harness_sim.vllm_engine import (DEFAULT_BOOTSTRAP_PORT, BootstrapServer, VllmEngine,
                                     VllmServer, advertised_host)

VERSION_ENV = "HARNESS_SIM_VLLM_VERSION"
DEFAULT_VERSION = "0.17.0"
BOOTSTRAP_PORT_ENV = "VLLM_MOONCAKE_BOOTSTRAP_PORT"   # vLLM's own variable, honoured as vLLM does
_VERSION = re.compile(r"\d+(\.\d+)+([.+-]?[0-9A-Za-z][0-9A-Za-z.+-]*)?")


def version_knob(environ: Mapping[str, str]) -> str:
    """HARNESS_SIM_VLLM_VERSION (default 0.17.0); something that is not a version -> ValueError."""
    raw = environ.get(VERSION_ENV, "").strip()
    if not raw:
        return DEFAULT_VERSION
    if not _VERSION.fullmatch(raw):
        raise ValueError(f"bad {VERSION_ENV} {raw!r}: expected a version such as 0.15.1 or "
                         f"0.17.0rc1 (default {DEFAULT_VERSION})")
    return raw


def bootstrap_port_knob(environ: Mapping[str, str]) -> int:
    """VLLM_MOONCAKE_BOOTSTRAP_PORT (default 8998; 0 = any free port, logged)."""
    raw = environ.get(BOOTSTRAP_PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_BOOTSTRAP_PORT
    if not raw.isdigit() or int(raw) > 65535:
        raise ValueError(f"bad {BOOTSTRAP_PORT_ENV} {raw!r}: expected a port number "
                         f"(default {DEFAULT_BOOTSTRAP_PORT})")
    return int(raw)


def reported_model_path(args: VllmArgs, environ: Mapping[str, str]) -> str:
    """HARNESS_SIM_MODEL_DIR (`auto` = the bundled tokenizer folder), else --model."""
    chosen = environ.get(MODEL_DIR_ENV, "").strip()
    if chosen == "auto":
        return str(TOKENIZER_DIR)
    return chosen or args.model


def visible_gpus(environ: Mapping[str, str], tp_size: int) -> list[int]:
    """The GPUs a vLLM server takes: the first --tensor-parallel-size of CUDA_VISIBLE_DEVICES
    (all of 0.. when it is unset). A value that is not a list of numbers is a ValueError."""
    raw = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not raw:
        return list(range(max(1, tp_size)))
    try:
        listed = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"bad CUDA_VISIBLE_DEVICES {raw!r}: expected GPU numbers such as 6,7"
                         ) from None
    return listed[:max(1, tp_size)]


def _log(message: str, source: str = "api_server.py") -> None:
    """A line in vLLM's log shape: `INFO 05-01 12:00:00 [api_server.py] message`."""
    say(f"INFO {time.strftime('%m-%d %H:%M:%S')} [{source}] {message}")


def _bindings(engine: VllmEngine, bootstrap_port: int) -> list[Binding]:
    """The bootstrap port (producers), then the HTTP port."""
    args = engine.args
    bindings: list[Binding] = []
    if engine.is_producer:
        bindings.append((f"Mooncake bootstrap port {args.host}:{bootstrap_port}",
                         lambda: BootstrapServer(args.host, bootstrap_port, engine)))
    bindings.append((f"HTTP port {args.host}:{args.port}", lambda: VllmServer(engine)))
    return bindings


def _print_ready(engine: VllmEngine, server: VllmServer) -> None:
    if engine.bootstrap_port is not None:
        _log(f"Mooncake bootstrap server listening on {engine.args.host}:{engine.bootstrap_port} "
             f"(engine_id {engine.engine_id})", "mooncake_connector.py")
    _log(f"Starting vLLM API server 0 on {server.url}")
    _log("Available routes are: /health, /ping, /version, /v1/models, /v1/chat/completions, "
         "/v1/completions", "launcher.py")
    say_uvicorn_starting()
    say(STARTUP_COMPLETE_LINE)


def run(argv: list[str], environ: Mapping[str, str]) -> int:
    """The whole life of one simulated vLLM server; returns its exit status."""
    stopper = announce("vllm.entrypoints.openai.api_server", "vLLM", argv)
    args = parse_vllm_args(argv)
    say_ignored(args.unknown)
    try:
        startup_s = seconds_knob(environ, STARTUP_ENV, 0.5)
        version = version_knob(environ)
        bootstrap_port = bootstrap_port_knob(environ)
        mooncake.mode_of(environ)
        kv_transfer.bytes_per_token(environ)
        component = faults.own_component(environ)
        active = faults.active_faults(component, environ=environ)
        # simulated GPU memory, taken before the "model load" as vLLM does; released at exit
        gpu.hold(args, active, component, environ,
                 gpus=visible_gpus(environ, args.tensor_parallel_size))
    except ValueError as exc:
        return usage_error(exc)
    engine = VllmEngine(args=args, model_path=reported_model_path(args, environ),
                        version=version, faults=active, component=component)
    if args.kv_transfer_config and args.kv_transfer_config.get("engine_id"):
        engine.engine_id = str(args.kv_transfer_config["engine_id"])
    say(f"{TAG} role={args.role} kv_role={args.kv_role or '-'} component={component or '-'} "
        f"faults={','.join(sorted(active)) or '-'} model_path={engine.model_path} "
        f"version={version} startup={startup_s}s "
        f"CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES', '-')}")
    _log(f"vLLM API server version {version}")
    _log(f"non-default args: {args.non_default()}", "utils.py")

    stopped = load_model(stopper, startup_s, active, component)
    if stopped is not None:
        return stopped
    if args.kv_role is not None:
        host = advertised_host(args.host)
        engine.kv_sender, engine.kv_receiver = handoff.start(
            environ, host, f"{host}:{args.port}", send=engine.is_producer,
            receive=engine.is_consumer)
    servers = bind(_bindings(engine, bootstrap_port))
    if servers is None:
        return faults.EXIT_CRASH
    if engine.is_producer:
        engine.bootstrap_port = servers[0].server_port
    with serving(servers):
        http_server = servers[-1]
        assert isinstance(http_server, VllmServer)
        def print_ready() -> None:
            _print_ready(engine, http_server)
            say(f"INFO:     Uvicorn running on {http_server.url} (Press CTRL+C to quit)")

        if "die-after-ready" in active:
            return die_once_ready(servers, print_ready, component)
        print_ready()
        return until_stopped(stopper)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv, os.environ)
    finally:
        gpu.release()
