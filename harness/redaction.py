"""Secrets stay secret: out of children's environments, files and log lines (SPEC §3).

The GitHub token is the one secret. It arrives as `GITHUB_TOKEN`/`GH_TOKEN` or from `gh auth
token`; every value the harness learns is remembered here (`remember`), so that:

- `child_environ` gives every process the harness spawns this machine's environment without
  the secret variables, and without any other variable that carries a remembered value;
- `scrub` masks remembered values anywhere in a text (a bare token, not only after `Bearer `);
- `SecretFilter`, installed on the log handlers, passes every log record through `scrub`;
- `url_without_credentials` is the one policy for URLs in what is written (settings, .shrc,
  the wheel's messages and logs): `user:password@` dropped, the value of every credential-like
  query or fragment parameter (`?sig=`, `&token=`, `X-Amz-Signature=`) masked, everything else
  kept as it was, so a reader can still tell which URL it was; `remember_url_credentials`
  treats those parts of a setting's URL as secrets too.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Mapping
from urllib.parse import unquote_plus

# Variables that hold a GitHub token (the harness's own two, and the GitHub CLI's others).
SECRET_ENV_NAMES = ("GITHUB_TOKEN", "GH_TOKEN", "GH_ENTERPRISE_TOKEN", "GITHUB_ENTERPRISE_TOKEN")
MASK = "***"
# Shorter values are not masked in free text: they would shred ordinary words.
MIN_SECRET_LEN = 6
# An http(s) URL's `user:password@` (up to the last @ before the path), in any text.
_USERINFO = re.compile(r"(?i)(?P<scheme>https?://)(?P<userinfo>[^\s'\"<>/?#]*)@")
# A query or fragment parameter whose name says its value is a credential (pre-signed URLs,
# API keys): `?sig=...`, `&X-Amz-Signature=...`, `#access_token=...`; in a URL or in free text
# (an error message quotes a path and its query without the host).
_SECRET_PARAM = re.compile(r"(?i)(?P<name>[?&#][^=&#?\s'\"<>]*"
                           r"(?:token|key|sig|signature|secret|password|auth|credential)"
                           r"[^=&#?\s'\"<>]*=)(?P<value>[^&#\s'\"<>()]*)")

_known: set[str] = set()
_known_lock = threading.Lock()


def remember(value: str | None) -> None:
    """From now on, mask `value` wherever `scrub` or the log filter sees it."""
    if value and len(value.strip()) >= MIN_SECRET_LEN:
        with _known_lock:
            _known.add(value.strip())


def remember_environ(environ: Mapping[str, str] | None = None) -> None:
    """Remember the token values this environment holds (called once when settings are read)."""
    environ = os.environ if environ is None else environ
    for name in SECRET_ENV_NAMES:
        remember(environ.get(name))


def remember_url_credentials(text: str) -> None:
    """Remember the password of every URL in `text` and every credential-like parameter's
    value (a MOONCAKE_WHEEL such as https://user:pass@host/w.whl?token=...), as written and
    decoded."""
    for match in _USERINFO.finditer(text):
        remember(match["userinfo"].partition(":")[2])
    for match in _SECRET_PARAM.finditer(text):
        remember(match["value"])
        remember(unquote_plus(match["value"]))


def known_secrets() -> list[str]:
    with _known_lock:
        return sorted(_known, key=len, reverse=True)   # longest first: no partial masks


def scrub(text: str, extra: tuple[str, ...] = ()) -> str:
    """`text` with every remembered secret (and `extra`) replaced by ***."""
    for secret in (*[e for e in extra if e], *known_secrets()):
        text = text.replace(secret, MASK)
    return text


def child_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a process the harness spawns on this machine: os.environ without
    the secret variables (and without any variable holding a remembered secret), plus `extra`."""
    secrets = known_secrets()
    env = {name: value for name, value in os.environ.items()
           if name not in SECRET_ENV_NAMES and not any(s in value for s in secrets)}
    env.update(extra or {})
    return env


def url_without_credentials(text: str) -> str:
    """`text` (a URL, a message quoting URLs, a pip requirement) with every http(s) URL's
    `user:password@` dropped and every credential-like parameter's value masked; the rest
    as it was (what a reader needs to tell which URL it was)."""
    text = _USERINFO.sub(r"\g<scheme>", text)
    return _SECRET_PARAM.sub(lambda m: m["name"] + MASK, text)


class SecretFilter(logging.Filter):
    """Masks remembered secrets in every record a handler writes (console, harness.log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not known_secrets():
            return True
        message = record.getMessage()
        cleaned = scrub(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
