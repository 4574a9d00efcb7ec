"""`python3 -m sglang.launch_server ...` under HARNESS_SIM: the simulated server's life.

Start-up, in order: say what it is, read the knobs (a bad one -> exit 2), wait
HARNESS_SIM_STARTUP_S (the "model load"), apply the start-up faults, bind the bootstrap port
(prefill) and the HTTP port, check the encoder (language-only prefill), print the ready
lines, serve until SIGTERM/SIGINT, then close the sockets and exit 0.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping

from harness_sim import TOKENIZER_DIR, faults, gpu, hub, kv_transfer, mooncake
from harness_sim.console import say
from harness_sim.engine import Engine, EngineServer
from harness_sim import handoff, hicache
from harness_sim.serving import (
    TAG,
    Binding,
    Stopper,
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
from harness_sim.sglang_args import ServerArgs, parse_server_args
from harness_sim.wiring import BootstrapServer, KvLedger, wait_for_encoder

STARTUP_ENV = "HARNESS_SIM_STARTUP_S"
MODEL_DIR_ENV = "HARNESS_SIM_MODEL_DIR"
ENCODER_WAIT_ENV = "HARNESS_SIM_ENCODER_WAIT_S"
DEFAULT_STARTUP_S = 0.5
DEFAULT_ENCODER_WAIT_S = 60.0
READY_LINE = "The server is fired up and ready to roll!"
STARTUP_COMPLETE_LINE = "INFO:     Application startup complete."


def seconds_knob(environ: Mapping[str, str], name: str, default: float) -> float:
    """A non-negative number of seconds from the environment; anything else is a ValueError."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad {name} {raw!r}: expected a number of seconds >= 0 "
                         f"(default {default})")
    return value


def reported_model_path(args: ServerArgs, environ: Mapping[str, str]) -> str:
    """HARNESS_SIM_MODEL_DIR (`auto` = the bundled tokenizer folder), else --model-path."""
    chosen = environ.get(MODEL_DIR_ENV, "").strip()
    if chosen == "auto":
        return str(TOKENIZER_DIR)
    return chosen or args.model_path


def _bindings(engine: Engine) -> list[Binding]:
    """The bootstrap port (prefill), then the HTTP port."""
    args = engine.args
    bindings: list[Binding] = []
    if args.disaggregation_mode == "prefill":
        bindings.append((f"bootstrap port {args.host}:{args.disaggregation_bootstrap_port}",
                         lambda: BootstrapServer(args.host, args.disaggregation_bootstrap_port,
                                                 args.port, engine.model_path, engine.kv,
                                                 engine.kv_sender)))
    bindings.append((f"HTTP port {args.host}:{args.port}", lambda: EngineServer(engine)))
    return bindings


def _print_ready(engine: Engine, server: EngineServer) -> None:
    say_uvicorn_starting()
    say(STARTUP_COMPLETE_LINE)
    say(f"INFO:     Uvicorn running on {server.url} (Press CTRL+C to quit)")
    if not engine.args.encoder_only:
        say(READY_LINE)


def run(argv: list[str], environ: Mapping[str, str]) -> int:
    """The whole life of one simulated server; returns its exit status."""
    stopper = announce("sglang.launch_server", "SGLang", argv)
    args = parse_server_args(argv)
    say_ignored(args.unknown)
    try:
        startup_s = seconds_knob(environ, STARTUP_ENV, DEFAULT_STARTUP_S)
        encoder_wait_s = seconds_knob(environ, ENCODER_WAIT_ENV, DEFAULT_ENCODER_WAIT_S)
        component = faults.own_component(environ)
        active = faults.active_faults(component, environ=environ)
        mooncake.mode_of(environ)
        kv_transfer.bytes_per_token(environ)
        gpu.hold(args, active, component, environ)  # simulated GPU memory, released at exit
    except ValueError as exc:
        return usage_error(exc)
    refusal = hub.offline_refusal(args.model_path, environ)
    if refusal:
        say(f"{TAG} error: {refusal}")
        return faults.EXIT_CRASH
    engine = Engine(args=args, model_path=reported_model_path(args, environ),
                    faults=active, component=component,
                    kv=KvLedger(always_bad="wrong-answer" in active,
                                per_request=bool(args.language_only and args.encoder_urls)))
    say(f"{TAG} role={args.role} component={component or '-'} "
        f"faults={','.join(sorted(active)) or '-'} model_path={engine.model_path} "
        f"startup={startup_s}s hub={'offline' if hub.offline(environ) else 'online'}")

    stopped = load_model(stopper, startup_s, active, component)
    if stopped is not None:
        return stopped
    _start_handoff(engine, environ)
    return _run_bound(engine, stopper, encoder_wait_s)


def _start_handoff(engine: Engine, environ: Mapping[str, str]) -> None:
    """A server that hands KV or embeddings over starts its Mooncake TransferEngine (or says
    why it has none)."""
    args = engine.args
    send = args.disaggregation_mode == "prefill" or args.encoder_only
    # a decode receives KV, a language-only prefill its encoder's embeddings
    receive = args.disaggregation_mode == "decode" or bool(args.language_only
                                                           and args.encoder_urls)
    if send or receive:
        engine.kv_sender, engine.kv_receiver = handoff.start(
            environ, args.host, f"{args.host}:{args.port}", send=send, receive=receive)
    if args.hicache_storage_backend == "mooncake":
        engine.hicache, why = hicache.start(environ, args.host)
        if why:
            say(f"{TAG} {why}")
            if mooncake.mode_of(environ) == "required":
                engine.hicache_missing = why


def _run_bound(engine: Engine, stopper: Stopper, encoder_wait_s: float) -> int:
    args = engine.args
    if args.language_only and args.encoder_urls:
        say(f"{TAG} waiting up to {encoder_wait_s:g}s for an encoder: "
            f"{' '.join(args.encoder_urls)}")
        engine.encoder_url = wait_for_encoder(args.encoder_urls, encoder_wait_s, stopper)
        if stopper.is_set():
            return stopper.farewell()
        if engine.encoder_url is None:
            say(f"{TAG} error: no encoder answered GET /health within {encoder_wait_s:g}s at "
                f"{' '.join(args.encoder_urls)}")
            return faults.EXIT_CRASH
        say(f"{TAG} encoder {engine.encoder_url} is live")
    servers = bind(_bindings(engine))
    if servers is None:
        return faults.EXIT_CRASH
    with serving(servers):
        if args.disaggregation_mode == "prefill":
            say(f"{TAG} prefill bootstrap server listening on "
                f"{args.host}:{servers[0].server_port}")
        engine_server = servers[-1]
        assert isinstance(engine_server, EngineServer)
        if "die-after-ready" in engine.faults:
            return die_once_ready(servers, lambda: _print_ready(engine, engine_server),
                                  engine.component)
        _print_ready(engine, engine_server)
        return until_stopped(stopper)


def main(argv: list[str] | None = None) -> int:
    try:
        code = run(sys.argv[1:] if argv is None else argv, os.environ)
    finally:
        gpu.release()
    if hicache.store_joined():
        # SGLang's launch_server ends by SIGKILLing its process tree (kill_process_tree in a
        # `finally`): the scheduler processes that hold its Mooncake store client are never
        # torn down. That teardown joins two once-a-second threads of the store, one after
        # the other (1-2 s at every stop), so the simulator leaves it out as SGLang does.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
