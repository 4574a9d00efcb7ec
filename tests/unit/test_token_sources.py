"""Where the token comes from, and that every value learnt is masked from then on: GITHUB_TOKEN,
GH_TOKEN, or the logged-in GitHub CLI (a real executable named `gh` on PATH in these tests)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from harness import redaction

from harness.prep import wheel
from harness.settings import Settings


@pytest.fixture(autouse=True)
def fresh_secrets(monkeypatch):
    """Each test starts with nothing remembered, so none passes thanks to an earlier one."""
    monkeypatch.setattr(redaction, "_known", set())


def fake_gh(tmp_path: Path, monkeypatch, script: str) -> Path:
    """A `gh` on PATH that runs `script` (bash); it records its arguments in gh.args."""
    gh = tmp_path / "bin" / "gh"
    gh.parent.mkdir()
    gh.write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/gh.args\n{script}\n')
    gh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{gh.parent}{os.pathsep}{os.environ['PATH']}")
    return gh


def test_gh_token_is_read_and_masked_from_then_on(tmp_path, monkeypatch):
    secret = "gho_FromTheCliLogin0123456789"
    fake_gh(tmp_path, monkeypatch, f"echo '  {secret}  '")
    assert wheel.gh_cli_token("ghe.example") == secret
    assert (tmp_path / "gh.args").read_text().split() == ["auth", "token", "--hostname",
                                                          "ghe.example"]
    assert redaction.scrub(f"x{secret}x") == "x***x"


@pytest.mark.parametrize("script, why", [
    ("echo 'not logged in' >&2; exit 1", "gh auth token exited 1"),
    ("echo gho_PrintedButFailed000; exit 4", "gh auth token exited 4"),
    ("exit 0", "gh auth token exited 0"),
])
def test_gh_failures_mean_no_token_and_say_why(tmp_path, monkeypatch, caplog, script, why):
    fake_gh(tmp_path, monkeypatch, script)
    with caplog.at_level(logging.INFO, logger="harness.prep.wheel"):
        assert wheel.gh_cli_token("github.com") is None
    assert f"no token from the GitHub CLI ({why})" in [r.getMessage() for r in caplog.records]


def test_a_gh_that_hangs_is_given_up(tmp_path, monkeypatch, caplog):
    fake_gh(tmp_path, monkeypatch, "exec sleep 30")
    monkeypatch.setattr(wheel, "GH_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="harness.prep.wheel"):
        assert wheel.gh_cli_token("github.com") is None
    assert time.monotonic() - start < 10
    assert "no token from the GitHub CLI (TimeoutExpired)" in [
        r.getMessage() for r in caplog.records]


@pytest.fixture
def open_stdin():
    """The harness's stdin as a terminal or a CI pipe is: open, and nothing ever written to it
    (pytest's own stdin may already be at end-of-file, which would hide a child waiting)."""
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)


def test_a_gh_that_reads_stdin_is_not_left_waiting(tmp_path, monkeypatch, open_stdin):
    fake_gh(tmp_path, monkeypatch, "read -r line; echo gho_AfterReadingStdin1234")
    monkeypatch.setattr(wheel, "GH_TIMEOUT_S", 10.0)   # a gh left waiting gives no token
    assert wheel.gh_cli_token("github.com") == "gho_AfterReadingStdin1234"


def test_the_gh_lookup_is_for_the_api_host():
    asked = []
    settings = Settings.from_env({"GITHUB_API_URL": "https://ghe.example/api/v3"})
    token = wheel.resolve_token(settings, gh_lookup=lambda host: asked.append(host) or
                                "gho_EnterpriseCli99999999", environ={})
    assert asked == ["ghe.example"]
    assert token == wheel.Token("gho_EnterpriseCli99999999",
                                "the GitHub CLI login (gh auth token)")
    assert redaction.scrub("gho_EnterpriseCli99999999") == "***"
    assert wheel.gh_hostname("not a url") == "github.com"


