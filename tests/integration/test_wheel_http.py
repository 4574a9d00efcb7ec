"""fetch_wheel against a real HTTP server standing in for GitHub's artifact API (loopback only)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from harness.prep import wheel
from harness.errors import WheelError
from harness.settings import Settings
from tests.fakes.github_api import BLOB_SIGNATURE, FakeGitHubAPI, wheel_bytes, zip_bytes

pytestmark = pytest.mark.integration

REPO = "kvcache-ai/Mooncake"
TOKEN = "ghp_FAKEtokenForTests0123456789abcdef"
WHEEL_NAME, WHEEL = wheel_bytes()
ARTIFACT_ZIP = zip_bytes({f"dist/{WHEEL_NAME}": WHEEL, "build.log": b"ok"})


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch, caplog):
    """No proxy for loopback, no real gh, and every log line kept for the token check."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,127.0.0.2")
    monkeypatch.setenv("NETRC", "/nonexistent")
    caplog.set_level(logging.DEBUG)
    yield
    assert TOKEN not in caplog.text


@pytest.fixture
def api():
    with FakeGitHubAPI(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def whl_dir(tmp_path: Path) -> Path:
    out = tmp_path / "run" / "whls"
    out.mkdir(parents=True)
    (out / "mooncake_transfer_engine-0.0.0-old-none-any.whl").write_bytes(b"stale")
    return out


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def no_gh(hostname: str) -> None:
    return None


def fetch(api: FakeGitHubAPI | str, whl_dir: Path, *, artifact_id: str = "4242", token: str = TOKEN,
          sleep: Sleeps | None = None, **overrides) -> Path:
    api_url = api if isinstance(api, str) else api.url
    overrides.setdefault("git_repo", REPO)
    settings = Settings.from_env({}, github_api_url=api_url, artifact_id=artifact_id,
                                 github_token=token, **overrides)
    return wheel.fetch_wheel(settings, whl_dir, sleep=sleep if sleep is not None else Sleeps(),
                             gh_lookup=no_gh)


def fetch_error(*args, **kwargs) -> str:
    with pytest.raises(WheelError) as caught:
        fetch(*args, **kwargs)
    text = caught.value.details()
    assert TOKEN not in text and "\n" not in str(caught.value)
    return str(caught.value)


# --- the artifact API ---------------------------------------------------------------------
def test_direct_zip_sends_github_headers_and_replaces_old_wheels(api, whl_dir) -> None:
    api.add(REPO, 4242, body=ARTIFACT_ZIP)
    got = fetch(api, whl_dir)
    assert got == whl_dir / WHEEL_NAME and got.read_bytes() == WHEEL
    assert sorted(p.name for p in whl_dir.iterdir()) == [wheel.STAMP_NAME, WHEEL_NAME]
    (request,) = api.seen()
    assert request.path == f"/repos/{REPO}/actions/artifacts/4242/zip"
    assert request.header("Accept") == "application/vnd.github+json"
    assert request.header("X-GitHub-Api-Version") == "2022-11-28"
    assert request.header("Authorization") == f"Bearer {TOKEN}"
    assert wheel.find_wheel(whl_dir) == got


def test_redirect_on_the_same_host_is_followed(api, whl_dir) -> None:
    api.add(REPO, 4242, body=ARTIFACT_ZIP, redirect=True)
    assert fetch(api, whl_dir).read_bytes() == WHEEL
    first, second = api.seen()
    assert second.path == f"/blobs/{REPO}/4242.zip?{BLOB_SIGNATURE}"
    # requests would keep the header on a same-host redirect; fetch_wheel drops it itself
    assert first.header("Authorization") == f"Bearer {TOKEN}"
    assert second.header("Authorization") is None
    assert second.header("X-GitHub-Api-Version") == "2022-11-28"


@pytest.mark.parametrize("blob_host, forwarded", [("127.0.0.2", False), (None, True)])
def test_what_requests_itself_does_with_authorization_on_redirects(blob_host, forwarded) -> None:
    """requests strips Authorization when a redirect changes host (or port or scheme) only."""
    with FakeGitHubAPI(blob_host=blob_host) as api, requests.Session() as session:
        api.add(REPO, 1, body=b"zip", redirect=True)
        session.get(f"{api.url}/repos/{REPO}/actions/artifacts/1/zip",
                    headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        blob_request = api.seen()[-1]
    assert blob_request.path.startswith("/blobs/")
    assert (blob_request.header("Authorization") is not None) is forwarded


def test_cross_host_redirect_does_not_forward_the_token(whl_dir) -> None:
    with FakeGitHubAPI(token=TOKEN, blob_host="127.0.0.2") as api:
        api.add(REPO, 4242, body=ARTIFACT_ZIP, redirect=True)
        assert fetch(api, whl_dir).read_bytes() == WHEEL
        assert api.blob_url.startswith("http://127.0.0.2:")
        (to_api,) = api.seen("api")
        (to_blob,) = api.seen("blob")
    assert to_api.header("Authorization") == f"Bearer {TOKEN}"
    assert to_blob.header("Authorization") is None
    assert to_blob.path.endswith(BLOB_SIGNATURE)


def test_a_given_session_is_used_and_left_open(api, whl_dir) -> None:
    api.add(REPO, 4242, body=ARTIFACT_ZIP, redirect=True)
    settings = Settings.from_env({}, github_api_url=api.url, git_repo=REPO, artifact_id="4242",
                                 github_token=TOKEN)
    with requests.Session() as session:
        session.headers["User-Agent"] = "mooncake-e2e-test"
        wheel.fetch_wheel(settings, whl_dir, session=session, sleep=Sleeps(), gh_lookup=no_gh)
        wheel.fetch_wheel(settings, whl_dir, session=session, sleep=Sleeps(), gh_lookup=no_gh)
    assert [r.header("User-Agent") for r in api.seen()] == ["mooncake-e2e-test"] * 4


def test_token_from_the_gh_cli_is_used(api, whl_dir) -> None:
    api.add(REPO, 4242, body=ARTIFACT_ZIP)
    asked: list[str] = []
    settings = Settings.from_env({}, github_api_url=api.url, git_repo=REPO, artifact_id="4242")
    got = wheel.fetch_wheel(settings, whl_dir, sleep=Sleeps(),
                            gh_lookup=lambda host: asked.append(host) or TOKEN)
    assert got.read_bytes() == WHEEL and asked == ["127.0.0.1"]


def test_401_names_the_token_source_and_is_not_retried(api, whl_dir, monkeypatch,
                                                       caplog) -> None:
    api.add(REPO, 4242, body=ARTIFACT_ZIP)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_wrong_one")
    sleeps = Sleeps()
    text = fetch_error(api, whl_dir, token="ghp_wrong_one", sleep=sleeps)
    assert text.startswith("HTTP 401 for artifact 4242 of kvcache-ai/Mooncake: the token from "
                           "GITHUB_TOKEN was rejected")
    assert "ghp_wrong_one" not in text and "(GitHub said: Bad credentials)" in text
    assert "ghp_wrong_one" not in caplog.text
    assert sleeps == [] and len(api.seen()) == 1
    assert list(whl_dir.iterdir()) == []


def test_401_without_any_token(api, whl_dir) -> None:
    api.add(REPO, 4242, body=ARTIFACT_ZIP)
    text = fetch_error(api, whl_dir, token="")
    assert "no token: set GITHUB_TOKEN or GH_TOKEN, or log in with `gh auth login`" in text
    assert "even of public repositories" in text
    assert api.seen()[0].header("Authorization") is None


@pytest.mark.parametrize("status, expected", [
    (403, "HTTP 403 for artifact 4242 of kvcache-ai/Mooncake: the token from GITHUB_TOKEN/GH_TOKEN"
          " may not read this repository's Actions artifacts"),
    (410, "HTTP 410: artifact 4242 of kvcache-ai/Mooncake has expired"),
])
def test_403_and_410(api, whl_dir, status, expected) -> None:
    api.add(REPO, 4242, status=status)
    sleeps = Sleeps()
    assert fetch_error(api, whl_dir, sleep=sleeps).startswith(expected)
    assert sleeps == []


def test_404_names_artifact_and_repo(api, whl_dir) -> None:
    text = fetch_error(api, whl_dir, artifact_id="999")
    assert text.startswith("HTTP 404: artifact 999 not found in repository kvcache-ai/Mooncake")


def test_5xx_is_retried_with_backoff(api, whl_dir, caplog) -> None:
    api.add(REPO, 4242, body=ARTIFACT_ZIP, fail_first=3)
    sleeps = Sleeps()
    assert fetch(api, whl_dir, sleep=sleeps).read_bytes() == WHEEL
    assert sleeps == [2, 4, 8] and len(api.seen()) == 4
    assert "HTTP 500 (Server Error) (try 1 of 5); retrying in 2 s" in caplog.text


def test_5xx_gives_up_after_five_tries(api, whl_dir) -> None:
    api.add(REPO, 4242, body=ARTIFACT_ZIP, fail_first=99)
    sleeps = Sleeps()
    text = fetch_error(api, whl_dir, sleep=sleeps)
    assert text == ("cannot download artifact 4242 of kvcache-ai/Mooncake: HTTP 500 "
                    "(Server Error), after 5 tries")
    assert sleeps == [2, 4, 8, 16] and len(api.seen()) == 5


def test_dropped_connections_are_retried(api, whl_dir) -> None:
    api.add(REPO, 4242, body=ARTIFACT_ZIP, drop_first=2)
    sleeps = Sleeps()
    assert fetch(api, whl_dir, sleep=sleeps).read_bytes() == WHEEL
    assert sleeps == [2, 4]


def test_refused_connection_is_retried_then_reported(whl_dir) -> None:
    with FakeGitHubAPI() as api:
        gone = api.url
    sleeps = Sleeps()
    text = fetch_error(gone, whl_dir, sleep=sleeps)
    assert text.startswith("cannot download artifact 4242 of kvcache-ai/Mooncake: ConnectionError")
    assert text.endswith("after 5 tries") and sleeps == [2, 4, 8, 16]


@pytest.mark.parametrize("body, expected", [
    (b"<html>not a zip</html>", "artifact 4242 of kvcache-ai/Mooncake is not a zip archive "
                                "(22 bytes, starting b'<html>not a zip</html>')"),
    (zip_bytes({"build.log": b"x", "dist/": b""}),
     "artifact 4242 of kvcache-ai/Mooncake holds no wheel (*.whl); it contains: build.log, dist/"),
    (zip_bytes({"a/mooncake_transfer_engine-1-py3-none-any.whl": b"1",
                "b/mooncake_transfer_engine-2-py3-none-any.whl": b"2"}),
     "artifact 4242 of kvcache-ai/Mooncake holds 2 wheels, expected exactly one: "
     "mooncake_transfer_engine-1-py3-none-any.whl, mooncake_transfer_engine-2-py3-none-any.whl"),
])
def test_bad_artifact_contents(api, whl_dir, body, expected) -> None:
    api.add(REPO, 4242, body=body, redirect=True)
    assert fetch_error(api, whl_dir) == expected
    assert list(whl_dir.iterdir()) == []


def test_path_traversal_member_lands_in_whl_dir(api, whl_dir) -> None:
    api.add(REPO, 4242, body=zip_bytes({f"../../../{WHEEL_NAME}": WHEEL}))
    assert fetch(api, whl_dir) == whl_dir / WHEEL_NAME
    assert not (whl_dir.parent.parent / WHEEL_NAME).exists()


def test_a_wheel_not_named_mooncake_is_accepted_with_a_warning(api, whl_dir, caplog) -> None:
    name, content = wheel_bytes("other_pkg", "1.0")
    api.add(REPO, 4242, body=zip_bytes({name: content}))
    assert fetch(api, whl_dir).name == name
    assert any(r.levelname == "WARNING" and "not named mooncake" in r.getMessage()
               for r in caplog.records)


# --- MOONCAKE_WHEEL -----------------------------------------------------------------------
def local(whl_dir: Path, value: str, **kwargs) -> Path:
    settings = Settings.from_env({}, mooncake_wheel=value)
    return wheel.fetch_wheel(settings, whl_dir, sleep=Sleeps(), gh_lookup=no_gh, **kwargs)


def test_mooncake_wheel_url_to_a_wheel(api, whl_dir) -> None:
    url = api.add_file(WHEEL_NAME, WHEEL)
    assert local(whl_dir, url).read_bytes() == WHEEL
    assert sorted(p.name for p in whl_dir.iterdir()) == [wheel.STAMP_NAME, WHEEL_NAME]
    assert api.seen()[0].header("Authorization") is None


def test_mooncake_wheel_url_to_a_zip(api, whl_dir) -> None:
    url = api.add_file("artifact.zip", ARTIFACT_ZIP)
    assert local(whl_dir, url + "?sig=abc").read_bytes() == WHEEL


def test_mooncake_wheel_url_errors(api, whl_dir) -> None:
    with pytest.raises(WheelError) as caught:
        local(whl_dir, f"{api.url}/files/missing.whl?sig=SECRET")
    assert str(caught.value) == (f"HTTP 404 downloading MOONCAKE_WHEEL {api.url}/files/"
                                 f"missing.whl?sig=*** (Not Found)")
    url = api.add_file("broken.whl", b"<html>login</html>")
    with pytest.raises(WheelError, match="did not return a wheel"):
        local(whl_dir, url)


def test_mooncake_wheel_path_dir_and_zip(tmp_path: Path, whl_dir) -> None:
    source = tmp_path / "src"
    (source / "nested").mkdir(parents=True)
    (source / "nested" / WHEEL_NAME).write_bytes(WHEEL)
    assert local(whl_dir, str(source / "nested" / WHEEL_NAME)).read_bytes() == WHEEL
    assert local(whl_dir, str(source)).read_bytes() == WHEEL
    (tmp_path / "artifact.zip").write_bytes(ARTIFACT_ZIP)
    assert local(whl_dir, str(tmp_path / "artifact.zip")).read_bytes() == WHEEL
    assert sorted(p.name for p in whl_dir.iterdir()) == [wheel.STAMP_NAME, WHEEL_NAME]
    # the wheel already in whl_dir is its own source: it must survive the clean-up
    assert local(whl_dir, str(whl_dir / WHEEL_NAME)).read_bytes() == WHEEL
    assert local(whl_dir, str(whl_dir)).read_bytes() == WHEEL


def test_mooncake_wheel_path_errors(tmp_path: Path, whl_dir) -> None:
    with pytest.raises(WheelError, match="MOONCAKE_WHEEL path does not exist"):
        local(whl_dir, str(tmp_path / "nope.whl"))
    source = tmp_path / "two"
    source.mkdir()
    for version in ("1", "2"):
        (source / f"mooncake_transfer_engine-{version}-py3-none-any.whl").write_bytes(WHEEL)
    with pytest.raises(WheelError, match="holds 2 wheels, expected exactly one: "
                                         "mooncake_transfer_engine-1"):
        local(whl_dir, str(source))
    assert (whl_dir / "mooncake_transfer_engine-0.0.0-old-none-any.whl").exists()


def test_mooncake_wheel_pip_requirement_offline(tmp_path: Path, whl_dir, monkeypatch) -> None:
    links = tmp_path / "links"
    links.mkdir()
    (links / WHEEL_NAME).write_bytes(WHEEL)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    got = local(whl_dir, "mooncake-transfer-engine==0.0.1")
    assert got == whl_dir / WHEEL_NAME and got.read_bytes() == WHEEL
    assert sorted(p.name for p in whl_dir.iterdir()) == [wheel.STAMP_NAME, WHEEL_NAME]
    with pytest.raises(WheelError) as caught:
        local(whl_dir, "mooncake-transfer-engine==9.9.9")
    assert str(caught.value).startswith(
        "pip download of 'mooncake-transfer-engine==9.9.9' failed (exit 1): ERROR: ")
    assert caught.value.log_tail and "9.9.9" in caught.value.log_tail


def test_the_downloaded_wheel_installs(tmp_path: Path, api, whl_dir) -> None:
    """The fake's wheel is a real one, so other tests can pip-install what fetch_wheel got."""
    api.add(REPO, 4242, body=ARTIFACT_ZIP)
    got = fetch(api, whl_dir)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                    "--target", str(target), str(got)], check=True, capture_output=True)
    assert (target / "mooncake_transfer_engine" / "__init__.py").exists()


