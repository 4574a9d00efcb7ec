"""The GitHub token never shows, wherever it appears in a text (SPEC §3 "Secrets").

Earlier tests only ever put the token after `Bearer `, where a pattern masks any word; these put
the bare value where an echoing server, a proxy error or an exception would: inside JSON, in a
sentence, glued to other characters, in a URL's path and query.
"""
from __future__ import annotations

import pytest

from harness.prep import wheel

SECRET = "ghs_BareTokenValue0123456789abcdefXYZ"
TOKEN = wheel.Token(SECRET, "GITHUB_TOKEN")

PLACES = [
    SECRET,
    f"{SECRET} is not a valid token",
    f'{{"message": "Bad credentials", "token_echo": "{SECRET}"}}',
    f"error:{SECRET}:end",
    f"proxy said ({SECRET})",
    f"https://api.example/repos/{SECRET}/zip",
    f"https://api.example/zip?access_token={SECRET}&x=1",
    f"Authorization: Bearer {SECRET}",
    f"two of them: {SECRET} and {SECRET}",
]


@pytest.mark.parametrize("text", PLACES)
def test_redact_masks_the_bare_token(text):
    out = wheel.redact(text, TOKEN)
    assert SECRET not in out
    assert SECRET[4:-4] not in out  # no recognisable middle part either


def test_redact_keeps_the_rest_of_the_text():
    out = wheel.redact(f"GitHub said {SECRET} was revoked", TOKEN)
    assert out.startswith("GitHub said ") and out.endswith(" was revoked")
    assert "***" in out


@pytest.mark.parametrize("status", [401, 403, 404, 410, 500])
def test_http_errors_never_echo_a_bare_token(status):
    error = wheel.artifact_http_error(status, "4242", "kvcache-ai/Mooncake", TOKEN,
                                      f'{{"message": "{SECRET} is invalid"}}')
    assert SECRET not in str(error) and SECRET not in error.details()
    assert str(status) in str(error)


def test_the_token_is_not_in_its_repr():
    assert SECRET not in repr(TOKEN) and "GITHUB_TOKEN" in repr(TOKEN)


def test_the_token_is_not_in_the_settings_repr_or_shrc_items():
    from harness.settings import Settings
    # A value of its own: reading settings may remember it process-wide for masking, which
    # must not help the tests above pass.
    secret = "ghp_SettingsOnlyToken9876543210zyxw"
    settings = Settings.from_env({"GITHUB_TOKEN": secret})
    assert settings.github_token == secret
    assert secret not in repr(settings) and secret not in str(settings)
    assert all(secret not in value for _, value in settings.env_items())


def test_an_empty_token_masks_nothing():
    assert wheel.redact("GitHub said: no", wheel.Token("", "GITHUB_TOKEN")) == "GitHub said: no"
