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
import shlex
import sys
import time
from collections.abc import Mapping

from harness_sim import TOKENIZER_DIR, faults
from harness_sim.console import say
from harness_sim.sglang_main import (
    DIE_AFTER_READY_S,
    MODEL_DIR_ENV,
    STARTUP_COMPLETE_LINE,
    STARTUP_ENV,
    _close,
    _serve,
    _Stopper,
    seconds_knob,
)
from harness_sim.vllm_args import VllmArgs, parse_vllm_args
from harness_sim.vllm_engine import DEFAULT_BOOTSTRAP_PORT, BootstrapServer, VllmEngine, VllmServer
from harness_sim.wiring import QuietHTTPServer

VERSION_ENV = "HARNESS_SIM_VLLM_VERSION"
DEFAULT_VERSION = "0.17.0"
BOOTSTRAP_PORT_ENV = "VLLM_MOONCAKE_BOOTSTRAP_PORT"   # vLLM's own variable, honoured as vLLM does
TAG = "[harness-sim]"
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


def gpu_hook(event: str, engine: VllmEngine | None) -> None:
    """Hook point for the simulated GPU memory source (SPEC section 9, "GPU"), called with
    `start` (knobs read, before the "model load": where a real server takes GPU memory),
    `ready` (serving) and `stopped` (on every exit path; `engine` is None when the server
    stopped before it had one). Nothing happens here yet: the GPU memory source
    (harness_sim.gpu) is written for SGLang's arguments; vLLM's GPUs would come from
    CUDA_VISIBLE_DEVICES and --tensor-parallel-size."""


def _log(message: str, source: str = "api_server.py") -> None:
    """A line in vLLM's log shape: `INFO 05-01 12:00:00 [api_server.py] message`."""
    say(f"INFO {time.strftime('%m-%d %H:%M:%S')} [{source}] {message}")


def _bind(engine: VllmEngine, bootstrap_port: int) -> list[QuietHTTPServer]:
    """Bind the bootstrap port (producers) and the HTTP port; OSError names the port."""
    args = engine.args
    servers: list[QuietHTTPServer] = []
    try:
        if engine.is_producer:
            where = f"Mooncake bootstrap port {args.host}:{bootstrap_port}"
            bootstrap = BootstrapServer(args.host, bootstrap_port, engine)
            engine.bootstrap_port = bootstrap.server_port
            servers.append(bootstrap)
        where = f"HTTP port {args.host}:{args.port}"
        servers.append(VllmServer(engine))
    except OSError as exc:
        _close(servers, serving=False)
        raise OSError(f"cannot bind {where}: {exc.strerror or exc}") from None
    return servers


def _print_ready(engine: VllmEngine, server: VllmServer) -> None:
    if engine.bootstrap_port is not None:
        _log(f"Mooncake bootstrap server listening on {engine.args.host}:{engine.bootstrap_port} "
             f"(engine_id {engine.engine_id})", "mooncake_connector.py")
    _log(f"Starting vLLM API server 0 on {server.url}")
    _log("Available routes are: /health, /ping, /version, /v1/models, /v1/chat/completions, "
         "/v1/completions", "launcher.py")
    say(f"INFO:     Started server process [{os.getpid()}]")
    say("INFO:     Waiting for application startup.")
    say(STARTUP_COMPLETE_LINE)


def run(argv: list[str], environ: Mapping[str, str]) -> int:
    """The whole life of one simulated vLLM server; returns its exit status."""
    stopper = _Stopper()
    stopper.install()  # first: a stop at any moment of start-up must still be a clean exit 0
    say(f"{TAG} SIMULATED vllm.entrypoints.openai.api_server (the Mooncake E2E harness's "
        f"simulator, not vLLM) pid={os.getpid()} args: {shlex.join(argv)}")
    args = parse_vllm_args(argv)
    if args.unknown:
        say(f"{TAG} ignoring arguments the simulator does not use: {shlex.join(args.unknown)}")
    try:
        startup_s = seconds_knob(environ, STARTUP_ENV, 0.5)
        version = version_knob(environ)
        bootstrap_port = bootstrap_port_knob(environ)
        component = faults.own_component(environ)
        active = faults.active_faults(component, environ=environ)
    except ValueError as exc:
        say(f"{TAG} error: {exc}")
        return faults.EXIT_USAGE
    engine = VllmEngine(args=args, model_path=reported_model_path(args, environ),
                        version=version, faults=active, component=component)
    if args.kv_transfer_config and args.kv_transfer_config.get("engine_id"):
        engine.engine_id = str(args.kv_transfer_config["engine_id"])
    say(f"{TAG} role={args.role} kv_role={args.kv_role or '-'} component={component or '-'} "
        f"faults={','.join(sorted(active)) or '-'} model_path={engine.model_path} "
        f"version={version} startup={startup_s}s "
        f"CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES', '-')}")
    gpu_hook("start", engine)
    _log(f"vLLM API server version {version}")
    _log(f"non-default args: {args.non_default()}", "utils.py")

    if stopper.wait(startup_s):  # the "model load"; a stop during it is still a clean exit
        return stopper.farewell()
    if "crash" in active:
        say(f"{TAG} RuntimeError: simulated fault crash ({component}:crash): exiting with "
            f"status {faults.EXIT_CRASH} before ready")
        return faults.EXIT_CRASH
    if "hang" in active:
        say(f"{TAG} simulated fault hang ({component}:hang): never becoming ready")
        stopper.wait()
        return stopper.farewell()
    try:
        servers = _bind(engine, bootstrap_port)
    except OSError as exc:
        say(f"{TAG} error: {exc} (is another server already running there?)")
        return faults.EXIT_CRASH
    _serve(servers)
    try:
        http_server = servers[-1]
        assert isinstance(http_server, VllmServer)
        _print_ready(engine, http_server)
        say(f"INFO:     Uvicorn running on {http_server.url} (Press CTRL+C to quit)")
        gpu_hook("ready", engine)
        if "die-after-ready" in active:
            if stopper.wait(DIE_AFTER_READY_S):
                return stopper.farewell()
            say(f"{TAG} simulated fault die-after-ready: exiting with status "
                f"{faults.EXIT_DIED_AFTER_READY}")
            return faults.EXIT_DIED_AFTER_READY
        stopper.wait()
        return stopper.farewell()
    finally:
        _close(servers, serving=True)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv, os.environ)
    finally:
        gpu_hook("stopped", None)
