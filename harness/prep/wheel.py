"""Obtain the one Mooncake wheel of a run into `run/whls/` (SPEC §5 step 2).

Sources, the first that applies: `MOONCAKE_WHEEL` (a local .whl or .zip, a directory holding one
wheel, an http(s) URL to a .whl or .zip, otherwise a pip requirement), then the GitHub Actions
artifact `ARTIFACT_ID` of `GIT_REPO`, downloaded through the artifact API at `GITHUB_API_URL`.

The token is a secret: it goes into one request header and nowhere else (no log line, no error).
GitHub answers the artifact URL with a redirect to a pre-signed blob URL that rejects extra auth,
so the redirect is followed without the token.
A pip requirement honours pip's own environment (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, and
PIP_PYTHON_VERSION/PIP_PLATFORM where the container's Python differs from the harness's).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Literal
from urllib.parse import unquote, urlsplit

import requests

from harness import redaction
from harness.prep.download import CHUNK_BYTES, DOWNLOAD_DEADLINE_S, Downloader
from harness.errors import WheelError, tail
from harness.files import write_json_atomic
from harness.settings import Settings

log = logging.getLogger(__name__)

STAMP_NAME = ".wheel-source.json"  # what the wheel in run/whls came from, and its sha256
GH_TIMEOUT_S = 15.0
PIP_TIMEOUT_S = 900.0
API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
MISSING_SOURCE = ("set ARTIFACT_ID and GIT_REPO (the GitHub Actions artifact with the Mooncake "
                  "wheel) or MOONCAKE_WHEEL (a path, URL or pip requirement)")
NEEDS_TOKEN = "GitHub requires a token to download artifacts, even of public repositories"
_TEMP_PREFIX = ".download-"

GhLookup = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Source:
    """Where the wheel comes from: `kind` and the MOONCAKE_WHEEL value (empty for the artifact)."""
    kind: Literal["artifact", "path", "url", "pip"]
    value: str = ""


@dataclass(frozen=True)
class Token:
    """A GitHub token and where it came from; the value never shows in repr or messages."""
    value: str = field(repr=False)
    source: str


def classify_source(mooncake_wheel: str) -> Source:
    """What MOONCAKE_WHEEL names: nothing (use the artifact), a URL, a path or a requirement."""
    value = mooncake_wheel.strip()
    if not value:
        return Source("artifact")
    if re.match(r"(?i)https?://", value):
        return Source("url", value)
    if "://" in value or re.match(r"[\w.\-\[\], ]+@", value):  # `name @ url`, other schemes
        return Source("pip", value)
    path = Path(value).expanduser()
    if (path.exists() or "/" in value or value.startswith((".", "~"))
            or value.lower().endswith((".whl", ".zip"))):
        return Source("path", str(path))
    return Source("pip", value)


def gh_hostname(api_url: str) -> str:
    """The host `gh` knows for an API base: api.github.com -> github.com, GHES -> its host."""
    host = urlsplit(api_url).hostname or "github.com"
    return host[4:] if host.startswith("api.") else host


def gh_cli_token(hostname: str) -> str | None:
    """The token of the logged-in GitHub CLI (`gh auth token`); None if gh is absent or fails."""
    gh = shutil.which("gh")
    if gh is None:
        return None
    try:
        done = subprocess.run([gh, "auth", "token", "--hostname", hostname], capture_output=True,
                              text=True, timeout=GH_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("no token from the GitHub CLI (%s)", type(exc).__name__)
        return None
    if done.returncode != 0 or not done.stdout.strip():
        log.info("no token from the GitHub CLI (gh auth token exited %d)", done.returncode)
        return None
    redaction.remember(done.stdout.strip())   # masked in logs, kept out of children from now
    return done.stdout.strip()


def resolve_token(settings: Settings, *, gh_lookup: GhLookup | None = None,
                  environ: dict[str, str] | None = None) -> Token | None:
    """GITHUB_TOKEN or GH_TOKEN, else the logged-in GitHub CLI's token, else None."""
    environ = dict(os.environ) if environ is None else environ
    if settings.github_token:
        source = next((name for name in ("GITHUB_TOKEN", "GH_TOKEN")
                       if environ.get(name) == settings.github_token), "GITHUB_TOKEN/GH_TOKEN")
        return Token(settings.github_token, source)
    value = (gh_lookup or gh_cli_token)(gh_hostname(settings.github_api_url))
    redaction.remember(value)
    return Token(value, "the GitHub CLI login (gh auth token)") if value else None


