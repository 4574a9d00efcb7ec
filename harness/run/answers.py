"""Sending a case's request and judging the answer (SPEC §7's pass rules).

The body is saved to `curl_response.log` whatever it is, so a person sees what came back.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import requests

from harness.errors import CaseFailed
from harness.text import one_line
from harness.servers.server import http_session

RESPONSE_LOG = "curl_response.log"


def post(url: str, payload: dict, timeout_s: float, save_to: Path, *,
         server: str) -> tuple[int, str]:
    """POST JSON; the body goes to `save_to`. A request that gets no answer, or whose body is
    cut off after its status line (vLLM's proxy answers 200, then breaks off when its decode
    fails), is a CaseFailed."""
    save_to.parent.mkdir(parents=True, exist_ok=True)
    with http_session() as session:  # no idle connection left for a server's shutdown
        try:
            answer = session.post(url, json=payload, timeout=timeout_s, stream=True)
        except requests.RequestException as exc:
            save_to.write_text(f"no answer: {type(exc).__name__}: {exc}\n")
            raise CaseFailed(f"POST {url} got no answer within {timeout_s:.0f}s "
                             f"({type(exc).__name__})", server=server) from None
        with answer:
            try:
                body = answer.content.decode(answer.encoding or "utf-8", "replace")
            except requests.RequestException as exc:
                save_to.write_text(f"HTTP {answer.status_code}, then the body was cut off: "
                                   f"{type(exc).__name__}: {exc}\n")
                raise CaseFailed(f"POST {url} answered HTTP {answer.status_code}, then its body "
                                 f"was cut off ({type(exc).__name__}): the server failed after "
                                 "it started answering", server=server) from None
    save_to.write_text(body)
    return answer.status_code, body


def require_json_ok(status: int, body: str, *, url: str, server: str) -> Any:
    """HTTP 200, a JSON body, and not an error object (`"object": "error"` or `"error": ...`)."""
    if status != 200:
        raise CaseFailed(f"POST {url} answered HTTP {status}: {one_line(body)}", server=server)
    try:
        data = json.loads(body)
    except ValueError:
        raise CaseFailed(f"POST {url} answered 200 but not JSON: {one_line(body)}",
                         server=server) from None
    if isinstance(data, dict) and (data.get("object") == "error" or "error" in data):
        raise CaseFailed(f"POST {url} answered an error object: {one_line(body)}", server=server)
    return data


def chat_content(data: Any, *, server: str) -> str:
    """`choices[0].message.content` of a chat completion."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise CaseFailed("the answer has no choices[0].message.content: "
                         f"{one_line(json.dumps(data))}", server=server) from None
    return content or ""


def require_match(text: str, pattern: str, *, server: str) -> None:
    if not re.search(pattern, text, re.IGNORECASE):
        raise CaseFailed(f"the answer does not match /{pattern}/i: {one_line(text)}", server=server)
