"""The simulator's pure parts: response shapes, launch_server arguments, knobs, tokenizer files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SIM_SITE = Path(__file__).resolve().parents[2] / "sim" / "site"
if str(SIM_SITE) not in sys.path:
    sys.path.append(str(SIM_SITE))

from harness_sim import TOKENIZER_DIR, api
from harness_sim.answers import answer_text
from harness_sim.sglang_args import parse_server_args
from harness_sim.sglang_main import reported_model_path, seconds_knob


def test_generate_single() -> None:
    out = api.generate({"text": "What is 1 + 2?", "sampling_params": {"temperature": 0}},
                       answer_text)
    assert isinstance(out, dict)
    assert out["text"] == "The answer is 3."
    meta = out["meta_info"]
    assert meta["finish_reason"]["type"] == "stop"
    assert meta["prompt_tokens"] == 5 and meta["completion_tokens"] == 4 and meta["id"]


def test_generate_batch_gives_a_list() -> None:
    out = api.generate({"text": ["What is 1 + 2?", "Where is the capital of France?"]},
                       answer_text)
    assert isinstance(out, list) and len(out) == 2
    assert "Paris" in out[1]["text"]


def test_generate_max_new_tokens_cuts_with_length_reason() -> None:
    out = api.generate({"text": "Let me tell you a short story",
                        "sampling_params": {"max_new_tokens": 3}}, answer_text)
    assert isinstance(out, dict)
    assert len(out["text"].split()) == 3
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 3}


def test_generate_input_ids_and_errors() -> None:
    assert isinstance(api.generate({"input_ids": [1, 2, 3]}, answer_text), dict)
    assert len(api.generate({"input_ids": [[1], [2]]}, answer_text)) == 2
    for bad in ({}, {"text": 5}, {"text": "x", "sampling_params": {"max_new_tokens": "x"}}):
        with pytest.raises(api.ApiError) as info:
            api.generate(bad, answer_text)
        assert info.value.status == 400


def test_chat_completion_shape() -> None:
    body = {"model": "default", "temperature": 0, "max_tokens": 64, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What animal is in the picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}]}]}
    out = api.chat_completion(body, answer_text, "Qwen/Qwen2.5-VL-7B-Instruct")
    assert out["object"] == "chat.completion" and out["model"] == "default"
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and "cat" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = out["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_completion_rejects_bad_messages() -> None:
    for bad in ({}, {"messages": []}, {"messages": ["hi"]}, {"messages": [{"content": "x"}]}):
        with pytest.raises(api.ApiError):
            api.chat_completion(bad, answer_text, "m")


def test_chat_stream_chunks() -> None:
    full = api.chat_completion({"messages": [{"role": "user", "content": "hi"}]},
                               answer_text, "m")
    chunks = api.chat_stream_chunks(full)
    assert chunks[0]["choices"][0]["delta"]["content"] == full["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_completion_list_prompt() -> None:
    out = api.completion({"prompt": ["What is 2 + 2?", "hi"], "max_tokens": 2}, answer_text, "m")
    assert [c["index"] for c in out["choices"]] == [0, 1]
    choice = out["choices"][0]
    assert choice["text"] == "The answer" and choice["finish_reason"] == "length"
    with pytest.raises(api.ApiError):
        api.completion({"prompt": 3}, answer_text, "m")


def test_error_body_is_an_openai_error_object() -> None:
    body = api.error_body(500, "boom", "InternalServerError")
    assert body["object"] == "error" and body["message"] == "boom" and body["code"] == 500


def test_models_list() -> None:
    out = api.models_list("Qwen/Qwen3-8B", "/tok")
    assert out["object"] == "list" and out["data"][0]["id"] == "Qwen/Qwen3-8B"


def test_server_args_the_cases_send() -> None:
    args = parse_server_args([
        "--model-path", "Qwen/Qwen3-8B", "--disaggregation-mode", "prefill", "--tp-size", "2",
        "--base-gpu-id=6", "--host", "127.0.0.1", "--port", "30001", "--language-only",
        "--encoder-urls", "http://127.0.0.1:30000", "http://127.0.0.1:30009",
        "--encoder-transfer-backend", "mooncake", "--hicache-ratio", "1.5",
        "--mem-fraction-static", "0.8", "--cuda-graph-max-bs", "8", "--enable-metrics"])
    assert (args.model_path, args.tp_size, args.base_gpu_id, args.port) == (
        "Qwen/Qwen3-8B", 2, 6, 30001)
    assert args.role == "prefill" and args.language_only
    assert args.encoder_urls == ["http://127.0.0.1:30000", "http://127.0.0.1:30009"]
    assert args.disaggregation_bootstrap_port == 8998
    assert args.unknown == ["--cuda-graph-max-bs", "8", "--enable-metrics"]
    assert "unknown" not in args.as_dict()


def test_server_args_defaults_and_aliases() -> None:
    args = parse_server_args(["--model", "m", "--tp", "2", "--trust-remote-code",
                              "--elastic-ep-backend", "mooncake", "--encoder-only"])
    assert (args.host, args.port, args.tp_size, args.role) == ("127.0.0.1", 30000, 2, "encoder")
    assert args.trust_remote_code and args.elastic_ep_backend == "mooncake"


def test_bad_disaggregation_mode_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        parse_server_args(["--disaggregation-mode", "middle"])
    assert info.value.code == 2


@pytest.mark.parametrize("raw,value", [("", 0.5), ("0", 0.0), ("1.25", 1.25), (" 2 ", 2.0)])
def test_seconds_knob(raw: str, value: float) -> None:
    assert seconds_knob({"HARNESS_SIM_STARTUP_S": raw}, "HARNESS_SIM_STARTUP_S", 0.5) == value


@pytest.mark.parametrize("raw", ["abc", "-1", "nan", "inf"])
def test_seconds_knob_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match="HARNESS_SIM_STARTUP_S"):
        seconds_knob({"HARNESS_SIM_STARTUP_S": raw}, "HARNESS_SIM_STARTUP_S", 0.5)


def test_reported_model_path() -> None:
    args = parse_server_args(["--model-path", "Qwen/Qwen3-8B"])
    assert reported_model_path(args, {}) == "Qwen/Qwen3-8B"
    assert reported_model_path(args, {"HARNESS_SIM_MODEL_DIR": "/models/x"}) == "/models/x"
    assert reported_model_path(args, {"HARNESS_SIM_MODEL_DIR": "auto"}) == str(TOKENIZER_DIR)


def _byte_level_alphabet() -> set[str]:
    """GPT-2's bytes-to-unicode map: the 256 symbols a byte-level BPE must know."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {chr(b) for b in printable} | {chr(256 + n) for n in range(len(extra))}


def test_bundled_tokenizer_files_are_valid() -> None:
    """A byte-level BPE that knows every byte, so the router can encode any text.

    (Checked here with the standard library; it was also loaded with the `tokenizers`
    package and by the real sglang-router when it was made: see make_tokenizer.py.)
    """
    tokenizer = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    model = tokenizer["model"]
    assert model["type"] == "BPE" and model["merges"]
    assert _byte_level_alphabet() <= set(model["vocab"])
    assert tokenizer["pre_tokenizer"]["type"] == tokenizer["decoder"]["type"] == "ByteLevel"
    assert sorted(model["vocab"].values()) == list(range(len(model["vocab"])))  # dense ids
    for added in tokenizer["added_tokens"]:
        assert model["vocab"].get(added["content"], added["id"]) == added["id"]
    specials = {t["content"] for t in tokenizer["added_tokens"] if t["special"]}
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["chat_template"]
    assert config["eos_token"] in specials and config["pad_token"] in specials