def redact(text: str, token: Token | None = None) -> str:
    """`text` fit for a message or a log line: the token and every remembered secret masked
    (the bare value anywhere, and whatever follows `Bearer ` or `token=`), and URLs as
    harness.redaction's one policy shows them (no user:password, credential values masked)."""
    text = redaction.scrub(text, (token.value,) if token else ())
    text = redaction.url_without_credentials(text)
    return re.sub(r"(?i)\b(bearer\s+|token[=:]\s*)[^\s'\"]+", r"\1***", text)


def artifact_http_error(status: int, artifact_id: str, repo: str, token: Token | None,
                        detail: str = "") -> WheelError:
    """The one-line error for an HTTP status the artifact API answered."""
    said = f" (GitHub said: {redact(detail, token)})" if detail else ""
    sent = f"the token from {token.source}" if token else "no token"
    what = f"artifact {artifact_id} of {repo}"
    if status == 401:
        why = (f"{sent} was rejected (wrong, expired or revoked)" if token else
               "no token: set GITHUB_TOKEN or GH_TOKEN, or log in with `gh auth login`")
        return WheelError(f"HTTP 401 for {what}: {why}; {NEEDS_TOKEN}{said}")
    if status == 403:
        why = (f"{sent} may not read this repository's Actions artifacts (it needs actions:read "
               "or repo scope), or the API rate limit is used up" if token else
               f"no token was sent; {NEEDS_TOKEN}")
        return WheelError(f"HTTP 403 for {what}: {why}{said}")
    if status == 404:
        return WheelError(f"HTTP 404: artifact {artifact_id} not found in repository {repo} "
                          f"(check ARTIFACT_ID and GIT_REPO; a private repository also answers "
                          f"404 when {sent} cannot see it){said}")
    if status == 410:
        return WheelError(f"HTTP 410: {what} has expired (GitHub deletes Actions artifacts after "
                          "their retention period); re-run the workflow that builds the wheel "
                          "and use the new ARTIFACT_ID")
    return WheelError(f"HTTP {status} for {what}{said}")


def find_wheel(whl_dir: Path) -> Path | None:
    """The one wheel in `whl_dir`; None if there is none; WheelError if there are several."""
    wheels = sorted(p for p in whl_dir.glob("*.whl")
                    if p.is_file() and not p.name.startswith(".")) if whl_dir.is_dir() else []
    if len(wheels) > 1:
        raise WheelError(f"{whl_dir} holds {len(wheels)} wheels, expected exactly one: "
                         + ", ".join(p.name for p in wheels),
                         hint="remove the stale ones or fetch the wheel again")
    return wheels[0] if wheels else None


def fetch_wheel(settings: Settings, whl_dir: Path, *, session: requests.Session | None = None,
                sleep: Callable[[float], None] = time.sleep,
                gh_lookup: GhLookup | None = None,
                deadline_s: float = DOWNLOAD_DEADLINE_S) -> Path:
    """Put exactly one Mooncake wheel into `whl_dir` (old wheels removed first); return its path.

    A download gives up after `deadline_s` in all. Only a fetch that succeeded leaves the stamp
    that `reusable_wheel` trusts."""
    source = classify_source(settings.mooncake_wheel)
    try:
        whl_dir.mkdir(parents=True, exist_ok=True)
        if source.kind == "path":
            wheel = _take_local(Path(source.value), whl_dir)
        elif source.kind == "pip":
            _clear(whl_dir)
            wheel = _pip_download(source.value, whl_dir)
        else:
            with contextlib.nullcontext(session) if session else requests.Session() as http:
                get = Downloader(http, sleep=sleep, deadline_s=deadline_s)
                wheel = (_fetch_url(source.value, whl_dir, get) if source.kind == "url"
                         else _fetch_artifact(settings, whl_dir, get, gh_lookup))
        write_stamp(whl_dir, settings, wheel)
    except OSError as exc:  # a full disk, a read-only run/whls: one line, not a traceback
        raise WheelError(f"cannot put the wheel into {whl_dir}: {redact(str(exc))}") from None
    if not wheel.name.lower().startswith("mooncake"):
        log.warning("the wheel %s is not named mooncake*; Mooncake wheels are named "
                    "mooncake_transfer_engine-...whl", wheel.name)
    log.info("wheel ready: %s", wheel)
    return wheel