# --- one deadline for the whole download ------------------------------------------------------
class _SilentHTTP:
    """A listener that takes connections and then answers nothing, or (trickle=True) sends the
    headers of a large body and then one byte every 0.2 s, so no read timeout ever trips."""

    def __init__(self, trickle: bool = False) -> None:
        import socket
        import threading
        self.trickle = trickle
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.stop = threading.Event()
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def _serve(self) -> None:
        import threading
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn) -> None:
        try:
            conn.recv(65536)
            if self.trickle:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\n"
                             b"Content-Length: 100000000\r\n\r\n")
            while not self.stop.wait(0.2):
                if self.trickle:
                    conn.sendall(b"x")
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self) -> "_SilentHTTP":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.close()


@pytest.mark.parametrize("trickle", [False, True], ids=["never-answers", "trickles-bytes"])
def test_the_whole_download_has_a_deadline(whl_dir, trickle) -> None:
    import time
    with _SilentHTTP(trickle=trickle) as server:
        settings = Settings.from_env({}, github_api_url=server.url, git_repo=REPO,
                                     artifact_id="4242", github_token=TOKEN)
        started = time.monotonic()
        with pytest.raises(WheelError) as caught:
            wheel.fetch_wheel(settings, whl_dir, sleep=time.sleep, gh_lookup=no_gh,
                              deadline_s=2.0)
        took = time.monotonic() - started
    message = str(caught.value)
    assert took < 8, took                      # per-request limits alone: minutes, or never
    assert "\n" not in message and "not done within 2 s" in message, message
    assert "artifact 4242 of kvcache-ai/Mooncake" in message and TOKEN not in message
    assert not list(whl_dir.glob(".download-*"))  # no partial download left behind


