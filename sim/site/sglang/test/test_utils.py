"""SIMULATOR -- not SGLang. The harness's imitation of `sglang.test.test_utils`.

Only the names that the harness's pytest payloads (payloads/) and the simulated SGLang test
tree (sim/workspace/) import are here, with the real names and call signatures, so the same
payload files run against real SGLang images and against the simulator (SPEC section 9).
Servers are started as `python -m sglang.launch_server ...`, which on the simulated
PYTHONPATH is the harness's simulated server.

Differences from the real module, on purpose:
- no torch/numpy; servers are started with this interpreter (sys.executable) and in their own
  session, so a stop can signal the whole group;
- readiness is polled every 0.1 s on /health (the real one polls /health_generate every 10 s);
- DEFAULT_URL_FOR_TEST is computed as SGLang does, then moved up to the next port whose PD
  companions (+100 prefill, +200 decode, +500 bootstrap) are free on this machine, because
  the test machine is shared;
- launch timeouts are short (TIMEOUT_SERVER_READY_S, default 60 s).

Fault injection (component `payload`, HARNESS_SIM_FAULTS), played where a real test run
would go wrong, so the payload's own checks decide:
- `crash`: importing this module prints one line and raises, so every payload's pytest run
  fails (non-zero exit) as a crashed test run would;
- `hang`: importing this module never returns (until the harness stops the payload at
  TIMEOUT_CASE_S);
- `die-after-ready`, `wrong-answer`, `http-500`, `gpu-leak`: the servers this module starts
  play them (they run with HARNESS_SIM_COMPONENT=payload), so e.g. a wrong answer fails the
  payload's accuracy check and a leak fails the host reset after the case.
"""
from __future__ import annotations

import os
import random
import shlex
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

from harness_sim import faults as _faults

from sglang.srt.utils import is_port_available, kill_process_tree

_CRASH_MESSAGE = ("HARNESS_SIM: injected fault payload:crash (HARNESS_SIM_FAULTS) -- the "
                  "simulated sglang.test.test_utils refuses to load, so this payload fails")
_PAYLOAD_FAULTS = _faults.active_faults("payload")
if "crash" in _PAYLOAD_FAULTS:
    _faults.played("payload", "crash", "sglang.test.test_utils refuses to load")
    print(_CRASH_MESSAGE, file=sys.stderr, flush=True)
    # An exception, not SystemExit: pytest reports it as a collection error and exits non-zero.
    raise RuntimeError(_CRASH_MESSAGE)
if "hang" in _PAYLOAD_FAULTS:
    _faults.played("payload", "hang", "sglang.test.test_utils never finishes loading")
    while True:  # SIGTERM from the harness's stop ends the process (default action)
        time.sleep(3600)


def _server_env(env: dict | None) -> dict:
    """The environment of a server this module starts: the payload's faults that a server
    plays (HARNESS_SIM_COMPONENT=payload), and no others (a server never plays crash/hang
    for the payload: those are the payload's own, played above)."""
    env = dict(os.environ if env is None else env)
    served = [f for f in _faults.PAYLOAD_SERVER_FAULTS if f in _PAYLOAD_FAULTS]
    if served:
        env["HARNESS_SIM_COMPONENT"] = "payload"
        env["HARNESS_SIM_FAULTS"] = ",".join(f"payload:{f}" for f in served)
    return env

# The model constants SGLang's tests use (values as in SGLang's test_utils).
DEFAULT_MODEL_NAME_FOR_TEST = "meta-llama/Llama-3.1-8B-Instruct"
DEFAULT_SMALL_MODEL_NAME_FOR_TEST = "meta-llama/Llama-3.2-1B-Instruct"
DEFAULT_MLA_MODEL_NAME_FOR_TEST = "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct"
DEFAULT_MODEL_NAME_FOR_TEST_MLA = "lmsys/sglang-ci-dsv3-test"
DEFAULT_HYBRID_GDN_SMALL_MODEL_NAME_FOR_TEST = "Qwen/Qwen3.5-4B"

DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH = float(os.environ.get("TIMEOUT_SERVER_READY_S", "60"))


