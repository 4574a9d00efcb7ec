"""GET one file over HTTP(S) for the wheel step: redirects followed without the token, retries
with back-off on network errors and 5xx, and one deadline for the whole download.

Per-request timeouts alone do not bound a download: five tries of a server that never answers
take ten minutes, and a server that trickles bytes never trips a read timeout. So every wait
(connect, read, the pause before a retry) is cut to what is left of the deadline, and a watchdog
shuts the connection of a body still being read when the deadline passes.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin

import requests

from harness.errors import WheelError

log = logging.getLogger("harness.prep.wheel")

TRIES = 5
FIRST_DELAY_S = 2.0  # then 4, 8, 16
TIMEOUTS_S = (15.0, 120.0)  # connect, and the longest silence while reading
CHUNK_BYTES = 1 << 20
DOWNLOAD_DEADLINE_S = 1800.0

HttpError = Callable[[int, str], WheelError]


class Downloader:
    """Downloads on one session, all of them within `deadline_s` from its creation."""

    def __init__(self, session: requests.Session, *,
                 sleep: Callable[[float], None] = time.sleep,
                 deadline_s: float = DOWNLOAD_DEADLINE_S) -> None:
        self.session = session
        self.sleep = sleep
        self.deadline_s = deadline_s
        self.deadline = time.monotonic() + deadline_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def _out_of_time(self, what: str, last: str) -> WheelError:
        return WheelError(f"cannot download {what}: not done within {self.deadline_s:g} s"
                          + (f" (last problem: {last})" if last else ""),
                          hint="the server answers too slowly or not at all; try again later")

    def fetch(self, url: str, dest: Path, headers: dict[str, str], what: str,
              http_error: HttpError, redact: Callable[[str], str]) -> None:
        """GET `url` into `dest`; `redact` cleans every text that goes into a message."""
        delay, problem = FIRST_DELAY_S, ""
        for attempt in range(1, TRIES + 1):
            if self.left() <= 0:
                raise self._out_of_time(what, problem)
            try:
                with self._get_following_redirect(url, headers) as response:
                    if response.status_code == 200:
                        self._save(response, dest, what)
                        return
                    detail = server_message(response)
                    if response.status_code < 500:
                        raise http_error(response.status_code, detail)
                    problem = f"HTTP {response.status_code}" + (f" ({detail})" if detail else "")
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            except requests.RequestException as exc:  # a bad URL, a redirect loop: no retry
                raise WheelError(f"cannot download {what}: {redact(str(exc))}") from None
            problem = redact(problem)
            if attempt == TRIES:
                raise WheelError(f"cannot download {what}: {problem}, after {TRIES} tries")
            if self.left() <= delay:
                raise self._out_of_time(what, problem)
            log.warning("downloading %s: %s (try %d of %d); retrying in %.0f s",
                        what, problem, attempt, TRIES, delay)
            self.sleep(delay)
            delay *= 2

    def _timeouts(self) -> tuple[float, float]:
        left = max(self.left(), 0.001)
        return min(TIMEOUTS_S[0], left), min(TIMEOUTS_S[1], left)

    def _get_following_redirect(self, url: str, headers: dict[str, str]) -> requests.Response:
        """GET `url`; a redirect is followed without Authorization (its target is pre-signed)."""
        # requests drops the header only when host, port or scheme change; the target may not.
        response = self.session.get(url, headers=headers, stream=True, timeout=self._timeouts(),
                                    allow_redirects=False)
        if not response.is_redirect:
            return response
        target = urljoin(url, response.headers["Location"])
        response.close()
        plain = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        return self.session.get(target, headers=plain, stream=True, timeout=self._timeouts())

    def _save(self, response: requests.Response, dest: Path, what: str) -> None:
        size = response.headers.get("Content-Length", "")
        log.info("download started%s", f": {int(size) / 1e6:.1f} MB" if size.isdigit() else "")
        started, received = time.monotonic(), 0
        watchdog = threading.Timer(max(self.left(), 0.0), _shut, (response,))
        watchdog.daemon = True
        watchdog.start()
        try:
            with dest.open("wb") as out:
                for chunk in response.iter_content(CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                    if self.left() <= 0:
                        break
        except (requests.RequestException, OSError) as exc:
            if self.left() <= 0:
                raise self._out_of_time(what, f"{received / 1e6:.1f} MB received") from None
            if isinstance(exc, requests.RequestException):
                raise
            raise WheelError(f"cannot write the download to {dest}: {exc}") from None
        finally:
            watchdog.cancel()
        if self.left() <= 0:
            raise self._out_of_time(what, f"{received / 1e6:.1f} MB received")
        log.info("download done: %.1f MB in %.1f s", received / 1e6, time.monotonic() - started)


def _shut(response: requests.Response) -> None:
    """Shut the connection a body is read from: a read blocked on it returns at once."""
    raw = getattr(response, "raw", None)
    connection = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        response.close()
    except Exception:  # noqa: BLE001 - best effort from a timer thread; the reader reports
        pass


def server_message(response: requests.Response) -> str:
    """GitHub's JSON `message`, else the body's first line, kept short."""
    try:
        return str(response.json().get("message", ""))[:200]
    except (ValueError, AttributeError):
        return response.text.strip().partition("\n")[0][:200]
