"""Faults for real programs the simulator does not imitate: a thin launcher in front of them.

The sglang-router (harness_sim.router) and the project's own vLLM proxy
(harness_sim.proxy_launcher) are real code. When HARNESS_SIM=true the harness starts them
through a launcher that reads HARNESS_SIM_FAULTS for its component and then:

* no fault: says what it runs, then replaces itself (exec, same PID and process group) with
  the real program and the same arguments;
* `crash`: exits 1 before the real program starts (it is never ready);
* `hang`: never starts it, never ready; exits 0 on SIGTERM/SIGINT;
* `die-after-ready`: runs the real program as its child (same process group, so the
  harness's group stop reaches both), holds its output back until the child is ready by the
  program's own signal, kills it, then writes the held lines and exits 3. Holding the ready
  lines until the child is gone means the harness cannot see a ready router that is still
  about to die: the fault always lands between "ready" and the request, as a real crash
  right after start-up would.

Any other fault cannot be played honestly on real code and is refused (exit 2); the harness
refuses it at start already (harness/simknobs.py), this is the backstop.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from harness_sim import faults
from harness_sim.console import say
from harness_sim.serving import TAG, Stopper, startup_fault
from harness_sim.wiring import get_json

POLL_S = 0.01        # readiness is checked this often: the child dies well before anyone else sees
STOP_WAIT_S = 5.0    # how long the child gets to exit on SIGTERM before it is killed

# Given the child's output so far, is the real program ready?
ReadyCheck = Callable[[str], bool]


def option(argv: Sequence[str], name: str, default: str) -> str:
    """The value of `--name V` or `--name=V` in argv (the last one wins), else `default`."""
    value = default
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def local_url(argv: Sequence[str], default_port: str, path: str) -> str:
    """Where the launched server answers on this machine: its `--host` (a wildcard bind is
    reached on 127.0.0.1) and `--port`."""
    host = option(argv, "--host", "127.0.0.1")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{host}:{option(argv, '--port', default_port)}{path}"


def http_ok(url: str) -> bool:
    try:
        status, _ = get_json(url, timeout=0.5)
    except (OSError, ValueError):
        return False
    return status == 200


def launch(component: str, real_argv: list[str], acting: Sequence[str], ready: ReadyCheck,
           what: str) -> int:
    """Apply this component's faults to the real program `real_argv`; returns the exit status
    (it does not return when there is nothing to play: exec)."""
    stopper = Stopper()
    stopper.install()
    try:
        active = faults.active_faults(component)
    except ValueError as exc:
        say(f"{TAG} error: {exc}")
        return faults.EXIT_USAGE
    refused = sorted(active - set(acting))
    if refused:
        say(f"{TAG} error: {', '.join(f'{component}:{f}' for f in refused)} cannot be played on "
            f"{what} (real code); {component} faults that act here: {', '.join(acting)}")
        return faults.EXIT_USAGE
    say(f"{TAG} SIMULATOR fault launcher for {component} (the real {what} runs below) "
        f"faults={','.join(sorted(active)) or '-'} pid={os.getpid()}: {shlex.join(real_argv)}")
    code = startup_fault(active, component, stopper)
    if code is not None:
        return code
    if "die-after-ready" not in active:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp(real_argv[0], real_argv)
    return _die_once_ready(component, real_argv, ready, stopper)


class _HeldOutput:
    """The child's output, read in a thread and held back until `release()`."""

    def __init__(self, stream) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._released = False
        threading.Thread(target=self._read, args=(stream,), daemon=True,
                         name="child-output").start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ""):
            with self._lock:
                if self._released:
                    say(line.rstrip("\n"))
                else:
                    self._lines.append(line.rstrip("\n"))
        stream.close()

    def text(self) -> str:
        with self._lock:
            return "\n".join(self._lines)

    def release(self) -> None:
        with self._lock:
            for line in self._lines:
                say(line)
            self._lines.clear()
            self._released = True


def _die_once_ready(component: str, real_argv: list[str], ready: ReadyCheck,
                    stopper: Stopper) -> int:
    child = subprocess.Popen(real_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, bufsize=1, errors="replace")
    output = _HeldOutput(child.stdout)
    while True:
        if stopper.wait(POLL_S):
            _stop(child)
            output.release()
            return stopper.farewell()
        if child.poll() is not None:  # the real program ended by itself: its status, its words
            time.sleep(0.05)
            output.release()
            say(f"{TAG} the real program exited with status {child.returncode} before it was "
                "ready")
            return child.returncode if child.returncode > 0 else faults.EXIT_CRASH
        if ready(output.text()):
            child.kill()
            child.wait()
            time.sleep(0.05)  # let the reader thread take the child's last lines
            output.release()
            faults.played(component, "die-after-ready",
                          f"killed the real program (pid {child.pid}) once it was ready; "
                          f"exiting with status {faults.EXIT_DIED_AFTER_READY}")
            return faults.EXIT_DIED_AFTER_READY


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
