"""`python3 -m sglang.launch_server ...` under HARNESS_SIM: the simulated server's life.

Start-up, in order: say what it is, read the knobs (a bad one -> exit 2), wait
HARNESS_SIM_STARTUP_S (the "model load"), apply the start-up faults, bind the bootstrap port
(prefill) and the HTTP port, check the encoder (language-only prefill), print the ready
lines, serve until SIGTERM/SIGINT, then close the sockets and exit 0.
"""
from __future__ import annotations

import math
import os
import select
import shlex
import signal
import sys
import threading
from collections.abc import Mapping
from types import FrameType

from harness_sim import TOKENIZER_DIR, faults, gpu
from harness_sim.console import say
from harness_sim.engine import Engine, EngineServer
from harness_sim.sglang_args import ServerArgs, parse_server_args
from harness_sim.wiring import BootstrapServer, QuietHTTPServer, wait_for_encoder

STARTUP_ENV = "HARNESS_SIM_STARTUP_S"
MODEL_DIR_ENV = "HARNESS_SIM_MODEL_DIR"
ENCODER_WAIT_ENV = "HARNESS_SIM_ENCODER_WAIT_S"
DEFAULT_STARTUP_S = 0.5
DEFAULT_ENCODER_WAIT_S = 60.0
DIE_AFTER_READY_S = 0.2
READY_LINE = "The server is fired up and ready to roll!"
STARTUP_COMPLETE_LINE = "INFO:     Application startup complete."
TAG = "[harness-sim]"


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


class _Stopper:
    """SIGTERM/SIGINT -> a self-pipe the main thread waits on.

    The handler takes no lock (setting a threading.Event could deadlock if the signal
    lands while the main thread holds the Event's lock); it only writes one byte. The
    pipe is never drained, so once stopped, every later wait returns at once.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self.signal_name = ""

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        try:
            os.write(self._write, b"x")
        except BlockingIOError:
            pass  # already signalled

    def wait(self, timeout: float | None = None) -> bool:
        """True once stopped; waits at most `timeout` seconds (None: until stopped)."""
        readable, _, _ = select.select([self._read], [], [], timeout)
        return bool(readable)

    def is_set(self) -> bool:
        return self.wait(0)

    def farewell(self) -> int:
        say(f"{TAG} received {self.signal_name or 'a stop request'}, shutting down")
        return faults.EXIT_OK


def _serve(servers: list[QuietHTTPServer]) -> list[threading.Thread]:
    threads = []
    for server in servers:
        # A short poll interval keeps shutdown() fast: a stop must take well under 0.5 s.
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"serve-{server.server_port}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def _close(servers: list[QuietHTTPServer], serving: bool) -> None:
    for server in servers:
        if serving:
            server.shutdown()
        server.server_close()


def _bind(engine: Engine) -> list[QuietHTTPServer]:
    """Bind the bootstrap port (prefill) and the HTTP port; OSError names the port."""
    args = engine.args
    servers: list[QuietHTTPServer] = []
    try:
        if args.disaggregation_mode == "prefill":
            where = f"bootstrap port {args.host}:{args.disaggregation_bootstrap_port}"
            servers.append(BootstrapServer(args.host, args.disaggregation_bootstrap_port,
                                           args.port, engine.model_path))
        where = f"HTTP port {args.host}:{args.port}"
        servers.append(EngineServer(engine))
    except OSError as exc:
        _close(servers, serving=False)
        raise OSError(f"cannot bind {where}: {exc.strerror or exc}") from None
    return servers


def _print_ready(engine: Engine, server: EngineServer) -> None:
    say(f"INFO:     Started server process [{os.getpid()}]")
    say("INFO:     Waiting for application startup.")
    say(STARTUP_COMPLETE_LINE)
    say(f"INFO:     Uvicorn running on {server.url} (Press CTRL+C to quit)")
    if not engine.args.encoder_only:
        say(READY_LINE)


def run(argv: list[str], environ: Mapping[str, str]) -> int:
    """The whole life of one simulated server; returns its exit status."""
    stopper = _Stopper()
    stopper.install()  # first: a stop at any moment of start-up must still be a clean exit 0
    say(f"{TAG} SIMULATED sglang.launch_server (the Mooncake E2E harness's simulator, "
        f"not SGLang) pid={os.getpid()} args: {shlex.join(argv)}")
    args = parse_server_args(argv)
    if args.unknown:
        say(f"{TAG} ignoring arguments the simulator does not use: {shlex.join(args.unknown)}")
    try:
        startup_s = seconds_knob(environ, STARTUP_ENV, DEFAULT_STARTUP_S)
        encoder_wait_s = seconds_knob(environ, ENCODER_WAIT_ENV, DEFAULT_ENCODER_WAIT_S)
        component = faults.own_component(environ)
        active = faults.active_faults(component, environ=environ)
        gpu.hold(args, active, component, environ)  # simulated GPU memory, released at exit
    except ValueError as exc:
        say(f"{TAG} error: {exc}")
        return faults.EXIT_USAGE
    engine = Engine(args=args, model_path=reported_model_path(args, environ),
                    faults=active, component=component)
    say(f"{TAG} role={args.role} component={component or '-'} "
        f"faults={','.join(sorted(active)) or '-'} model_path={engine.model_path} "
        f"startup={startup_s}s")

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
    return _run_bound(engine, stopper, encoder_wait_s)


def _run_bound(engine: Engine, stopper: _Stopper, encoder_wait_s: float) -> int:
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
    try:
        servers = _bind(engine)
    except OSError as exc:
        say(f"{TAG} error: {exc} (is another server already running there?)")
        return faults.EXIT_CRASH
    _serve(servers)
    try:
        if args.disaggregation_mode == "prefill":
            say(f"{TAG} prefill bootstrap server listening on "
                f"{args.host}:{servers[0].server_port}")
        engine_server = servers[-1]
        assert isinstance(engine_server, EngineServer)
        _print_ready(engine, engine_server)
        if "die-after-ready" in engine.faults:
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
        gpu.release()