def extract_wheel(zip_path: Path, whl_dir: Path, what: str) -> Path:
    """Extract the one `*.whl` member of a zip into `whl_dir` (by its base name only)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.infolist()
                       if not m.is_dir() and m.filename.lower().endswith(".whl")]
            names = [PurePosixPath(m.filename.replace("\\", "/")).name for m in members]
            if not members:
                listing = ", ".join(archive.namelist()[:10]) or "nothing"
                raise WheelError(f"{what} holds no wheel (*.whl); it contains: {listing}")
            if len(members) > 1:
                raise WheelError(f"{what} holds {len(members)} wheels, expected exactly one: "
                                 + ", ".join(names))
            target = whl_dir / names[0]
            with archive.open(members[0]) as src, _temp_file(whl_dir, ".part") as part:
                with part.open("wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_BYTES)
                os.replace(part, target)
    except zipfile.BadZipFile:
        with zip_path.open("rb") as head:
            start = head.read(32)
        raise WheelError(f"{what} is not a zip archive ({zip_path.stat().st_size} bytes, "
                         f"starting {redact(repr(start))})") from None
    return target


def _fetch_artifact(settings: Settings, whl_dir: Path, get: Downloader,
                    gh_lookup: GhLookup | None) -> Path:
    artifact_id, repo = settings.artifact_id.strip(), settings.git_repo.strip().strip("/")
    if not artifact_id or not repo:
        raise WheelError(MISSING_SOURCE)
    if not artifact_id.isdigit():
        raise WheelError(f"ARTIFACT_ID must be a number, got {artifact_id!r}")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise WheelError(f"GIT_REPO must be owner/name, got {repo!r}")
    _clear(whl_dir)
    token = resolve_token(settings, gh_lookup=gh_lookup)
    api = settings.github_api_url.rstrip("/")
    url = f"{api}/repos/{repo}/actions/artifacts/{artifact_id}/zip"
    headers = dict(API_HEADERS)
    if token:
        headers["Authorization"] = f"Bearer {token.value}"
    what = f"artifact {artifact_id} of {repo}"
    log.info("fetching the wheel from %s at %s (%s)", what, redact(api),
             f"token from {token.source}" if token else "no token")
    with _temp_file(whl_dir, ".zip") as zip_path:
        get.fetch(url, zip_path, headers, what,
                  lambda status, detail: artifact_http_error(status, artifact_id, repo, token,
                                                             detail),
                  lambda text: redact(text, token))
        return extract_wheel(zip_path, whl_dir, what)


def _fetch_url(url: str, whl_dir: Path, get: Downloader) -> Path:
    shown = redact(url)
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    if not name.lower().endswith((".whl", ".zip")):
        raise WheelError(f"MOONCAKE_WHEEL URL must name a .whl or .zip file: {shown}")
    _clear(whl_dir)
    log.info("fetching the wheel from %s", shown)
    with _temp_file(whl_dir, ".download") as download:
        get.fetch(url, download, {}, shown, lambda status, detail: WheelError(
            f"HTTP {status} downloading MOONCAKE_WHEEL {shown}"
            + (f" ({redact(detail)})" if detail else "")), redact)
        if name.lower().endswith(".zip"):
            return extract_wheel(download, whl_dir, shown)
        if not zipfile.is_zipfile(download):
            raise WheelError(f"{shown} did not return a wheel (the body is not a zip archive)")
        os.replace(download, whl_dir / name)
    return whl_dir / name


# --- what the wheel in run/whls came from ------------------------------------------------------
def _origin(settings: Settings) -> dict[str, str]:
    """Where this run's settings take the wheel from, as the stamp records it (no secrets)."""
    source = classify_source(settings.mooncake_wheel)
    if source.kind == "artifact":
        return {"source": "artifact", "api": settings.github_api_url.rstrip("/"),
                "repo": settings.git_repo.strip().strip("/"),
                "artifact_id": settings.artifact_id.strip()}
    return {"source": source.kind, "value": redaction.url_without_credentials(source.value)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def write_stamp(whl_dir: Path, settings: Settings, wheel: Path) -> None:
    """Record, after a fetch succeeded, what the wheel came from and its hash (atomically)."""
    stamp = {**_origin(settings), "wheel": wheel.name, "sha256": _sha256(wheel)}
    try:
        write_json_atomic(whl_dir / STAMP_NAME, stamp)
    except OSError as exc:
        raise WheelError(f"cannot record the wheel's origin in {whl_dir}: {exc}") from None


def reusable_wheel(settings: Settings, whl_dir: Path) -> Path | None:
    """The wheel already in `whl_dir` when it may stand for this run's: only for the artifact
    source, only when the stamp of a fetch that succeeded names this artifact (API, repository,
    id) and the wheel still has the hash recorded then. None otherwise (fetch again)."""
    if settings.mooncake_wheel.strip() or not settings.artifact_id.strip():
        return None
    try:
        stamp = json.loads((whl_dir / STAMP_NAME).read_text())
        wheel = find_wheel(whl_dir)
    except (OSError, ValueError, WheelError):
        return None
    if not isinstance(stamp, dict) or wheel is None:
        return None
    if any(stamp.get(key) != value for key, value in _origin(settings).items()):
        return None
    try:
        same = stamp.get("wheel") == wheel.name and stamp.get("sha256") == _sha256(wheel)
    except OSError:
        return None
    return wheel if same else None


def _take_local(path: Path, whl_dir: Path) -> Path:
    """Copy the .whl MOONCAKE_WHEEL names (or the one under its directory), or unzip its .zip."""
    if path.is_dir():
        found = sorted(p for p in path.rglob("*.whl") if p.is_file())
        if len(found) != 1:
            listing = (": " + ", ".join(str(p.relative_to(path)) for p in found)) if found else ""
            raise WheelError(f"MOONCAKE_WHEEL directory {path} holds {len(found)} wheels, "
                             f"expected exactly one{listing}")
        path = found[0]
    elif not path.is_file():
        raise WheelError(f"MOONCAKE_WHEEL path does not exist: {path}")
    elif path.suffix.lower() not in (".whl", ".zip"):
        raise WheelError(f"MOONCAKE_WHEEL file is neither a .whl nor a .zip: {path}")
    path = path.resolve()
    _clear(whl_dir, keep=path)  # the source may be the wheel already in whl_dir
    if path.suffix.lower() == ".zip":
        return extract_wheel(path, whl_dir, str(path))
    target = whl_dir / path.name
    if target.resolve() != path:
        log.info("copying the wheel from %s", path)
        with _temp_file(whl_dir, ".part") as part:
            shutil.copyfile(path, part)
            os.replace(part, target)
    return target


def _pip_download(requirement: str, whl_dir: Path) -> Path:
    shown = redact(requirement)
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--no-input", "--dest", str(whl_dir), requirement]
    log.info("fetching the wheel with pip download %s", shown)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, env=redaction.child_environ())
    except subprocess.TimeoutExpired:
        raise WheelError(f"pip download of {shown!r} did not finish in {PIP_TIMEOUT_S:.0f} s"
                         ) from None
    output = redact(done.stdout + done.stderr)
    if done.returncode != 0:
        last = next((line for line in reversed(output.splitlines())
                     if line.startswith("ERROR:")), "")
        raise WheelError(f"pip download of {shown!r} failed (exit {done.returncode})"
                         + (f": {last}" if last else ""), log_tail=tail(output))
    wheel = find_wheel(whl_dir)
    if wheel is None:
        raise WheelError(f"pip download of {shown!r} left no wheel in {whl_dir}",
                         log_tail=tail(output))
    return wheel


def _clear(whl_dir: Path, keep: Path | None = None) -> None:
    """Remove old wheels, their stamp and leftover partial downloads, sparing `keep` (the
    source itself)."""
    for old in [*whl_dir.glob("*.whl"), *whl_dir.glob(_TEMP_PREFIX + "*"), whl_dir / STAMP_NAME]:
        if old.is_file() and old.resolve() != keep:
            old.unlink()


@contextlib.contextmanager
def _temp_file(directory: Path, suffix: str) -> Iterator[Path]:
    """A fresh hidden file in `directory`, removed afterwards unless it was renamed away."""
    handle, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=suffix, dir=directory)
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
