"""The life every simulated server shares: stop signals, start-up faults, binding, serving.

sglang_main, vllm_main and vllm_proxy differ in what they bind and print; the order around it
is the same: announce, install the stop handler, apply the start-up faults, bind (a busy port
-> exit 1), serve until SIGTERM/SIGINT (or die after ready), close the sockets.
"""
from __future__ import annotations

import os
import select
import shlex
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from harness_sim import faults
from harness_sim.console import say
from harness_sim.wiring import QuietHTTPServer

TAG = "[harness-sim]"

# (what is bound, for the error line; how to bind it)
Binding = tuple[str, Callable[[], QuietHTTPServer]]


class Stopper:
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


def announce(program: str, imitated: str, argv: list[str]) -> Stopper:
    """Install the stop handler, then say what this is; the first thing a simulator does."""
    stopper = Stopper()
    stopper.install()  # first: a stop at any moment of start-up must still be a clean exit 0
    say(f"{TAG} SIMULATED {program} (the Mooncake E2E harness's simulator, not {imitated}) "
        f"pid={os.getpid()} args: {shlex.join(argv)}")
    return stopper


def say_ignored(unknown: list[str]) -> None:
    if unknown:
        say(f"{TAG} ignoring arguments the simulator does not use: {shlex.join(unknown)}")


def usage_error(exc: ValueError) -> int:
    say(f"{TAG} error: {exc}")
    return faults.EXIT_USAGE


def say_uvicorn_starting() -> None:
    """uvicorn's first two start-up lines; `Application startup complete.` comes later."""
    say(f"INFO:     Started server process [{os.getpid()}]")
    say("INFO:     Waiting for application startup.")


def load_model(stopper: Stopper, startup_s: float, active: set[str], component: str | None
               ) -> int | None:
    """The "model load" (a stop during it is still a clean exit), then the start-up faults.
    An exit status when the server must not go on, else None."""
    if stopper.wait(startup_s):
        return stopper.farewell()
    return startup_fault(active, component, stopper)


def startup_fault(active: set[str], component: str | None, stopper: Stopper) -> int | None:
    """`crash` exits before ready; `hang` never gets ready (until stopped). None: neither."""
    if "crash" in active:
        faults.played(component, "crash", f"exiting with status {faults.EXIT_CRASH} before ready")
        say(f"{TAG} RuntimeError: simulated fault crash ({component}:crash): exiting with "
            f"status {faults.EXIT_CRASH} before ready")
        return faults.EXIT_CRASH
    if "hang" in active:
        faults.played(component, "hang", "never becoming ready")
        say(f"{TAG} simulated fault hang ({component}:hang): never becoming ready")
        stopper.wait()
        return stopper.farewell()
    return None


def close(servers: list[QuietHTTPServer], serving: bool) -> None:
    for server in servers:
        if serving:
            server.shutdown()
        server.server_close()


def bind(bindings: list[Binding]) -> list[QuietHTTPServer] | None:
    """Bind each in order; on a failure, close the ones bound, say which port and return None."""
    servers: list[QuietHTTPServer] = []
    for where, make in bindings:
        try:
            servers.append(make())
        except OSError as exc:
            close(servers, serving=False)
            say(f"{TAG} error: cannot bind {where}: {exc.strerror or exc} "
                "(is another server already running there?)")
            return None
    return servers


@contextmanager
def serving(servers: list[QuietHTTPServer]) -> Iterator[None]:
    """Each server in a thread of its own; shut down and closed on the way out."""
    for server in servers:
        # A short poll interval keeps shutdown() fast: a stop must take well under 0.5 s.
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=f"serve-{server.server_port}", daemon=True).start()
    try:
        yield
    finally:
        close(servers, serving=True)


def die_once_ready(servers: list[QuietHTTPServer], print_ready: Callable[[], None],
                   component: str | None) -> int:
    """`die-after-ready`: the sockets close, then the ready lines are written and the server
    exits 3 at once. Dying before anyone could use it (rather than a moment after) is what
    makes the fault certain to be noticed: a client quick enough to be served in that moment
    would otherwise make the fault do nothing."""
    close(servers, serving=True)
    print_ready()
    faults.played(component, "die-after-ready", "closed its ports once ready; exiting with "
                  f"status {faults.EXIT_DIED_AFTER_READY}")
    say(f"{TAG} simulated fault die-after-ready: exiting with status "
        f"{faults.EXIT_DIED_AFTER_READY}")
    return faults.EXIT_DIED_AFTER_READY


def until_stopped(stopper: Stopper) -> int:
    """Serve until SIGTERM/SIGINT."""
    stopper.wait()
    return stopper.farewell()
