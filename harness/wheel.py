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
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests

from harness.errors import WheelError, tail
from harness.settings import Settings

log = logging.getLogger(__name__)

TRIES = 5
FIRST_DELAY_S = 2.0  # then 4, 8, 16
TIMEOUTS_S = (15.0, 120.0)  # connect, and the longest silence while reading
CHUNK_BYTES = 1 << 20
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
    return Token(value, "the GitHub CLI login (gh auth token)") if value else None


def redact_url(url: str) -> str:
    """A URL fit for a message: no user:password, no query (pre-signed URLs carry secrets there)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def redact(text: str, token: Token | None = None) -> str:
    """`text` with URLs redacted, query strings dropped and tokens masked."""
    text = re.sub(r"https?://[^\s'\"<>]+", lambda m: redact_url(m.group(0)), text)
    text = re.sub(r"\?[^\s'\"()]+", "?…", text)
    text = re.sub(r"(?i)\b(bearer\s+|token[=:]\s*)[^\s'\"]+", r"\1***", text)
    if token and token.value:
        text = text.replace(token.value, "***")
    return text


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
                gh_lookup: GhLookup | None = None) -> Path:
    """Put exactly one Mooncake wheel into `whl_dir` (old wheels removed first); return its path."""
    whl_dir.mkdir(parents=True, exist_ok=True)
    source = classify_source(settings.mooncake_wheel)
    if source.kind == "path":
        wheel = _take_local(Path(source.value), whl_dir)
    elif source.kind == "pip":
        _clear(whl_dir)
        wheel = _pip_download(source.value, whl_dir)
    else:
        with contextlib.nullcontext(session) if session else requests.Session() as http:
            wheel = (_fetch_url(source.value, whl_dir, http, sleep) if source.kind == "url"
                     else _fetch_artifact(settings, whl_dir, http, sleep, gh_lookup))
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


def _fetch_artifact(settings: Settings, whl_dir: Path, session: requests.Session,
                    sleep: Callable[[float], None], gh_lookup: GhLookup | None) -> Path:
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
    log.info("fetching the wheel from %s at %s (%s)", what, redact_url(api),
             f"token from {token.source}" if token else "no token")
    with _temp_file(whl_dir, ".zip") as zip_path:
        _download(session, url, zip_path, headers, what, sleep,
                  lambda status, detail: artifact_http_error(status, artifact_id, repo, token,
                                                             detail), token)
        return extract_wheel(zip_path, whl_dir, what)


def _fetch_url(url: str, whl_dir: Path, session: requests.Session,
               sleep: Callable[[float], None]) -> Path:
    shown = redact_url(url)
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    if not name.lower().endswith((".whl", ".zip")):
        raise WheelError(f"MOONCAKE_WHEEL URL must name a .whl or .zip file: {shown}")
    _clear(whl_dir)
    log.info("fetching the wheel from %s", shown)
    with _temp_file(whl_dir, ".download") as download:
        _download(session, url, download, {}, shown, sleep, lambda status, detail: WheelError(
            f"HTTP {status} downloading MOONCAKE_WHEEL {shown}"
            + (f" ({redact(detail)})" if detail else "")), None)
        if name.lower().endswith(".zip"):
            return extract_wheel(download, whl_dir, shown)
        if not zipfile.is_zipfile(download):
            raise WheelError(f"{shown} did not return a wheel (the body is not a zip archive)")
        os.replace(download, whl_dir / name)
    return whl_dir / name


def _download(session: requests.Session, url: str, dest: Path, headers: dict[str, str],
              what: str, sleep: Callable[[float], None],
              http_error: Callable[[int, str], WheelError], token: Token | None) -> None:
    """GET `url` into `dest`, redirects followed; retry network errors and 5xx with back-off."""
    delay = FIRST_DELAY_S
    for attempt in range(1, TRIES + 1):
        try:
            with _get_following_redirect(session, url, headers) as response:
                if response.status_code == 200:
                    _save(response, dest)
                    return
                detail = _server_message(response)
                if response.status_code < 500:
                    raise http_error(response.status_code, detail)
                problem = f"HTTP {response.status_code}" + (f" ({detail})" if detail else "")
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        except requests.RequestException as exc:  # a bad URL, a redirect loop: retrying won't help
            raise WheelError(f"cannot download {what}: {redact(str(exc), token)}") from None
        problem = redact(problem, token)
        if attempt == TRIES:
            raise WheelError(f"cannot download {what}: {problem}, after {TRIES} tries") from None
        log.warning("downloading %s: %s (try %d of %d); retrying in %.0f s",
                    what, problem, attempt, TRIES, delay)
        sleep(delay)
        delay *= 2


def _get_following_redirect(session: requests.Session, url: str,
                            headers: dict[str, str]) -> requests.Response:
    """GET `url`; a redirect is followed without Authorization: its target is a pre-signed URL."""
    # requests drops the header only when host, port or scheme change; the target may not.
    response = session.get(url, headers=headers, stream=True, timeout=TIMEOUTS_S,
                           allow_redirects=False)
    if not response.is_redirect:
        return response
    target = urljoin(url, response.headers["Location"])
    response.close()
    plain = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return session.get(target, headers=plain, stream=True, timeout=TIMEOUTS_S)


def _save(response: requests.Response, dest: Path) -> None:
    size = response.headers.get("Content-Length", "")
    log.info("download started%s", f": {int(size) / 1e6:.1f} MB" if size.isdigit() else "")
    started, received = time.monotonic(), 0
    with dest.open("wb") as out:
        for chunk in response.iter_content(CHUNK_BYTES):
            out.write(chunk)
            received += len(chunk)
    log.info("download done: %.1f MB in %.1f s", received / 1e6, time.monotonic() - started)


def _server_message(response: requests.Response) -> str:
    """GitHub's JSON `message`, else the body's first line, kept short."""
    try:
        return str(response.json().get("message", ""))[:200]
    except (ValueError, AttributeError):
        return response.text.strip().partition("\n")[0][:200]


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
                              stdin=subprocess.DEVNULL)
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
    """Remove old wheels and leftover partial downloads, sparing `keep` (the source itself)."""
    for old in [*whl_dir.glob("*.whl"), *whl_dir.glob(_TEMP_PREFIX + "*")]:
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
