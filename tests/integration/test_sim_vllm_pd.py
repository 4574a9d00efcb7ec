"""The simulated vLLM servers and both vLLM proxies as the harness sees them: real processes.

Prefill (`kv_producer`) on 127.0.0.2 and decode (`kv_consumer`) on 127.0.0.1, free ports,
each process in its own session with its output in a log file that is followed for its
ready line (bounded), always stopped by its PID (process group) afterwards.
"""
from __future__ import annotations

import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.simproc import ROOT, SIM_SITE, LoggedProcess, clean_env, free_port, killed_afterwards

pytestmark = pytest.mark.integration

SIM_PROXY = (ROOT / "sim" / "workspace" / "examples" / "online_serving" /
             "disaggregated_serving" / "mooncake_connector" / "mooncake_connector_proxy.py")
OWN_PROXY = ROOT / "payloads" / "vllm_proxy" / "disagg_proxy.py"
STARTUP_COMPLETE = "Application startup complete."
PREFILLERS_READY = "All prefiller instances are ready."
LOCAL, REMOTE = "127.0.0.1", "127.0.0.2"
NOWHERE = "127.93.17.5"  # a loopback address nothing in these tests listens on
PRODUCER = '{"kv_connector":"MooncakeConnector","kv_role":"kv_producer"}'
CONSUMER = '{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer"}'
MODEL = "Qwen/Qwen3-8B"
# The case's request (SPEC section 7, test_vllm_1p1d_erdma).
CHAT = {"model": MODEL,
        "messages": [{"role": "user", "content": "Where is the capital of France?"}],
        "stream": False, "max_tokens": 200, "temperature": 0}
PARIS = re.compile("paris", re.IGNORECASE)
HTTP = requests.Session()
# A process that exits on SIGTERM must be gone within this: generous for a loaded 2-core
# machine, still far below simproc's 5 s wait, so a process that ignores SIGTERM fails here.
# (How fast it exits is measured by `nox -s bench`, not asserted.)
SIGTERM_EXIT_S = 3.0
HTTP.trust_env = False  # loopback only: never an http_proxy from the environment


class Proc(LoggedProcess):
    """One started process and its log."""

    def __init__(self, log: Path, argv: list[str], env: dict[str, str], sim: bool) -> None:
        full_env = clean_env("HARNESS_SIM", "VLLM_")
        full_env.update({"HARNESS_SIM_STARTUP_S": "0.1", "PYTHONUNBUFFERED": "1"})
        if sim:
            full_env["PYTHONPATH"] = str(SIM_SITE)
        full_env.update(env)
        super().__init__(log, [sys.executable, *argv], full_env, log.parent)


class Pair:
    """A kv_producer on REMOTE and a kv_consumer on LOCAL, as the vLLM case starts them."""

    def __init__(self, prefill: Proc, decode: Proc, prefill_port: int, decode_port: int,
                 bootstrap_port: int) -> None:
        self.prefill, self.decode = prefill, decode
        self.prefill_url = f"http://{REMOTE}:{prefill_port}"
        self.decode_url = f"http://{LOCAL}:{decode_port}"
        self.bootstrap_port = bootstrap_port

    def wait_ready(self) -> None:
        self.prefill.wait_for(STARTUP_COMPLETE)
        self.decode.wait_for(STARTUP_COMPLETE)


Start = Callable[..., Proc]


@pytest.fixture()
def start(tmp_path: Path) -> Iterator[Start]:
    with killed_afterwards() as keep:
        def _start(name: str, argv: list[str], sim: bool = True, **env: str) -> Proc:
            return keep(Proc(tmp_path / f"{name}.log", argv, env, sim))

        yield _start


def server_argv(role_config: str | None, host: str, port: int) -> list[str]:
    argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", MODEL, "--host", host,
            "--port", str(port), "--tensor-parallel-size", "2", "--max-model-len", "32768",
            "--gpu-memory-utilization", "0.85", "--no-enable-prefix-caching"]
    return argv + (["--kv-transfer-config", role_config] if role_config else [])