# --- reuse only what a successful fetch vouched for ---------------------------------------------
def test_a_successful_fetch_stamps_the_wheel_and_only_that_is_reused(api, whl_dir) -> None:
    api.add(REPO, 4242, body=ARTIFACT_ZIP)
    got = fetch(api, whl_dir)
    settings = Settings.from_env({}, github_api_url=api.url, git_repo=REPO,
                                 artifact_id="4242")
    assert wheel.reusable_wheel(settings, whl_dir) == got
    stamp = (whl_dir / wheel.STAMP_NAME).read_text()
    assert "4242" in stamp and REPO in stamp and TOKEN not in stamp
    # a run for another artifact fails before its download (GIT_REPO malformed): the stamp
    # still names 4242, so a later run for 4343 does not take this wheel
    with pytest.raises(WheelError, match="GIT_REPO must be owner/name"):
        fetch(api, whl_dir, artifact_id="4343", git_repo="not a repo")
    other = Settings.from_env({}, github_api_url=api.url, git_repo=REPO, artifact_id="4343")
    assert wheel.reusable_wheel(other, whl_dir) is None
    # a failed download of 4343 removes the old stamp: nothing is reusable afterwards
    api.add(REPO, 4343, status=404)
    with pytest.raises(WheelError, match="HTTP 404"):
        fetch(api, whl_dir, artifact_id="4343")
    assert wheel.reusable_wheel(settings, whl_dir) is None
