"""The answer checks of the cases (SPEC §7's pass rules): which answers pass, and what the
failure says about the one that did not (the URL, the server, what came back)."""
from __future__ import annotations

import json

import pytest

from harness.errors import CaseFailed
from harness.run.answers import chat_content, require_json_ok, require_match

URL = "http://10.0.0.2:8000/v1/chat/completions"
CHAT = {"id": "c1", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "It is Paris."}}]}


def refused(check, *args, **kw) -> CaseFailed:
    with pytest.raises(CaseFailed) as caught:
        check(*args, **kw)
    return caught.value


# --- require_json_ok ----------------------------------------------------------------------------

def test_a_200_json_answer_is_returned_as_data():
    assert require_json_ok(200, json.dumps(CHAT), url=URL, server="router") == CHAT
    assert require_json_ok(200, "[1, 2]", url=URL, server="router") == [1, 2]


@pytest.mark.parametrize("status", [201, 204, 404, 503])
def test_any_status_but_200_fails_naming_the_status_url_server_and_body(status):
    exc = refused(require_json_ok, status, '{"detail": "no\nprefill\nworker"}', url=URL,
                  server="proxy")
    assert exc.message == (f'POST {URL} answered HTTP {status}: {{"detail": "no prefill '
                           'worker"}')
    assert exc.server == "proxy"


def test_a_200_that_is_not_json_fails_quoting_the_body():
    exc = refused(require_json_ok, 200, "<html>Bad\nGateway</html>", url=URL, server="router")
    assert exc.message == f"POST {URL} answered 200 but not JSON: <html>Bad Gateway</html>"
    assert exc.server == "router"
    assert exc.__cause__ is None and exc.__suppress_context__  # one line, no JSON traceback


@pytest.mark.parametrize("body", [
    '{"object": "error", "message": "model not found", "code": 404}',   # vLLM, SGLang
    '{"error": {"message": "prefill failed"}}',                       # OpenAI-style
    '{"error": null}',                                                 # the key alone decides
])
def test_a_200_error_object_fails_quoting_it(body):
    exc = refused(require_json_ok, 200, body, url=URL, server="proxy")
    assert exc.message == f"POST {URL} answered an error object: {body}"
    assert exc.server == "proxy"


@pytest.mark.parametrize("data", [
    {"object": "chat.completion", "message": "error"},  # "error" as a value is no error object
    {"object": "text_completion", "errors_seen": 0},
    ["error"],                                          # not an object at all
    "error",
])
def test_answers_that_merely_mention_error_pass(data):
    assert require_json_ok(200, json.dumps(data), url=URL, server="router") == data


# --- chat_content -------------------------------------------------------------------------------

def test_the_content_of_the_first_choice():
    second = {"message": {"role": "assistant", "content": "London"}}
    data = {**CHAT, "choices": [*CHAT["choices"], second]}
    assert chat_content(data, server="router") == "It is Paris."


@pytest.mark.parametrize("content", [None, ""])
def test_an_empty_or_null_content_reads_as_empty_text(content):
    data = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    assert chat_content(data, server="router") == ""


@pytest.mark.parametrize("data", [
    {"choices": []},
    {"choices": [{"text": "a completion, not a chat"}]},
    {"choices": [{"message": {"role": "assistant"}}]},
    {"object": "list", "data": []},
    [1, 2],
    None,
])
def test_an_answer_without_a_chat_message_fails_quoting_it(data):
    exc = refused(chat_content, data, server="proxy")
    assert exc.message == ("the answer has no choices[0].message.content: "
                           + json.dumps(data))
    assert exc.server == "proxy"
    assert exc.__suppress_context__


# --- require_match -------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["The capital is Paris.", "PARIS", "paris, of course"])
def test_an_answer_matching_the_pattern_in_any_case_passes(text):
    assert require_match(text, r"paris", server="proxy") is None


def test_the_pattern_is_a_regular_expression_searched_anywhere():
    require_match("I see a kitten on the mat", r"cat|kitten|feline", server="router")
    exc = refused(require_match, "I see a dog", r"cat|kitten|feline", server="router")
    assert exc.message == "the answer does not match /cat|kitten|feline/i: I see a dog"


def test_an_answer_that_does_not_match_fails_quoting_it_on_one_line():
    exc = refused(require_match, "It is\nLondon.", r"paris", server="proxy")
    assert exc.message == "the answer does not match /paris/i: It is London."
    assert exc.server == "proxy"