def _bool_env(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("true", "1", "yes", "y")


def is_in_ci() -> bool:
    """Whether SGLang's tests consider themselves in CI (SGLANG_IS_IN_CI)."""
    return _bool_env("SGLANG_IS_IN_CI")


def _default_test_port() -> int:
    first_gpu = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0")[0] or 0)
    runner = 10000 + first_gpu * 2000 if is_in_ci() else 20000 + first_gpu * 1000
    port = runner + 1000
    # Simulator only: skip ports in use on this (shared) machine, with their PD companions,
    # looked at in a random order so that payloads starting at once rarely pick the same.
    for candidate in random.sample(range(port, port + 500), 500):
        if all(is_port_available(candidate + delta) for delta in (0, 100, 200, 500)):
            return candidate
    return port


DEFAULT_URL_FOR_TEST = f"http://127.0.0.1:{_default_test_port()}"


class CustomTestCase(unittest.TestCase):
    """SGLang's base TestCase (the real one retries failed tests in CI; this one does not)."""


def find_available_port(base_port: int) -> int:
    port = base_port + random.randint(100, 1000)
    for _ in range(2000):
        if is_port_available(port):
            return port
        port = port + 42 if port < 60000 else port - 43
    raise RuntimeError(f"no free port found near {base_port}")


def try_cached_model(model_repo: str) -> str:
    """The model's folder under DEFAULT_MODEL_CACHE_DIR when present, else the repo id."""
    cache_dir = os.environ.get("DEFAULT_MODEL_CACHE_DIR")
    if cache_dir and model_repo and os.path.isdir(os.path.join(cache_dir, model_repo)):
        return os.path.abspath(os.path.join(cache_dir, model_repo))
    return model_repo


def _host_port(base_url: str) -> tuple[str, str]:
    _, host, port = base_url.split(":")
    return host[2:], port.split("/")[0]


def _server_command(model: str, base_url: str, other_args, api_key: str | None) -> list[str]:
    host, port = _host_port(base_url)
    command = [sys.executable, "-m", "sglang.launch_server", "--model-path", model,
               *[str(x) for x in (other_args or [])], "--host", host, "--port", port]
    if api_key:
        command += ["--api-key", api_key]
    return command


def _spawn(command: list[str], env: dict | None, return_stdout_stderr=None) -> subprocess.Popen:
    env = _server_env(env)
    if not return_stdout_stderr:
        return subprocess.Popen(command, env=env, start_new_session=True)
    proc = subprocess.Popen(command, env=env, start_new_session=True, text=True, bufsize=1,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def _copy(src, sinks):
        for line in iter(src.readline, ""):
            for sink in sinks:
                sink.write(line)
                sink.flush()
        src.close()

    for src, sinks in ((proc.stdout, [return_stdout_stderr[0], sys.stdout]),
                       (proc.stderr, [return_stdout_stderr[1], sys.stderr])):
        threading.Thread(target=_copy, args=(src, sinks), daemon=True).start()
    return proc


# Test servers are on loopback: a proxy from the environment must never see this traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_ok(url: str, api_key: str | None = None, timeout: float = 2.0) -> bool:
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_for_http_ready(url: str, timeout: float, process: subprocess.Popen | None = None,
                        api_key: str | None = None) -> None:
    """Poll `url` until it answers 200; fail at once when `process` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Server process exited with code {process.returncode} "
                            f"while waiting for {url}. Check server logs for errors.")
        if _http_ok(url, api_key):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")
        time.sleep(0.1)


def popen_launch_server(model: str, base_url: str, timeout: float, api_key: str | None = None,
                        other_args=None, env: dict | None = None,
                        return_stdout_stderr: tuple | None = None, device: str = "auto",
                        pd_separated: bool = False, num_replicas: int | None = None):
    """Start a (simulated) server and wait until its /health answers 200."""
    command = _server_command(model, base_url, other_args, api_key)
    print(f"command={shlex.join(command)}", flush=True)
    process = _spawn(command, env, return_stdout_stderr)
    try:
        wait_for_http_ready(f"{base_url}/health", timeout, process, api_key)
    except BaseException:
        kill_process_tree(process.pid)
        raise
    return process


def popen_launch_pd_server(model: str, base_url: str, timeout: float,
                           api_key: str | None = None, other_args=(),
                           env: dict | None = None, return_stdout_stderr=None):
    """Start a (simulated) PD server without waiting; the caller waits for /health."""
    command = _server_command(model, base_url, other_args, api_key)
    print(f"command={shlex.join(command)}", flush=True)
    return _spawn(command, env, return_stdout_stderr)


def popen_with_error_check(command: list[str], allow_exit: bool = False) -> subprocess.Popen:
    """Start `command` (e.g. the router); report on stderr if it exits when it should not.

    An exit by a signal is the test stopping it, not an error, so it is not reported.
    """
    process = subprocess.Popen(command, start_new_session=True)

    def _watch():
        process.wait()
        if process.returncode >= 0 and (not allow_exit or process.returncode != 0):
            print(f"{command} exited with code {process.returncode}", file=sys.stderr,
                  flush=True)

    threading.Thread(target=_watch, daemon=True).start()
    return process


def terminate_and_kill_process_tree(process, timeout: float = 10.0) -> None:
    if process is not None:
        kill_process_tree(process.pid, wait_timeout=timeout)
