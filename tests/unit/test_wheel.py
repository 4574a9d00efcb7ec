"""Unit tests of harness.prep.wheel's pure parts: sources, token choice, messages, zips,
redaction."""
from __future__ import annotations

import logging
import os
import stat
import zipfile
from pathlib import Path

import pytest

from harness.prep import wheel
from harness.errors import WheelError
from harness.settings import Settings

SECRET = "ghp_SECRETtoken0123456789"


def settings(**overrides) -> Settings:
    return Settings.from_env({}, **overrides)


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


# --- source classification ----------------------------------------------------------------
@pytest.mark.parametrize("value, kind", [
    ("", "artifact"),
    ("   ", "artifact"),
    ("https://example.invalid/x/mooncake_transfer_engine-0.3.7-py3-none-any.whl", "url"),
    ("HTTP://example.invalid/artifact.zip", "url"),
    ("mooncake-transfer-engine==0.3.7", "pip"),
    ("mooncake-transfer-engine", "pip"),
    ("mooncake-transfer-engine>=0.3,<0.4", "pip"),
    ("mooncake-transfer-engine @ https://example.invalid/m.whl", "pip"),
    ("mooncake-transfer-engine@file:///tmp/m.whl", "pip"),
    ("git+https://example.invalid/Mooncake.git", "pip"),
    ("/no/such/dir/mooncake.whl", "path"),
    ("./wheels", "path"),
    ("~/wheels", "path"),
    ("mooncake_transfer_engine-0.3.7-cp312-cp312-manylinux_2_35_x86_64.whl", "path"),
    ("artifact.zip", "path"),
])
def test_classify_source(value: str, kind: str) -> None:
    assert wheel.classify_source(value).kind == kind


def test_classify_existing_bare_name_is_a_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wheels").mkdir()
    assert wheel.classify_source("wheels") == wheel.Source("path", "wheels")
    assert wheel.classify_source("~/x.whl").value == str(Path("~/x.whl").expanduser())


# --- token choice -------------------------------------------------------------------------
def no_gh(hostname: str) -> None:
    raise AssertionError("gh must not be asked when a token is set")


def test_token_from_github_token_names_its_variable() -> None:
    token = wheel.resolve_token(settings(github_token=SECRET), gh_lookup=no_gh,
                                environ={"GITHUB_TOKEN": SECRET})
    assert token == wheel.Token(SECRET, "GITHUB_TOKEN")
    assert SECRET not in repr(token)


def test_token_from_gh_token_names_its_variable() -> None:
    s = Settings.from_env({"GH_TOKEN": SECRET})
    token = wheel.resolve_token(s, gh_lookup=no_gh, environ={"GH_TOKEN": SECRET})
    assert token is not None and token.source == "GH_TOKEN"


def test_token_falls_back_to_the_gh_cli_for_the_api_host() -> None:
    asked: list[str] = []

    def gh(hostname: str) -> str:
        asked.append(hostname)
        return SECRET

    token = wheel.resolve_token(settings(), gh_lookup=gh, environ={})
    assert token is not None and token.value == SECRET and "gh auth token" in token.source
    assert asked == ["github.com"]


def test_no_token_when_gh_has_none() -> None:
    assert wheel.resolve_token(settings(), gh_lookup=lambda host: None, environ={}) is None


@pytest.mark.parametrize("api, host", [
    ("https://api.github.com", "github.com"),
    ("https://ghe.example.com/api/v3", "ghe.example.com"),
    ("https://api.tenant.ghe.com", "tenant.ghe.com"),
    ("http://127.0.0.1:8080", "127.0.0.1"),
])
def test_gh_hostname(api: str, host: str) -> None:
    assert wheel.gh_hostname(api) == host