def start_pair(start: Start, prefill_env: dict | None = None, decode_env: dict | None = None,
               **env: str) -> Pair:
    prefill_port, decode_port = free_port(REMOTE), free_port(LOCAL)
    bootstrap_port = free_port(REMOTE)
    prefill = start("vllm_server_remote", server_argv(PRODUCER, REMOTE, prefill_port),
                    VLLM_MOONCAKE_BOOTSTRAP_PORT=str(bootstrap_port), **env,
                    **(prefill_env or {}))
    decode = start("vllm_server_local", server_argv(CONSUMER, LOCAL, decode_port), **env,
                   **(decode_env or {}))
    return Pair(prefill, decode, prefill_port, decode_port, bootstrap_port)


def sim_proxy(start: Start, pair: Pair, bootstrap_port: int | None = None, **env: str
              ) -> tuple[Proc, str]:
    port = free_port()
    proc = start("proxy", [str(SIM_PROXY), "--prefill", pair.prefill_url,
                           str(bootstrap_port or pair.bootstrap_port), "--decode",
                           pair.decode_url, "--host", LOCAL, "--port", str(port)], **env)
    return proc, f"http://{LOCAL}:{port}"


def own_proxy(start: Start, prefill_url: str, decode_url: str, **env: str) -> tuple[Proc, str]:
    port = free_port()
    proc = start("own_proxy", [str(OWN_PROXY), "--prefill", prefill_url, "--decode", decode_url,
                               "--host", LOCAL, "--port", str(port)], sim=False, **env)
    return proc, f"http://{LOCAL}:{port}"


def chat(url: str, body: dict | None = None, timeout: float = 15.0) -> requests.Response:
    return HTTP.post(f"{url}/v1/chat/completions", json=body or CHAT, timeout=timeout)


def assert_paris(answer: requests.Response) -> None:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body.get("object") != "error"
    assert PARIS.search(body["choices"][0]["message"]["content"]), body


# --- the happy paths ----------------------------------------------------------------------

def test_sim_mooncake_proxy_waits_for_the_prefill_then_routes(start: Start) -> None:
    pair = start_pair(start, prefill_env={"HARNESS_SIM_STARTUP_S": "1.5"})
    proxy, url = sim_proxy(start, pair)
    proxy.wait_for(STARTUP_COMPLETE)
    early = chat(url)
    assert early.status_code == 503  # not every prefiller is ready yet
    assert PREFILLERS_READY not in proxy.text()
    assert STARTUP_COMPLETE not in pair.prefill.text()
    proxy.wait_for(PREFILLERS_READY)
    assert STARTUP_COMPLETE in pair.prefill.text()  # the ready line came after the prefill
    assert f"Inited prefiller {pair.prefill_url} with dp_size=1" in proxy.text()
    pair.wait_ready()

    assert_paris(chat(url))
    completion = HTTP.post(f"{url}/v1/completions", timeout=10,
                           json={"model": MODEL, "prompt": "What is 2 + 3?", "max_tokens": 20})
    assert completion.status_code == 200 and completion.json()["choices"][0]["text"] == \
        "The answer is 5."
    stream = chat(url, {**CHAT, "stream": True})
    assert stream.status_code == 200 and "Paris" in stream.text
    assert stream.text.rstrip().endswith("data: [DONE]")
    assert HTTP.get(f"{url}/health", timeout=5).status_code == 404  # it has no health route
    assert "prefilled xfer-" in pair.prefill.text()
    assert f"from kv_producer {REMOTE}:{pair.bootstrap_port}" in pair.decode.text()
    # Each of the three requests' KV moved through Mooncake, producer -> consumer, verified.
    moved = re.findall(rf"MOONCAKE KV RECEIVED bytes=(\d+) .* from={REMOTE}:\d+ "
                       rf"to={LOCAL}:\d+ room=xfer-\S+ .*verified=yes", pair.decode.text())
    assert len(moved) == 3 and all(int(size) >= 64 * 57344 for size in moved), pair.decode.text()

    for server in (pair.prefill_url, pair.decode_url):
        assert HTTP.get(f"{server}/health", timeout=5).status_code == 200
        assert HTTP.get(f"{server}/version", timeout=5).json() == {"version": "0.17.0"}
        assert HTTP.get(f"{server}/v1/models", timeout=5).json()["data"][0]["id"] == MODEL
    first_line = pair.prefill.text().splitlines()[0]
    assert "SIMULATED vllm.entrypoints.openai.api_server" in first_line

    for proc in (proxy, pair.prefill, pair.decode):
        took = proc.terminate()
        assert proc.proc.returncode == 0 and took < SIGTERM_EXIT_S, (proc.text(), took)


