"""The simulated vLLM's and both vLLM proxies' pure parts: arguments, knobs, PD checks, bodies."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIM_SITE = ROOT / "sim" / "site"
if str(SIM_SITE) not in sys.path:
    sys.path.append(str(SIM_SITE))

from harness_sim import api
from harness_sim.answers import WRONG
from harness_sim.vllm_args import parse_vllm_args
from harness_sim.vllm_engine import TransferBook, VllmEngine, producer_address
from harness_sim.vllm_main import bootstrap_port_knob, version_knob
from harness_sim.vllm_proxy import (
    Prefiller,
    decode_body,
    make_wrong,
    parse_proxy_args,
    prefill_body,
)

OWN_PROXY_PATH = ROOT / "payloads" / "vllm_proxy" / "disagg_proxy.py"
_spec = importlib.util.spec_from_file_location("disagg_proxy", OWN_PROXY_PATH)
assert _spec and _spec.loader
own_proxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(own_proxy)

PRODUCER = '{"kv_connector":"MooncakeConnector","kv_role":"kv_producer"}'
CONSUMER = '{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer"}'
CASE_ARGS = ["--model", "Qwen/Qwen3-8B", "--host", "127.0.0.2", "--port", "8010",
             "--tensor-parallel-size", "2", "--max-model-len", "32768",
             "--gpu-memory-utilization", "0.85", "--no-enable-prefix-caching",
             "--kv-transfer-config", PRODUCER]
PARIS = {"model": "m", "messages": [{"role": "user", "content": "Where is the capital of France?"}]}


# --- the server's command line and knobs ----------------------------------------------------

def test_the_case_command_line_parses() -> None:
    args = parse_vllm_args(CASE_ARGS + ["--enforce-eager", "--seed", "1"])
    assert (args.model, args.host, args.port) == ("Qwen/Qwen3-8B", "127.0.0.2", 8010)
    assert args.tensor_parallel_size == 2 and args.max_model_len == 32768
    assert args.gpu_memory_utilization == 0.85 and args.enable_prefix_caching is False
    assert args.kv_role == "kv_producer" and args.role == "prefill"
    assert args.unknown == ["--enforce-eager", "--seed", "1"]
    assert args.served_model == "Qwen/Qwen3-8B"
    assert args.non_default()["kv_transfer_config"]["kv_role"] == "kv_producer"


def test_short_forms_and_plain_server() -> None:
    args = parse_vllm_args(["--model", "m", "-tp", "4", "--max-model-len", "32K",
                            "--served-model-name", "alias", "other"])
    assert args.tensor_parallel_size == 4 and args.max_model_len == 32 * 1024  # K = 1024
    assert parse_vllm_args(["--max-model-len", "32k"]).max_model_len == 32000
    assert args.kv_role is None and args.role == "normal" and args.served_model == "alias"
    assert parse_vllm_args(["--kv-transfer-config", CONSUMER]).role == "decode"


@pytest.mark.parametrize("config,needle", [
    ("{not json", "not valid JSON"),
    ('["MooncakeConnector"]', "must be a JSON object"),
    ('{"kv_connector":"NixlConnector","kv_role":"kv_producer"}', "imitates only"),
    ('{"kv_connector":"MooncakeConnector","kv_role":"producer"}', "kv_role 'producer'"),
])
def test_bad_kv_transfer_config_is_a_usage_error(config: str, needle: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_vllm_args(["--kv-transfer-config", config])
    assert exit_info.value.code == 2 and needle in capsys.readouterr().err


def test_bad_gpu_memory_utilization_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse_vllm_args(["--gpu-memory-utilization", "1.5"])


def test_version_and_bootstrap_port_knobs() -> None:
    assert version_knob({}) == "0.17.0"
    for good in ("0.15.1", "0.17.0rc1", "0.11.0+cu128", "1.0"):
        assert version_knob({"HARNESS_SIM_VLLM_VERSION": good}) == good
    assert version_knob({"HARNESS_SIM_VLLM_VERSION": " 0.16.0 "}) == "0.16.0"
    for bad in ("banana", "0", "v0.17", "0.17 rc"):
        with pytest.raises(ValueError, match="bad HARNESS_SIM_VLLM_VERSION"):
            version_knob({"HARNESS_SIM_VLLM_VERSION": bad})
    assert bootstrap_port_knob({}) == 8998
    assert bootstrap_port_knob({"VLLM_MOONCAKE_BOOTSTRAP_PORT": "9100"}) == 9100
    for bad in ("x", "-1", "70000"):
        with pytest.raises(ValueError, match="bad VLLM_MOONCAKE_BOOTSTRAP_PORT"):
            bootstrap_port_knob({"VLLM_MOONCAKE_BOOTSTRAP_PORT": bad})


@pytest.mark.parametrize("value,expected", [(None, "0.17.0"), ("0.15.1", "0.15.1")])
def test_import_vllm_reports_the_knob(value: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_SIM")}
    env["PYTHONPATH"] = str(SIM_SITE)
    if value:
        env["HARNESS_SIM_VLLM_VERSION"] = value
    out = subprocess.run([sys.executable, "-c", "import vllm; print(vllm.__version__)"],
                         env=env, capture_output=True, text=True, timeout=20, check=True)
    assert out.stdout.strip() == expected


# --- the engine's PD gate (no sockets: the consumer's probe is covered by integration) ------

def engine(config: str | None, *faults: str) -> VllmEngine:
    argv = ["--model", "m", "--host", "127.0.0.2", "--port", "8010"]
    if config:
        argv += ["--kv-transfer-config", config]
    eng = VllmEngine(args=parse_vllm_args(argv), model_path="m", version="0.17.0",
                     faults=set(faults))
    eng.bootstrap_port = 8998
    return eng


def test_producer_names_itself_in_kv_transfer_params() -> None:
    producer = engine(PRODUCER)
    answer, params = producer.prepare(
        {**PARIS, "kv_transfer_params": dict(own_proxy.PREFILL_KV_TRANSFER_PARAMS)},
        "Where is the capital of France?")
    assert "Paris" in answer("Where is the capital of France?")
    assert params is not None and params["do_remote_prefill"] is True
    assert params["do_remote_decode"] is False
    assert (params["remote_host"], params["remote_port"]) == ("127.0.0.2", 8998)
    assert params["remote_engine_id"] == producer.engine_id and params["remote_block_ids"]
    assert producer.transfers.get(params["transfer_id"]) is not None
    _, same = producer.prepare({**PARIS, "kv_transfer_params": {"do_remote_decode": True,
                                                                "transfer_id": "xfer-1"}}, "p")
    assert same is not None and same["transfer_id"] == "xfer-1"
    # Without kv_transfer_params a producer answers as a plain server would.
    assert producer.prepare(PARIS, "p")[1] is None


@pytest.mark.parametrize("config,params,needle", [
    (CONSUMER, None, "without kv_transfer_params.do_remote_prefill=true"),
    (CONSUMER, {"do_remote_decode": True}, "--prefill pointing at the decode server"),
    (PRODUCER, {"do_remote_prefill": True, "remote_host": "h", "remote_port": 1},
     "--decode pointing at the prefill server"),
    (CONSUMER, {"do_remote_prefill": True}, "which kv_producer holds"),
    (CONSUMER, "not an object", "must be an object"),
])
def test_wrong_wiring_is_refused(config: str | None, params, needle: str) -> None:
    body = dict(PARIS) if params is None else {**PARIS, "kv_transfer_params": params}
    with pytest.raises(api.ApiError) as refused:
        engine(config).prepare(body, "p")
    assert needle in refused.value.message


def test_plain_server_ignores_kv_transfer_params() -> None:
    answer, params = engine(None).prepare({**PARIS, "kv_transfer_params": {
        "do_remote_decode": True}}, "p")
    assert params is None and "Paris" in answer("Where is the capital of France?")


def test_engine_faults() -> None:
    with pytest.raises(api.ApiError) as refused:
        engine(None, "http-500").prepare(PARIS, "p")
    assert refused.value.status == 500
    answer, _ = engine(None, "wrong-answer").prepare(PARIS, "p")
    assert answer("Where is the capital of France?") == WRONG
    producer = engine(PRODUCER, "wrong-answer")
    _, params = producer.prepare({**PARIS, "kv_transfer_params": {"do_remote_decode": True}}, "p")
    assert params is not None
    transfer = producer.transfers.get(params["transfer_id"])
    assert transfer is not None and transfer.wrong  # bad KV makes the decode answer wrongly


@pytest.mark.parametrize("params,expected", [
    ({"remote_bootstrap_addr": "http://127.0.0.2:8998"}, ("127.0.0.2", 8998)),
    ({"remote_bootstrap_addr": "10.0.0.2:9000", "remote_host": "x"}, ("10.0.0.2", 9000)),
    ({"remote_host": "127.0.0.2", "remote_port": "8998"}, ("127.0.0.2", 8998)),
    ({"remote_bootstrap_addr": "http://[::1]:8998"}, ("::1", 8998)),
])
def test_producer_address(params: dict, expected: tuple[str, int]) -> None:
    assert producer_address(params) == expected


@pytest.mark.parametrize("params,status", [
    ({"remote_bootstrap_addr": "http://nohost"}, 400),
    ({"remote_host": "h", "remote_port": "x"}, 400),
    ({"remote_host": None, "remote_port": None}, 500),
])
def test_producer_address_refuses(params: dict, status: int) -> None:
    with pytest.raises(api.ApiError) as refused:
        producer_address(params)
    assert refused.value.status == status


def test_transfer_book_blocks_and_bound(monkeypatch) -> None:
    monkeypatch.setattr("harness_sim.vllm_engine.MAX_TRANSFERS", 3)
    book = TransferBook()
    first = book.record("a", tokens=33, wrong=False)
    assert first.block_ids == [1, 2, 3]  # 16 tokens a block
    assert book.record("b", tokens=0, wrong=False).block_ids == [4]
    for name in "cd":
        book.record(name, 1, False)
    assert book.get("a") is None and book.get("d") is not None


# --- the simulated Mooncake connector proxy -------------------------------------------------

def test_sim_proxy_command_line() -> None:
    args = parse_proxy_args(["--prefill", "http://127.0.0.2:8010", "--prefill",
                             "http://127.0.0.3:8010", "9000", "--prefill", "http://h:1/", "none",
                             "--decode", "http://127.0.0.1:8020", "--host", "0.0.0.0",
                             "--port", "8000"])
    assert args.prefill == [("http://127.0.0.2:8010", "http://127.0.0.2:8998"),
                            ("http://127.0.0.3:8010", "http://127.0.0.3:9000"),
                            ("http://h:1", "http://h:8998")]
    assert args.decode == ["http://127.0.0.1:8020"] and (args.host, args.port) == ("0.0.0.0", 8000)


@pytest.mark.parametrize("argv", [
    ["--prefill", "http://a:1", "--decode"],
    ["--prefill", "http://a:1"],
    ["--decode", "http://a:1"],
    ["--prefill", "http://a:1", "http://b:1", "--decode", "http://c:1"],
    ["--prefill", "http://a:1", "x", "--decode", "http://c:1"],
    ["--prefill", "http://a:1", "--decode", "http://c:1", "--unknown"],
])
def test_sim_proxy_bad_command_line(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_proxy_args(argv)
    assert exit_info.value.code == 2


def test_sim_proxy_bodies_follow_the_mooncake_flow() -> None:
    body = {**PARIS, "stream": True, "max_tokens": 200, "max_completion_tokens": 200,
            "stream_options": {"include_usage": True}}
    first = prefill_body(body, "xfer-1")
    assert first["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False,
                                           "transfer_id": "xfer-1"}
    assert (first["stream"], first["max_tokens"], first["max_completion_tokens"]) == (False, 1, 1)
    assert "stream_options" not in first and body["max_tokens"] == 200  # the original is intact
    prefiller = Prefiller("http://127.0.0.2:8010", "http://127.0.0.2:8998", {0: "engine-a"})
    second = decode_body(body, prefiller, 0, "xfer-1")
    assert second["kv_transfer_params"] == {
        "do_remote_decode": False, "do_remote_prefill": True,
        "remote_bootstrap_addr": "http://127.0.0.2:8998", "remote_engine_id": "engine-a",
        "transfer_id": "xfer-1"}
    assert second["stream"] is True and second["max_tokens"] == 200


def test_make_wrong_rewrites_json_and_sse() -> None:
    chat = {"choices": [{"message": {"content": "Paris"}}]}
    assert json.loads(make_wrong(json.dumps(chat).encode()))["choices"][0]["message"][
        "content"] == WRONG
    completion = {"choices": [{"text": "Paris"}]}
    assert json.loads(make_wrong(json.dumps(completion).encode()))["choices"][0]["text"] == WRONG
    sse = (b'data: {"choices": [{"delta": {"content": "Paris"}}]}\n\n'
           b'data: {"choices": [{"delta": {}}]}\n\ndata: [DONE]\n\n')
    out = make_wrong(sse)
    assert b"Paris" not in out and WRONG.encode() in out and out.endswith(b"data: [DONE]\n\n")


# --- the project's own proxy (real code) ----------------------------------------------------

def test_own_proxy_command_line() -> None:
    args = own_proxy.parse_args(["--prefill", "http://10.0.0.2:8010/", "10.0.0.3:8010",
                                 "--decode", "http://10.0.0.1:8020", "--decode",
                                 "http://10.0.0.4:8020", "--host", "0.0.0.0", "--port", "8000"])
    assert args.prefill == ["http://10.0.0.2:8010", "http://10.0.0.3:8010"]
    assert args.decode == ["http://10.0.0.1:8020", "http://10.0.0.4:8020"]
    assert (args.host, args.port, args.timeout) == ("0.0.0.0", 8000, 600.0)


@pytest.mark.parametrize("argv", [
    ["--decode", "http://a:1"],
    ["--prefill", "http://a:1"],
    ["--prefill", "ftp://a:1", "--decode", "http://b:1"],
    ["--prefill", "http://a:1", "--decode", "http://b:1", "--port", "x"],
])
def test_own_proxy_bad_command_line(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        own_proxy.parse_args(argv)
    assert exit_info.value.code == 2


def test_own_proxy_bodies() -> None:
    body = {**PARIS, "stream": False, "max_tokens": 200, "temperature": 0,
            "stream_options": {"include_usage": True}}
    first = own_proxy.prefill_request(body)
    assert first["kv_transfer_params"] == {
        "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
        "remote_block_ids": None, "remote_host": None, "remote_port": None}
    assert first["max_tokens"] == 1 and first["stream"] is False
    assert "stream_options" not in first and "max_completion_tokens" not in first
    assert own_proxy.prefill_request({**body, "max_completion_tokens": 9})[
        "max_completion_tokens"] == 1
    first["kv_transfer_params"]["remote_host"] = "mutated"  # each request gets its own copy
    assert own_proxy.PREFILL_KV_TRANSFER_PARAMS["remote_host"] is None
    params = {"do_remote_prefill": True, "remote_host": "10.0.0.2", "remote_port": 8998}
    second = own_proxy.decode_request(body, params)
    assert second["kv_transfer_params"] == params and second["max_tokens"] == 200
    assert "kv_transfer_params" not in body


def test_own_proxy_error_objects() -> None:
    error = own_proxy.ProxyError(502, "decode x answered HTTP 500: boom", "BadGatewayError",
                                 "http://d:8020/v1/chat/completions", 500)
    assert error.body == {"object": "error", "message": "decode x answered HTTP 500: boom",
                          "type": "BadGatewayError", "param": None, "code": 502,
                          "upstream": "http://d:8020/v1/chat/completions",
                          "upstream_status": 500}
    assert own_proxy._upstream_message(b'{"object":"error","message":"m1"}') == "m1"
    assert own_proxy._upstream_message(b'{"error":{"message":"m2"}}') == "m2"
    assert own_proxy._upstream_message(b'{"detail":"Not Found"}') == "Not Found"
    assert own_proxy._upstream_message(b"Internal Server Error") == "Internal Server Error"


def test_own_proxy_is_real_code_without_simulator_hooks() -> None:
    source = OWN_PROXY_PATH.read_text()
    assert "harness_sim" not in source and "HARNESS_SIM" not in source
    imported = {line.split()[1].split(".")[0] for line in source.splitlines()
                if line.startswith(("import ", "from "))}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