def fake_gh(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    gh = bin_dir / "gh"
    gh.write_text("#!/bin/sh\n" + script)
    gh.chmod(gh.stat().st_mode | stat.S_IEXEC)


def test_gh_cli_token_runs_gh_auth_token(tmp_path: Path, monkeypatch) -> None:
    fake_gh(tmp_path / "bin", f'[ "$1 $2 $3 $4" = "auth token --hostname github.com" ] '
                              f'&& echo {SECRET} && exit 0\nexit 3\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert wheel.gh_cli_token("github.com") == SECRET


def test_gh_cli_failure_means_no_token(tmp_path: Path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="harness.prep.wheel")
    fake_gh(tmp_path / "bin", "echo 'not logged in' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert wheel.gh_cli_token("github.com") is None
    assert "exited 1" in caplog.text


def test_no_gh_on_path_means_no_token(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert wheel.gh_cli_token("github.com") is None


# --- messages -----------------------------------------------------------------------------
TOKEN = wheel.Token(SECRET, "GITHUB_TOKEN")


@pytest.mark.parametrize("status", [401, 403, 404, 410, 422, 500])
@pytest.mark.parametrize("token", [TOKEN, None])
def test_http_messages_are_one_line_and_never_hold_the_token(status, token) -> None:
    error = wheel.artifact_http_error(status, "4242", "kvcache-ai/Mooncake", token,
                                      f"echo of Bearer {SECRET}")
    text = str(error)
    assert "\n" not in text and SECRET not in text and SECRET not in error.details()
    assert f"{status}" in text
    assert isinstance(error, WheelError)


def test_401_with_a_token_says_where_it_came_from() -> None:
    text = str(wheel.artifact_http_error(401, "4242", "o/r", TOKEN, "Bad credentials"))
    assert text == ("HTTP 401 for artifact 4242 of o/r: the token from GITHUB_TOKEN was rejected "
                    "(wrong, expired or revoked); GitHub requires a token to download artifacts, "
                    "even of public repositories (GitHub said: Bad credentials)")


def test_401_without_a_token_says_how_to_get_one() -> None:
    text = str(wheel.artifact_http_error(401, "4242", "o/r", None))
    assert "no token: set GITHUB_TOKEN or GH_TOKEN, or log in with `gh auth login`" in text
    assert "even of public repositories" in text


def test_403_404_410_are_distinct() -> None:
    texts = {s: str(wheel.artifact_http_error(s, "4242", "o/r", TOKEN)) for s in (403, 404, 410)}
    assert "may not read this repository's Actions artifacts" in texts[403]
    assert texts[404].startswith("HTTP 404: artifact 4242 not found in repository o/r")
    assert "has expired" in texts[410] and "ARTIFACT_ID" in texts[410]
    assert len(set(texts.values())) == 3


def test_redact_hides_presigned_queries_credentials_and_the_token() -> None:
    text = (f"HTTPSConnectionPool: Max retries exceeded with url: /blob/x.zip?sig=abc&se=1 "
            f"(https://user:pw@blob.example/x.zip?sig=abc) Bearer {SECRET}")
    out = wheel.redact(text, TOKEN)
    assert "sig=abc" not in out and "pw@" not in out and SECRET not in out
    assert "url: /blob/x.zip?sig=***&se=1 (https://blob.example/x.zip?sig=***)" in out
    assert wheel.redact("https://u:p@h:1/a/b.whl?x=1#f") == "https://h:1/a/b.whl?x=1#f"


# --- find_wheel and zips ------------------------------------------------------------------
def test_find_wheel(tmp_path: Path) -> None:
    assert wheel.find_wheel(tmp_path / "missing") is None
    assert wheel.find_wheel(tmp_path) is None
    (tmp_path / ".download-x.part").write_bytes(b"")
    first = tmp_path / "mooncake_transfer_engine-0.3.7-py3-none-any.whl"
    first.write_bytes(b"w")
    assert wheel.find_wheel(tmp_path) == first
    (tmp_path / "mooncake_transfer_engine-0.3.6-py3-none-any.whl").write_bytes(b"w")
    with pytest.raises(WheelError, match="holds 2 wheels, expected exactly one: .*0.3.6.*0.3.7"):
        wheel.find_wheel(tmp_path)


def test_extract_takes_the_basename_only(tmp_path: Path) -> None:
    out = tmp_path / "whls"
    out.mkdir()
    archive = make_zip(tmp_path / "a.zip", {"../../evil/mooncake_x-1-py3-none-any.whl": b"w",
                                            "README.txt": b"r"})
    got = wheel.extract_wheel(archive, out, "artifact 1 of o/r")
    assert got == out / "mooncake_x-1-py3-none-any.whl" and got.read_bytes() == b"w"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.zip", "mooncake_x-1-py3-none-any.whl",
                                                           "whls"]


def test_extract_messages(tmp_path: Path) -> None:
    none = make_zip(tmp_path / "none.zip", {"dist/readme.txt": b"x"})
    with pytest.raises(WheelError) as caught:
        wheel.extract_wheel(none, tmp_path, "artifact 1 of o/r")
    assert str(caught.value) == ("artifact 1 of o/r holds no wheel (*.whl); "
                                 "it contains: dist/readme.txt")
    two = make_zip(tmp_path / "two.zip", {"a/m_a-1-py3-none-any.whl": b"1",
                                          "m_b-1-py3-none-any.whl": b"2"})
    with pytest.raises(WheelError) as caught:
        wheel.extract_wheel(two, tmp_path, "artifact 1 of o/r")
    assert str(caught.value) == ("artifact 1 of o/r holds 2 wheels, expected exactly one: "
                                 "m_a-1-py3-none-any.whl, m_b-1-py3-none-any.whl")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(WheelError, match=r"is not a zip archive \(25 bytes, starting b'<html>"):
        wheel.extract_wheel(junk, tmp_path, "artifact 1 of o/r")


def test_missing_artifact_settings(tmp_path: Path) -> None:
    with pytest.raises(WheelError) as caught:
        wheel.fetch_wheel(settings(git_repo="o/r"), tmp_path / "whls", gh_lookup=no_gh)
    assert str(caught.value) == wheel.MISSING_SOURCE == (
        "set ARTIFACT_ID and GIT_REPO (the GitHub Actions artifact with the Mooncake wheel) "
        "or MOONCAKE_WHEEL (a path, URL or pip requirement)")


@pytest.mark.parametrize("overrides, message", [
    ({"artifact_id": "12ab", "git_repo": "o/r"}, "ARTIFACT_ID must be a number"),
    ({"artifact_id": "12", "git_repo": "o/r/../x"}, "GIT_REPO must be owner/name"),
])
def test_bad_artifact_settings(tmp_path: Path, overrides, message) -> None:
    with pytest.raises(WheelError, match=message):
        wheel.fetch_wheel(settings(**overrides), tmp_path, gh_lookup=no_gh)


def test_url_must_name_a_wheel_or_zip(tmp_path: Path) -> None:
    with pytest.raises(WheelError, match="must name a .whl or .zip file: https://h/x\\?sig=\\*\\*\\*$"):
        wheel.fetch_wheel(settings(mooncake_wheel="https://u:p@h/x?sig=1"), tmp_path)


def test_pip_gets_an_argv_and_reports_its_failure(tmp_path: Path, monkeypatch) -> None:
    seen: dict = {}

    class Done:
        returncode, stdout = 1, "Looking in links: /x\n"
        stderr = "ERROR: No matching distribution found for mooncake-transfer-engine==9\n"

    def run(argv, **kwargs):
        seen["argv"] = argv
        return Done()

    monkeypatch.setattr(wheel.subprocess, "run", run)
    with pytest.raises(WheelError) as caught:
        wheel.fetch_wheel(settings(mooncake_wheel="mooncake-transfer-engine==9"), tmp_path)
    assert seen["argv"][1:] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                "--no-input", "--dest", str(tmp_path),
                                "mooncake-transfer-engine==9"]
    assert str(caught.value) == ("pip download of 'mooncake-transfer-engine==9' failed (exit 1): "
                                 "ERROR: No matching distribution found for "
                                 "mooncake-transfer-engine==9")
    assert "Looking in links" in (caught.value.log_tail or "")
    assert os.listdir(tmp_path) == []


# --- the token, bare, anywhere -------------------------------------------------------------------
@pytest.mark.parametrize("template", [
    "{t}", "error: {t} was rejected", "x{t}y", "Authorization: token {t}", "'{t}'",
    "https://api.example/zip?access_token={t}", "{{\"token\": \"{t}\"}}", "{t}\n{t}",
])
def test_redact_masks_the_bare_token_anywhere(template) -> None:
    bare = "ghp_BAREtoken9876543210"
    text = template.format(t=bare)
    assert bare not in wheel.redact(text, wheel.Token(bare, "GITHUB_TOKEN"))
    assert "ghp_BARE" not in wheel.redact(text, wheel.Token(bare, "GITHUB_TOKEN"))


def test_redact_masks_a_token_it_was_not_handed_once_known() -> None:
    """A message built where the Token object is not at hand (a URL download's error, pip's
    output) still loses a token the harness has seen (from the settings or from gh)."""
    from harness import redaction
    gh_value = "gho_fromTheCLI55555555"
    wheel.resolve_token(settings(), gh_lookup=lambda host: gh_value, environ={})
    assert gh_value not in wheel.redact(f"pip said: bad {gh_value} here")
    assert gh_value not in redaction.scrub(f"<{gh_value}>")


def test_children_never_get_the_token(monkeypatch) -> None:
    from harness import redaction
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_childENV11111111")
    monkeypatch.setenv("GH_TOKEN", "ghp_childENV22222222")
    monkeypatch.setenv("SOME_OTHER", "holds ghp_childENV11111111 too")
    monkeypatch.setenv("PLAIN", "kept")
    redaction.remember_environ()
    env = redaction.child_environ({"EXTRA": "1"})
    assert "GITHUB_TOKEN" not in env and "GH_TOKEN" not in env and "SOME_OTHER" not in env
    assert env["PLAIN"] == "kept" and env["EXTRA"] == "1"


def test_log_filter_masks_the_token_in_messages_and_arguments(caplog) -> None:
    from harness import redaction
    value = "ghp_logLINE333333333"
    redaction.remember(value)
    record = logging.LogRecord("harness.x", logging.INFO, __file__, 1, "sent %s to %s",
                               (f"Bearer {value}", "api"), None)
    assert redaction.SecretFilter().filter(record)
    assert value not in record.getMessage() and "api" in record.getMessage()
