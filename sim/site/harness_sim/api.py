"""Request bodies -> response bodies, in SGLang's native and OpenAI's shapes.

Pure functions (no sockets) so they are easy to test and to reuse by other simulated
servers. `answer` is the function that turns a prompt into text: normally
`answers.answer_text`, or a constant for the `wrong-answer` fault.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from harness_sim.answers import count_tokens, prompt_from_messages, truncate

Answer = Callable[[str], str]


class ApiError(Exception):
    """A request the simulator refuses; becomes an OpenAI-style error object."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def error_body(status: int, message: str, kind: str = "BadRequestError") -> dict[str, Any]:
    """The error object SGLang's OpenAI layer answers (`"object": "error"`)."""
    return {"object": "error", "message": message, "type": kind, "param": None, "code": status}


def _int_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{name} must be an integer, got {value!r}")
    return int(value)


def _new_id() -> str:
    return uuid.uuid4().hex


# --- SGLang native /generate -------------------------------------------------------------

def _one_generation(prompt: str, sampling: Mapping[str, Any], answer: Answer,
                    rid: Any) -> dict[str, Any]:
    max_new = _int_or_none(sampling.get("max_new_tokens"), "sampling_params.max_new_tokens")
    text, cut = truncate(answer(prompt), max_new)
    finish: dict[str, Any] = ({"type": "length", "length": max_new} if cut
                              else {"type": "stop", "matched": None})
    return {
        "text": text,
        "meta_info": {
            "id": str(rid) if rid is not None else _new_id(),
            "finish_reason": finish,
            "prompt_tokens": count_tokens(prompt),
            "completion_tokens": count_tokens(text),
            "cached_tokens": 0,
            "e2e_latency": 0.001,
        },
    }


def generate(body: Mapping[str, Any], answer: Answer) -> dict[str, Any] | list[dict[str, Any]]:
    """SGLang's `/generate`: `text` (str or list) + `sampling_params` -> text + meta_info.

    A list input gives a list output, as SGLang does for batch requests.
    """
    text = body.get("text")
    input_ids = body.get("input_ids")
    if text is None and input_ids is None:
        raise ApiError(400, "Either text or input_ids should be provided.")
    if text is None:
        # Token ids carry no words we could read; answer as for an unknown prompt.
        if not isinstance(input_ids, list):
            raise ApiError(400, "input_ids must be a list")
        batch = bool(input_ids) and isinstance(input_ids[0], list)
        prompts: list[str] | str = [""] * len(input_ids) if batch else ""
    elif isinstance(text, str) or (isinstance(text, list)
                                   and all(isinstance(t, str) for t in text)):
        prompts = text
    else:
        raise ApiError(400, "text must be a string or a list of strings")
    sampling = body.get("sampling_params") or {}
    rid = body.get("rid")
    if isinstance(prompts, str):
        if not isinstance(sampling, Mapping):
            raise ApiError(400, "sampling_params must be an object")
        return _one_generation(prompts, sampling, answer, rid)
    samplings = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
    rids = rid if isinstance(rid, list) else [None] * len(prompts)
    if len(samplings) != len(prompts) or len(rids) != len(prompts):
        raise ApiError(400, "sampling_params/rid lists must match the text list in length")
    return [_one_generation(p, s if isinstance(s, Mapping) else {}, answer, r)
            for p, s, r in zip(prompts, samplings, rids, strict=False)]


# --- OpenAI /v1/chat/completions and /v1/completions --------------------------------------

def _usage(prompt: str, completion: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = count_tokens(prompt), count_tokens(completion)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return _int_or_none(value, "max_tokens")


def chat_completion(body: Mapping[str, Any], answer: Answer, model: str) -> dict[str, Any]:
    """OpenAI chat completion; `content` may be a string or a list of parts (text/image_url)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list")
    for message in messages:
        if not isinstance(message, Mapping) or "role" not in message:
            raise ApiError(400, "each message must be an object with a role")
    prompt = prompt_from_messages(messages)
    content, cut = truncate(answer(prompt), _max_tokens(body))
    return {
        "id": f"chatcmpl-{_new_id()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body.get("model") or model),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "reasoning_content": None,
                        "tool_calls": None},
            "logprobs": None,
            "finish_reason": "length" if cut else "stop",
            "matched_stop": None,
        }],
        "usage": _usage(prompt, content),
    }


def completion(body: Mapping[str, Any], answer: Answer, model: str) -> dict[str, Any]:
    """OpenAI text completion; `prompt` may be a string or a list of strings."""
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, "prompt must be a string or a list of strings")
    limit = _max_tokens(body)
    choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for index, one in enumerate(prompts):
        text, cut = truncate(answer(one), limit)
        choices.append({"index": index, "text": text, "logprobs": None,
                        "finish_reason": "length" if cut else "stop", "matched_stop": None})
        for key, value in _usage(one, text).items():
            usage[key] += value
    return {"id": f"cmpl-{_new_id()}", "object": "text_completion", "created": int(time.time()),
            "model": str(body.get("model") or model), "choices": choices, "usage": usage}


def chat_stream_chunks(full: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A finished chat completion as the chunks of a `stream: true` answer (one content delta)."""
    choice = full["choices"][0]
    base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"],
            "model": full["model"]}
    return [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                    "content": choice["message"]["content"]},
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}],
         "usage": full["usage"]},
    ]


def models_list(model: str, root: str) -> dict[str, Any]:
    """OpenAI `/v1/models` for a server that serves one model."""
    return {"object": "list", "data": [{"id": model, "object": "model",
                                        "created": int(time.time()), "owned_by": "sglang",
                                        "root": root, "max_model_len": 32768}]}