def test_a_token_given_in_code_names_both_variables():
    settings = Settings.from_env({}, github_token="ghp_GivenInCode0000000")
    token = wheel.resolve_token(settings, environ={})
    assert token == wheel.Token("ghp_GivenInCode0000000", "GITHUB_TOKEN/GH_TOKEN")


def test_the_source_is_read_from_the_process_environment(monkeypatch):
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.setenv("GH_TOKEN", "ghp_InTheProcessEnv00000")
    token = wheel.resolve_token(Settings.from_env())
    assert token == wheel.Token("ghp_InTheProcessEnv00000", "GH_TOKEN")


def test_redact_exact_output():
    token = wheel.Token("ghs_ExactOutputToken1234567", "GITHUB_TOKEN")
    assert wheel.redact("x ghs_ExactOutputToken1234567 y", token) == "x *** y"
    assert wheel.redact("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    assert wheel.redact("token=abc other") == "token=*** other"


def test_a_url_in_a_wheel_message_exact_output():
    """The wheel's messages show a URL as harness.redaction's one policy does."""
    assert wheel.redact("https://h.example/a/b.whl") == "https://h.example/a/b.whl"
    assert wheel.redact("https://u:p@ss@h.example:8443/a.whl?sig=1") == (
        "https://h.example:8443/a.whl?sig=***")


# --- redaction, the module every writer goes through --------------------------------------------
def test_the_longest_secret_is_masked_first():
    redaction.remember("zz-secret")                  # sorts after the longer one...
    redaction.remember("aa-zz-secret-and-more")      # ...which contains it
    assert redaction.scrub("[aa-zz-secret-and-more]") == "[***]"


def test_short_values_are_not_remembered_but_six_characters_are():
    redaction.remember("ab3de")
    redaction.remember("q7w8e9")
    assert redaction.scrub("ab3de q7w8e9") == "ab3de ***"


def test_remember_environ_reads_every_secret_variable(monkeypatch):
    redaction.remember_environ({"GITHUB_TOKEN": "ghp_FromMapping111111", "OTHER": "zzzzzzzzzz"})
    assert redaction.scrub("ghp_FromMapping111111 zzzzzzzzzz") == "*** zzzzzzzzzz"
    monkeypatch.setenv("GH_ENTERPRISE_TOKEN", "ghe_FromProcess2222222")
    redaction.remember_environ()
    assert redaction.scrub("ghe_FromProcess2222222") == "***"


def test_credentials_inside_urls_are_remembered():
    redaction.remember_url_credentials(
        "MOONCAKE_WHEEL=https://ci:pa55word-x@h.example/w.whl?token=abcdef123&empty=&n=plain1")
    redaction.remember_url_credentials("")
    text = redaction.scrub("pa55word-x abcdef123 plain1")
    assert text == "*** *** plain1"


def test_url_credentials_and_secret_query_values_are_masked_exactly():
    assert redaction.url_without_credentials(
        "https://user:pw@h.example/w.whl?a=&token=abc&x=1") == (
        "https://h.example/w.whl?a=&token=***&x=1")
    assert redaction.url_without_credentials("mooncake==0.3") == "mooncake==0.3"


def test_the_log_filter_masks_messages_and_tracebacks(monkeypatch):
    secret = "ghp_InATraceback000000000"
    redaction.remember(secret)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("test_token_sources.filter")
    handler = Keep()
    handler.addFilter(redaction.SecretFilter())
    logger.addHandler(handler)
    try:
        logger.warning("sent %s", secret)
        try:
            raise RuntimeError(f"server echoed {secret}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert records[0] == "sent ***"
    assert records[1].startswith("failed\nTraceback") and "server echoed ***" in records[1]
    assert all(secret not in r for r in records)


def test_the_log_filter_passes_records_when_nothing_is_secret(monkeypatch):
    monkeypatch.setattr(redaction, "_known", set())
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain %s", ("text",), None)
    assert redaction.SecretFilter().filter(record) is True
    assert record.getMessage() == "plain text"