def test_own_proxy_routes_and_is_healthy(start: Start) -> None:
    pair = start_pair(start, HARNESS_SIM_VLLM_VERSION="0.15.1")
    # The harness never injects faults into the project's own proxy: it has no hooks.
    proxy, url = own_proxy(start, pair.prefill_url, pair.decode_url,
                           HARNESS_SIM_COMPONENT="proxy", HARNESS_SIM_FAULTS="proxy:crash")
    proxy.wait_for(STARTUP_COMPLETE)
    for path in ("/health", "/healthcheck"):
        health = HTTP.get(url + path, timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
    pair.wait_ready()
    assert HTTP.get(f"{pair.decode_url}/version", timeout=5).json()["version"] == "0.15.1"

    assert_paris(chat(url))
    completion = HTTP.post(f"{url}/v1/completions", timeout=10,
                           json={"model": MODEL, "prompt": "capital of France", "max_tokens": 9})
    assert completion.status_code == 200 and "Paris" in completion.json()["choices"][0]["text"]
    stream = chat(url, {**CHAT, "stream": True})
    assert stream.status_code == 200 and "Paris" in stream.text
    assert stream.text.rstrip().endswith("data: [DONE]")
    bad = HTTP.post(f"{url}/v1/chat/completions", data=b"{nope", timeout=5)
    assert bad.status_code == 400 and bad.json()["object"] == "error"
    assert HTTP.get(f"{url}/nope", timeout=5).status_code == 404
    log = proxy.text()
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in log
    assert f"remote KV at {REMOTE}:{pair.bootstrap_port}" in log
    assert "loaded KV of xfer-" in pair.decode.text()

    took = proxy.terminate()
    assert proxy.proc.returncode == 0 and took < SIGTERM_EXIT_S, (proxy.text(), took)


# --- wrong wiring -------------------------------------------------------------------------

def test_decode_refuses_a_dead_or_wrong_producer(start: Start) -> None:
    pair = start_pair(start)
    pair.wait_ready()
    prefilled = chat(pair.prefill_url, {**CHAT, "max_tokens": 1,
                                        "kv_transfer_params": {"do_remote_decode": True}})
    assert prefilled.status_code == 200
    params = prefilled.json()["kv_transfer_params"]
    assert params["remote_host"] == REMOTE and params["remote_port"] == pair.bootstrap_port
    assert_paris(chat(pair.decode_url, {**CHAT, "kv_transfer_params": params}))

    def refused(kv_params: dict | None, needle: str) -> None:
        body = dict(CHAT) if kv_params is None else {**CHAT, "kv_transfer_params": kv_params}
        answer = chat(pair.decode_url, body)
        assert answer.status_code == 500 and answer.json()["object"] == "error"
        assert needle in answer.json()["message"], answer.json()

    refused(None, "without kv_transfer_params.do_remote_prefill=true")
    refused({**params, "remote_host": NOWHERE}, f"no live kv_producer at {NOWHERE}:")
    refused({**params, "remote_host": LOCAL, "remote_port": int(pair.decode_url.rsplit(":", 1)[1])},
            "not a kv_producer's Mooncake bootstrap server")
    refused({**params, "remote_engine_id": "someone-else"}, "not remote_engine_id")
    refused({**params, "transfer_id": "xfer-never"}, "never prefilled transfer 'xfer-never'")

    pair.prefill.terminate()  # checked on every request: a gone producer is refused
    refused(params, f"no live kv_producer at {REMOTE}:{pair.bootstrap_port}")


def test_own_proxy_reports_upstream_failures(start: Start) -> None:
    pair = start_pair(start)
    plain_port = free_port()
    plain = start("plain", server_argv(None, LOCAL, plain_port))
    dead = f"http://{NOWHERE}:{free_port()}"
    swapped, swapped_url = own_proxy(start, pair.decode_url, pair.prefill_url)
    gone, gone_url = own_proxy(start, dead, pair.decode_url)
    not_producer, not_producer_url = own_proxy(start, f"http://{LOCAL}:{plain_port}",
                                               pair.decode_url)
    pair.wait_ready()
    plain.wait_for(STARTUP_COMPLETE)
    for proc in (swapped, gone, not_producer):
        proc.wait_for(STARTUP_COMPLETE)

    answer = chat(swapped_url)  # --prefill at the decode server: it refuses to prefill
    assert answer.status_code == 502 and answer.json()["object"] == "error"
    assert answer.json()["upstream"] == f"{pair.decode_url}/v1/chat/completions"
    assert answer.json()["upstream_status"] == 500
    assert "prefill" in answer.json()["message"] and "HTTP 500" in answer.json()["message"]

    answer = chat(gone_url)
    assert answer.status_code == 502 and answer.json()["upstream_status"] is None
    assert f"prefill {dead}/v1/chat/completions unreachable" in answer.json()["message"]

    answer = chat(not_producer_url)
    assert answer.status_code == 502
    assert "answered without kv_transfer_params" in answer.json()["message"]
    assert "ERROR:" in not_producer.text()


def test_sim_proxy_never_ready_with_a_wrong_bootstrap_port(start: Start) -> None:
    pair = start_pair(start)
    wrong_port = free_port(REMOTE)
    proxy, url = sim_proxy(start, pair, bootstrap_port=wrong_port)
    pair.wait_ready()
    proxy.wait_for(f"GET http://{REMOTE}:{wrong_port}/query failed")
    time.sleep(0.5)
    assert PREFILLERS_READY not in proxy.text()
    assert chat(url).status_code == 503


# --- faults -------------------------------------------------------------------------------

def test_server_start_faults(start: Start) -> None:
    crash = start("crash", server_argv(PRODUCER, REMOTE, free_port(REMOTE)),
                  VLLM_MOONCAKE_BOOTSTRAP_PORT="0", HARNESS_SIM_COMPONENT="prefill",
                  HARNESS_SIM_FAULTS="prefill:crash")
    hang_port = free_port()
    hang = start("hang", server_argv(CONSUMER, LOCAL, hang_port),
                 HARNESS_SIM_COMPONENT="decode", HARNESS_SIM_FAULTS="decode:hang")
    die = start("die", server_argv(CONSUMER, LOCAL, free_port()),
                HARNESS_SIM_COMPONENT="decode", HARNESS_SIM_FAULTS="decode:die-after-ready")
    assert crash.wait_exit() == 1 and "simulated fault crash" in crash.text()
    assert STARTUP_COMPLETE not in crash.text()
    assert die.wait_exit() == 3 and STARTUP_COMPLETE in die.text()
    hang.wait_for("simulated fault hang")
    time.sleep(0.5)
    assert hang.proc.poll() is None and STARTUP_COMPLETE not in hang.text()
    with pytest.raises(requests.ConnectionError):
        HTTP.get(f"http://{LOCAL}:{hang_port}/health", timeout=1)
    assert hang.terminate() < SIGTERM_EXIT_S and hang.proc.returncode == 0


@pytest.mark.parametrize("component", ["prefill", "decode"])
def test_wrong_answer_through_the_proxy(start: Start, component: str) -> None:
    pair = start_pair(start, HARNESS_SIM_FAULTS=f"{component}:wrong-answer",
                      prefill_env={"HARNESS_SIM_COMPONENT": "prefill"},
                      decode_env={"HARNESS_SIM_COMPONENT": "decode"})
    proxy, url = sim_proxy(start, pair)
    proxy.wait_for(PREFILLERS_READY)
    pair.wait_ready()
    answer = chat(url)  # a wrong-answer prefill hands over bad KV: the decode answers wrongly
    assert answer.status_code == 200 and not PARIS.search(answer.text)


def test_decode_http_500_keeps_health(start: Start) -> None:
    pair = start_pair(start, decode_env={"HARNESS_SIM_COMPONENT": "decode",
                                         "HARNESS_SIM_FAULTS": "decode:http-500"})
    proxy, url = own_proxy(start, pair.prefill_url, pair.decode_url)
    pair.wait_ready()
    proxy.wait_for(STARTUP_COMPLETE)
    assert HTTP.get(f"{pair.decode_url}/health", timeout=5).status_code == 200
    answer = chat(url)
    assert answer.status_code == 502 and answer.json()["upstream_status"] == 500
    assert answer.json()["upstream"] == f"{pair.decode_url}/v1/chat/completions"
    assert "simulated fault http-500" in answer.json()["message"]


@pytest.mark.parametrize("fault", ["crash", "hang", "die-after-ready", "http-500",
                                   "wrong-answer"])
def test_sim_proxy_faults(start: Start, fault: str) -> None:
    pair = start_pair(start)
    proxy, url = sim_proxy(start, pair, HARNESS_SIM_COMPONENT="proxy",
                           HARNESS_SIM_FAULTS=f"proxy:{fault},decode:crash")
    if fault == "crash":
        assert proxy.wait_exit() == 1 and PREFILLERS_READY not in proxy.text()
        return
    if fault == "hang":
        proxy.wait_for("simulated fault hang")
        pair.wait_ready()  # decode:crash is not this component's: the decode is fine
        time.sleep(0.5)
        assert STARTUP_COMPLETE not in proxy.text() and PREFILLERS_READY not in proxy.text()
        assert proxy.terminate() < SIGTERM_EXIT_S and proxy.proc.returncode == 0
        return
    if fault == "die-after-ready":
        assert proxy.wait_exit() == 3 and PREFILLERS_READY in proxy.text()
        return
    proxy.wait_for(PREFILLERS_READY)
    pair.wait_ready()
    answer = chat(url)
    if fault == "http-500":
        assert answer.status_code == 500 and answer.json()["object"] == "error"
    else:
        assert answer.status_code == 200 and not PARIS.search(answer.text)


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("env,argv_extra,code,needle", [
    ({"HARNESS_SIM_VLLM_VERSION": "banana"}, [], 2, "bad HARNESS_SIM_VLLM_VERSION 'banana'"),
    ({"VLLM_MOONCAKE_BOOTSTRAP_PORT": "port"}, [], 2, "bad VLLM_MOONCAKE_BOOTSTRAP_PORT"),
    ({"HARNESS_SIM_FAULTS": "decode:explode"}, [], 2, "bad HARNESS_SIM_FAULTS item"),
    ({}, ["--kv-transfer-config", '{"kv_connector":"X","kv_role":"kv_producer"}'], 2,
     "imitates only 'MooncakeConnector'"),
])
def test_bad_knobs_and_arguments_exit_2(start: Start, env: dict, argv_extra: list[str],
                                        code: int, needle: str) -> None:
    proc = start("bad", server_argv(None, LOCAL, free_port()) + argv_extra, **env)
    assert proc.wait_exit() == code
    assert needle in proc.text() and "Traceback" not in proc.text()


def test_busy_ports_exit_1(start: Start) -> None:
    with socket.socket() as busy:
        busy.bind((REMOTE, 0))
        busy.listen()
        port = busy.getsockname()[1]
        http_busy = start("http_busy", server_argv(CONSUMER, REMOTE, port))
        bootstrap_busy = start("bootstrap_busy", server_argv(PRODUCER, REMOTE, free_port(REMOTE)),
                               VLLM_MOONCAKE_BOOTSTRAP_PORT=str(port))
        assert http_busy.wait_exit() == 1 and bootstrap_busy.wait_exit() == 1
    assert f"cannot bind HTTP port {REMOTE}:{port}" in http_busy.text()
    assert f"cannot bind Mooncake bootstrap port {REMOTE}:{port}" in bootstrap_busy.text()
