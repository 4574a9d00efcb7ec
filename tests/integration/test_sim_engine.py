"""The simulated SGLang server as the harness sees it: a real process, real sockets.

Each server is `python3 -m sglang.launch_server ...` with PYTHONPATH=sim/site, on
127.0.0.1 and free ports, its output in a log file that is followed for the ready line
(bounded), in its own session, and always stopped (killpg by its pid) afterwards.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.simproc import ROOT, SIM_SITE, LoggedProcess, clean_env, free_port, killed_afterwards

pytestmark = pytest.mark.integration

READY = "The server is fired up and ready to roll!"
STARTUP_COMPLETE = "Application startup complete."
HOST = "127.0.0.1"
NOWHERE = "127.93.17.5"  # a loopback address nothing in these tests listens on
# Loopback only: a proxy from the environment must never see the simulator's traffic.
HTTP = requests.Session()
# A process that exits on SIGTERM must be gone within this: generous for a loaded 2-core
# machine, still far below simproc's 5 s wait, so a process that ignores SIGTERM fails here.
# (How fast it exits is measured by `nox -s bench`, not asserted.)
SIGTERM_EXIT_S = 3.0
HTTP.trust_env = False


class Sim(LoggedProcess):
    """One simulated server process and its log."""

    exited = "server exited"

    def __init__(self, log: Path, args: list[str], env: dict[str, str]) -> None:
        self.port = int(args[args.index("--port") + 1]) if "--port" in args else 30000
        self.url = f"http://{HOST}:{self.port}"
        full_env = clean_env("HARNESS_SIM")
        full_env.update({"PYTHONPATH": str(SIM_SITE), "HARNESS_SIM_STARTUP_S": "0.1",
                         "PYTHONUNBUFFERED": "1", **env})
        super().__init__(log, [sys.executable, "-m", "sglang.launch_server", *args], full_env,
                         ROOT)


@pytest.fixture()
def start(tmp_path: Path) -> Iterator:
    with killed_afterwards() as keep:
        def _start(name: str, args: list[str], **env: str) -> Sim:
            return keep(Sim(tmp_path / f"{name}.log", args, env))

        yield _start


def post(url: str, body: object, timeout: float = 10.0) -> requests.Response:
    return HTTP.post(url, json=body, timeout=timeout)


def chat_body(text: str, image: bool = False) -> dict:
    content: object = text
    if image:
        content = [{"type": "text", "text": text},
                   {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AA=="}}]
    return {"model": "default", "messages": [{"role": "user", "content": content}],
            "temperature": 0, "max_tokens": 64}


STORY = {"text": "Let me tell you a short story ", "sampling_params": {"temperature": 0}}


def test_normal_server_api_and_sigterm(start) -> None:
    port = free_port()
    sim = start("normal", ["--model-path", "Qwen/Qwen3-8B", "--host", HOST, "--port", str(port),
                           "--tp-size", "2", "--cuda-graph-max-bs", "4"],
                HARNESS_SIM_MODEL_DIR="auto")
    sim.wait_for(READY)
    log = sim.text()
    assert "SIMULATED sglang.launch_server" in log.splitlines()[0]
    assert f"Uvicorn running on http://{HOST}:{port}" in log and STARTUP_COMPLETE in log
    assert "ignoring arguments the simulator does not use: --cuda-graph-max-bs 4" in log

    assert HTTP.get(f"{sim.url}/health", timeout=5).status_code == 200
    assert HTTP.get(f"{sim.url}/health_generate", timeout=5).status_code == 200
    for path in ("/server_info", "/get_server_info"):
        info = HTTP.get(sim.url + path, timeout=5).json()
        assert info["simulated"] is True and info["version"] and info["tp_size"] == 2
        assert (info["host"], info["port"], info["disaggregation_mode"]) == (HOST, port, "null")
        assert info["disaggregation_bootstrap_port"] == 8998
        assert Path(info["model_path"], "tokenizer.json").is_file()  # HARNESS_SIM_MODEL_DIR=auto
    for path in ("/model_info", "/get_model_info"):
        model = HTTP.get(sim.url + path, timeout=5).json()
        assert model["is_generation"] is True and model["preferred_sampling_params"] is None
        assert model["model_path"] == model["tokenizer_path"] == info["model_path"]
    assert HTTP.get(f"{sim.url}/v1/models", timeout=5).json()["data"][0]["id"] == "Qwen/Qwen3-8B"

    story = post(f"{sim.url}/generate", STORY)
    assert story.status_code == 200
    assert "Once upon a time" in story.json()["text"]
    assert story.json()["meta_info"]["finish_reason"]["type"] == "stop"
    batch = post(f"{sim.url}/generate", {"text": ["What is 2 + 3?", "hello"]}).json()
    assert batch[0]["text"] == "The answer is 5."

    cat = post(f"{sim.url}/v1/chat/completions",
               chat_body("What animal is in the picture?", image=True)).json()
    assert "cat" in cat["choices"][0]["message"]["content"]
    paris = post(f"{sim.url}/v1/chat/completions", chat_body("Where is the capital of France?"))
    assert paris.status_code == 200 and "Paris" in paris.json()["choices"][0]["message"]["content"]
    completion = post(f"{sim.url}/v1/completions", {"prompt": "What is 1 + 1?"}).json()
    assert completion["choices"][0]["text"] == "The answer is 2."
    stream = HTTP.post(f"{sim.url}/v1/chat/completions",
                       json={**chat_body("capital of France"), "stream": True}, timeout=5)
    assert "Paris" in stream.text and stream.text.rstrip().endswith("data: [DONE]")
    assert HTTP.post(f"{sim.url}/flush_cache", timeout=5).status_code == 200

    bad = HTTP.post(f"{sim.url}/generate", data=b"{not json", timeout=5)
    assert bad.status_code == 400 and bad.json()["object"] == "error" and bad.json()["message"]
    missing = HTTP.get(f"{sim.url}/nope", timeout=5)
    assert missing.status_code == 404 and missing.json()["object"] == "error"
    assert HTTP.get(f"{sim.url}/generate", timeout=5).status_code == 405
    assert '"POST /generate HTTP/1.1" 200' in sim.text()  # the request log

    took = sim.terminate()
    assert sim.proc.returncode == 0 and took < SIGTERM_EXIT_S, (sim.proc.returncode, took)
    assert "received SIGTERM, shutting down" in sim.text()
    with pytest.raises(requests.ConnectionError):
        HTTP.get(f"{sim.url}/health", timeout=2)


def test_pd_pair_checks_the_bootstrap_wiring(start) -> None:
    """The wiring alone (no Mooncake: test_sim_mooncake.py moves the bytes)."""
    prefill_port, bootstrap_port, decode_port = free_port(), free_port(), free_port()
    prefill = start("prefill", ["--model-path", "m", "--disaggregation-mode", "prefill",
                                "--host", HOST, "--port", str(prefill_port),
                                "--disaggregation-bootstrap-port", str(bootstrap_port)],
                    HARNESS_SIM_MOONCAKE="off")
    decode = start("decode", ["--model-path", "m", "--disaggregation-mode", "decode",
                              "--host", HOST, "--port", str(decode_port)],
                   HARNESS_SIM_MOONCAKE="off")
    prefill.wait_for(READY)
    decode.wait_for(READY)
    identity = HTTP.get(f"http://{HOST}:{bootstrap_port}/health", timeout=5)
    assert identity.status_code == 200 and identity.json()["role"] == "prefill-bootstrap"

    wired = {"bootstrap_host": HOST, "bootstrap_port": bootstrap_port, "bootstrap_room": 12345}
    ok = post(f"{decode.url}/generate", {**STORY, **wired})
    assert ok.status_code == 200 and "Once upon a time" in ok.json()["text"]
    chat = post(f"{decode.url}/v1/chat/completions",
                {**chat_body("Where is the capital of France?"), **wired})
    assert chat.status_code == 200 and "Paris" in chat.json()["choices"][0]["message"]["content"]
    assert post(f"{prefill.url}/generate", {**STORY, **wired}).status_code == 200

    unrouted = post(f"{decode.url}/generate", STORY)
    assert unrouted.status_code == 500 and unrouted.json()["object"] == "error"
    assert "bootstrap_host" in unrouted.json()["message"]
    wrong_port = post(f"{decode.url}/generate", {**STORY, **wired, "bootstrap_port": decode_port})
    assert wrong_port.status_code == 500
    assert "not a prefill bootstrap server" in wrong_port.json()["message"]
    default_port = post(f"{decode.url}/generate",
                        {**STORY, **wired, "bootstrap_host": NOWHERE, "bootstrap_port": None})
    assert default_port.status_code == 500
    assert f"no prefill bootstrap server at {NOWHERE}:8998" in default_port.json()["message"]

    # Wiring is checked per request: once the prefill is gone, the decode refuses.
    assert prefill.terminate() < SIGTERM_EXIT_S and prefill.proc.returncode == 0
    gone = post(f"{decode.url}/generate", {**STORY, **wired})
    assert gone.status_code == 500
    assert f"no prefill bootstrap server at {HOST}:{bootstrap_port}" in gone.json()["message"]


def test_epd_encoder_and_language_only_prefill(start) -> None:
    encoder_port, prefill_port = free_port(), free_port()
    encoder = start("encoder", ["--model-path", "vl", "--encoder-only", "--host", HOST,
                                "--port", str(encoder_port), "--encoder-transfer-backend",
                                "mooncake"])
    prefill = start("prefill", [
        "--model-path", "vl", "--disaggregation-mode", "prefill", "--language-only",
        "--encoder-urls", encoder.url, "--host", HOST, "--port", str(prefill_port),
        "--disaggregation-bootstrap-port", str(free_port())])
    encoder.wait_for(STARTUP_COMPLETE)
    prefill.wait_for(READY)
    assert READY not in encoder.text()  # encoder-only servers never print the ready line
    assert HTTP.get(f"{encoder.url}/health", timeout=5).status_code == 200
    assert HTTP.get(f"{encoder.url}/server_info", timeout=5).json()["encoder_only"] is True
    assert HTTP.get(f"{encoder.url}/model_info", timeout=5).status_code == 200
    assert post(f"{encoder.url}/encode", {"rid": "x"}).json()["simulated"] is True
    assert post(f"{encoder.url}/generate", STORY).status_code == 404

    answer = post(f"{prefill.url}/v1/chat/completions",
                  chat_body("What animal is in the picture?", image=True))
    assert answer.status_code == 200 and "cat" in answer.json()["choices"][0]["message"]["content"]
    assert '"POST /encode HTTP/1.1" 200' in encoder.text()


def test_language_only_prefill_without_encoder_is_never_ready(start) -> None:
    sim = start("lonely", ["--disaggregation-mode", "prefill", "--language-only",
                           "--encoder-urls", f"http://{HOST}:{free_port()}",
                           "--port", str(free_port()),
                           "--disaggregation-bootstrap-port", str(free_port())],
                HARNESS_SIM_ENCODER_WAIT_S="0.5")
    assert sim.wait_exit() == 1
    assert "no encoder answered GET /health" in sim.text() and READY not in sim.text()


def test_fault_crash_exits_1_before_ready(start) -> None:
    started = time.monotonic()
    sim = start("crash", ["--port", str(free_port())], HARNESS_SIM_COMPONENT="prefill",
                HARNESS_SIM_FAULTS="prefill:crash")
    assert sim.wait_exit() == 1 and time.monotonic() - started < 3
    assert "simulated fault crash" in sim.text() and READY not in sim.text()


def test_fault_hang_never_ready_but_stops_on_sigterm(start) -> None:
    port = free_port()
    sim = start("hang", ["--port", str(port)], HARNESS_SIM_COMPONENT="decode",
                HARNESS_SIM_FAULTS="decode:hang")
    time.sleep(2)
    assert sim.proc.poll() is None
    assert READY not in sim.text() and "Uvicorn running" not in sim.text()
    with pytest.raises(requests.ConnectionError):
        HTTP.get(f"http://{HOST}:{port}/health", timeout=1)
    assert sim.terminate() < SIGTERM_EXIT_S and sim.proc.returncode == 0


def test_fault_die_after_ready_exits_3(start) -> None:
    sim = start("die", ["--port", str(free_port())], HARNESS_SIM_COMPONENT="decode",
                HARNESS_SIM_FAULTS="decode:die-after-ready")
    sim_ready_then_exit = sim.wait_exit()
    assert sim_ready_then_exit == 3 and READY in sim.text()


def test_fault_http_500_keeps_health(start) -> None:
    sim = start("h500", ["--port", str(free_port())], HARNESS_SIM_COMPONENT="decode",
                HARNESS_SIM_FAULTS="decode:http-500")
    sim.wait_for(READY)
    assert HTTP.get(f"{sim.url}/health", timeout=5).status_code == 200
    for path, body in (("/generate", STORY), ("/v1/chat/completions", chat_body("hi"))):
        answer = post(sim.url + path, body)
        assert answer.status_code == 500 and answer.json()["object"] == "error"


def test_fault_wrong_answer_and_other_components_unaffected(start) -> None:
    wrong = start("wrong", ["--port", str(free_port())], HARNESS_SIM_COMPONENT="decode",
                  HARNESS_SIM_FAULTS="decode:wrong-answer,prefill:crash,router:hang")
    spared = start("spared", ["--port", str(free_port())],  # no component: a payload's server
                   HARNESS_SIM_FAULTS="decode:crash,prefill:crash,payload:crash")
    wrong.wait_for(READY)
    spared.wait_for(READY)
    body = chat_body("Where is the capital of France?")
    assert "Paris" not in post(f"{wrong.url}/v1/chat/completions", body).text
    assert "Paris" in post(f"{spared.url}/v1/chat/completions", body).text


@pytest.mark.parametrize("env,needle", [
    ({"HARNESS_SIM_FAULTS": "decode:explode"}, "bad HARNESS_SIM_FAULTS item 'decode:explode'"),
    ({"HARNESS_SIM_COMPONENT": "scheduler"}, "bad HARNESS_SIM_COMPONENT 'scheduler'"),
    ({"HARNESS_SIM_STARTUP_S": "soon"}, "bad HARNESS_SIM_STARTUP_S 'soon'"),
])
def test_bad_knob_exits_2_with_a_clear_line(start, env: dict, needle: str) -> None:
    sim = start("badknob", ["--port", str(free_port())], **env)
    assert sim.wait_exit() == 2
    error_lines = [line for line in sim.text().splitlines() if "error:" in line]
    assert len(error_lines) == 1 and needle in error_lines[0], sim.text()
    assert "Traceback" not in sim.text()


def test_port_in_use_exits_1(start) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        sim = start("busy", ["--host", HOST, "--port", str(port)])
        assert sim.wait_exit() == 1
    assert f"cannot bind HTTP port {HOST}:{port}" in sim.text()
    assert "Traceback" not in sim.text()


def test_sigint_during_startup_is_a_clean_exit(start) -> None:
    sim = start("early", ["--port", str(free_port())], HARNESS_SIM_STARTUP_S="30")
    sim.wait_for("role=normal")
    os.killpg(sim.proc.pid, signal.SIGINT)
    assert sim.wait_exit(2) == 0
    assert "received SIGINT" in sim.text()


def test_server_info_json_is_complete(start) -> None:
    sim = start("info", ["--model-path", "Qwen/Qwen3-8B", "--port", str(free_port()),
                         "--disaggregation-mode", "decode", "--base-gpu-id=6"])
    sim.wait_for(READY)
    info = HTTP.get(f"{sim.url}/server_info", timeout=5).json()
    assert info["model_path"] == "Qwen/Qwen3-8B" and info["base_gpu_id"] == 6
    assert info["disaggregation_mode"] == "decode" and info["role"] == "decode"
    json.dumps(info)  # plain JSON all the way down
