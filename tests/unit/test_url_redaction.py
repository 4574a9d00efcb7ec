"""The one way a URL is shown (harness.redaction.url_without_credentials), wherever the harness
writes one: the settings' repr and .shrc, the wheel's stamp, messages and log lines. No
`user:password@`, no credential value; everything else as it was, so a reader can still tell
which URL it was (SPEC §3 "Secrets")."""
from __future__ import annotations

import pytest

from harness import redaction
from harness.errors import WheelError
from harness.prep import wheel
from harness.settings import Settings
from harness.shrc import read_shrc, write_shrc

shown = redaction.url_without_credentials


@pytest.fixture(autouse=True)
def fresh_secrets(monkeypatch):
    """Nothing remembered at the start, so each masking seen here is the URL policy's own."""
    monkeypatch.setattr(redaction, "_known", set())


S3 = ("https://bucket.s3.amazonaws.com/wheels/mooncake-0.3.whl?X-Amz-Algorithm=AWS4-HMAC-SHA256"
      "&X-Amz-Credential=AKIAEXAMPLE%2F20250101%2Fus-east-1&X-Amz-Date=20250101T000000Z"
      "&X-Amz-Expires=3600&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE"
      "&X-Amz-Signature=9f86d081884c7d65")
AZURE = ("https://results.blob.core.windows.net/actions-results/abc/x.zip?rscd=attachment"
         "&se=2025-01-01T00%3A10%3A00Z&sig=K2JfA%2BbcdEXAMPLE%3D&sp=r&sv=2021-12-02")


def test_a_presigned_s3_url_keeps_what_tells_it_apart_and_masks_what_opens_it():
    assert shown(S3) == (
        "https://bucket.s3.amazonaws.com/wheels/mooncake-0.3.whl?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=***&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600"
        "&X-Amz-Security-Token=***&X-Amz-Signature=***")


def test_a_presigned_blob_url_keeps_its_expiry_verbatim():
    """The expiry (`se`) is what a reader of a 403 needs; it stays as GitHub wrote it."""
    assert shown(AZURE) == (
        "https://results.blob.core.windows.net/actions-results/abc/x.zip?rscd=attachment"
        "&se=2025-01-01T00%3A10%3A00Z&sig=***&sp=r&sv=2021-12-02")


@pytest.mark.parametrize("url, expected", [
    ("https://ci:pa55@h.example/w.whl", "https://h.example/w.whl"),
    ("HTTP://ci:pa55@h.example:8080/w.whl", "HTTP://h.example:8080/w.whl"),
    ("https://ghp_OnlyUserPart123@github.com/o/r", "https://github.com/o/r"),
    ("https://a@b:c@h.example/p?q=1", "https://h.example/p?q=1"),
    ("https://h.example/p/user@home.whl", "https://h.example/p/user@home.whl"),
    ("https://h.example/w.whl#sha256=abc123", "https://h.example/w.whl#sha256=abc123"),
    ("https://h.example/cb#access_token=abc123&state=s1", "https://h.example/cb#access_token=***"
                                                          "&state=s1"),
    ("https://h.example/w.whl?Token=&v=2", "https://h.example/w.whl?Token=***&v=2"),
    ("https://h.example/a?next=/b?api_key=k1k1k1", "https://h.example/a?next=/b?api_key=***"),
])
def test_credentials_go_and_the_rest_of_the_url_stays(url, expected):
    assert shown(url) == expected


def test_urls_inside_a_text_are_shown_the_same_way():
    text = ("mooncake @ https://u:pw@h.example/w.whl?token=t0k3n&v=1 failed: Max retries "
            "exceeded with url: /w.whl?token=t0k3n&v=1 (Caused by 'https://h.example/w.whl"
            "?sig=s1g')")
    assert shown(text) == (
        "mooncake @ https://h.example/w.whl?token=***&v=1 failed: Max retries exceeded with url: "
        "/w.whl?token=***&v=1 (Caused by 'https://h.example/w.whl?sig=***')")


@pytest.mark.parametrize("text", ["mooncake==0.3", "mooncake-transfer-engine>=0.3; "
                                  "python_version>'3.9'", "ftp://h/x.whl", "see the keys: one=1"])
def test_texts_without_url_credentials_are_unchanged(text):
    assert shown(text) == text


def test_a_value_in_parentheses_loses_nothing_but_the_secret():
    assert shown("(GET https://h.example/x.zip?sig=abc)") == "(GET https://h.example/x.zip?sig=***)"


def test_what_the_policy_hides_in_a_setting_is_remembered_as_written_and_decoded():
    redaction.remember_url_credentials(
        "https://ci:pa55word-x@h.example/w.whl?v=plain1&X-Amz-Credential=AKIA%2F2025%2Fus&t=1")
    assert redaction.scrub("pa55word-x AKIA%2F2025%2Fus AKIA/2025/us plain1") == (
        "*** *** *** plain1")


def test_a_user_without_a_password_is_not_taken_for_a_secret():
    redaction.remember_url_credentials("https://deploy-bot@h.example/w.whl")
    assert redaction.known_secrets() == []


def test_settings_repr_and_shrc_show_urls_by_the_same_policy(tmp_path):
    settings = Settings.from_env({"MOONCAKE_WHEEL": AZURE.replace("https://", "https://u:pw99x@"),
                                  "ROUTER_PIP_INDEX_URL": "https://h.example/simple/"})
    assert f"mooncake_wheel='{shown(AZURE)}'" in repr(settings)
    write_shrc(tmp_path / ".shrc", settings, {})
    assert read_shrc(tmp_path / ".shrc")["MOONCAKE_WHEEL"] == shown(AZURE)


def test_the_wheel_stamp_records_the_url_by_the_same_policy(tmp_path):
    body = tmp_path / "mooncake_transfer_engine-0.3-py3-none-any.whl"
    body.write_bytes(b"PK")
    settings = Settings.from_env({"MOONCAKE_WHEEL": "https://u:pw99x@h.example/w.whl?sig=s1gs1g"})
    wheel.write_stamp(tmp_path, settings, body)
    stamp = (tmp_path / wheel.STAMP_NAME).read_text()
    assert "https://h.example/w.whl?sig=***" in stamp
    assert "pw99x" not in stamp and "s1gs1g" not in stamp


def test_a_wheel_url_error_names_the_url_without_its_secrets(tmp_path):
    url = "https://u:pw99x@h.example/dl/mooncake.tar.gz?X-Amz-Signature=s1gs1g&rev=7"
    with pytest.raises(WheelError) as caught:
        wheel.fetch_wheel(Settings.from_env({"MOONCAKE_WHEEL": url}), tmp_path)
    assert str(caught.value) == ("MOONCAKE_WHEEL URL must name a .whl or .zip file: "
                                 "https://h.example/dl/mooncake.tar.gz?X-Amz-Signature=***&rev=7")


def test_the_token_never_shows_even_in_a_parameter_with_an_innocent_name():
    token = wheel.Token("ghs_InAnInnocentParam12345", "GITHUB_TOKEN")
    text = "GET https://api.example/zip?t=ghs_InAnInnocentParam12345&page=2 failed"
    assert wheel.redact(text, token) == "GET https://api.example/zip?t=***&page=2 failed"
