"""A stand-in for GitHub's Actions artifact API on loopback (SPEC §9), for any test that needs one.

    name, whl = wheel_bytes()  # a tiny real wheel, pip-installable
    with FakeGitHubAPI(token="t0ken", blob_host="127.0.0.2") as api:
        api.add("owner/repo", 123, body=zip_bytes({f"dist/{name}": whl}), redirect=True)
        settings = Settings.from_env({}, github_api_url=api.url, artifact_id="123", ...)
        ...
        assert api.seen(server="blob")[0].header("Authorization") is None

`GET /repos/<owner>/<name>/actions/artifacts/<id>/zip` answers as the artifact's `Artifact` says:
401 unless the expected bearer token is sent (when `token` is set), 404 for an unknown artifact,
a connection closed without an answer `drop_first` times, HTTP 500 `fail_first` times, then
`status` (410 for an expired artifact, ...), then either the body or a 302 to a pre-signed-looking
blob URL (`/blobs/...?sig=...`), served on a second server at `blob_host` when given (a
cross-host redirect, as GitHub does) or else on the same server. Like the real blob store, the
blob URL refuses a request that carries an `Authorization` header (HTTP 400).
`GET /files/<name>` serves what `add_file` registered (for plain URL downloads).
Every request is recorded (server, method, path, headers) in `requests`.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOB_SIGNATURE = "sv=2025-01-01&sig=FAKE-PRESIGNED-SIGNATURE"
_STATUS_MESSAGES = {401: "Bad credentials", 403: "Resource not accessible by integration",
                    404: "Not Found", 410: "Artifact has expired", 500: "Server Error"}


@dataclass
class Artifact:
    """How the fake answers for one artifact id."""
    body: bytes = b""
    status: int = 200
    redirect: bool = False
    fail_first: int = 0
    drop_first: int = 0
    content_type: str = "application/zip"
    answered: int = field(default=0, init=False)


@dataclass(frozen=True)
class SeenRequest:
    server: str  # "api" or "blob"
    method: str
    path: str
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


class FakeGitHubAPI:
    """The artifact API on `host` (a free port); blob downloads on `blob_host` if given."""

    def __init__(self, *, token: str | None = None, host: str = "127.0.0.1",
                 blob_host: str | None = None) -> None:
        self.token = token
        self.host = host
        self.blob_host = blob_host
        self.artifacts: dict[tuple[str, str], Artifact] = {}
        self.files: dict[str, bytes] = {}
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    # --- configuration ----------------------------------------------------------------------
    def add(self, repo: str, artifact_id: int | str, **behaviour) -> Artifact:
        artifact = Artifact(**behaviour)
        self.artifacts[(repo, str(artifact_id))] = artifact
        return artifact

    def add_file(self, name: str, body: bytes) -> str:
        """Serve `body` at /files/<name>; returns its URL."""
        self.files[name] = body
        return f"{self.url}/files/{name}"

    def seen(self, server: str | None = None) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if server is None or r.server == server]

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._base(self._servers[0])

    @property
    def blob_url(self) -> str:
        return self._base(self._servers[-1])

    def start(self) -> "FakeGitHubAPI":
        if self._servers:
            return self
        try:
            self._serve(self.host, "api")
            if self.blob_host:
                self._serve(self.blob_host, "blob")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> "FakeGitHubAPI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, host: str, role: str) -> None:
        server = ThreadingHTTPServer((host, 0), _Handler)
        server.fake = self  # type: ignore[attr-defined]
        server.role = role  # type: ignore[attr-defined]
        self._servers.append(server)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                                  name=f"fake-github-{role}", daemon=True)
        thread.start()
        self._threads.append(thread)

    @staticmethod
    def _base(server: ThreadingHTTPServer) -> str:
        host, port = server.server_address[:2]
        return f"http://{host}:{port}"

    # --- answers ----------------------------------------------------------------------------
    def _answer(self, role: str, path: str, headers: dict[str, str]) -> tuple | None:
        """(status, headers, body) for a request, or None to drop the connection."""
        parts = path.split("?", 1)[0].strip("/").split("/")
        if parts[:1] == ["files"] and role == "api":
            body = self.files.get("/".join(parts[1:]))
            return (200, {"Content-Type": "application/octet-stream"}, body) if body is not None \
                else _json(404)
        if parts[:1] == ["blobs"] and len(parts) == 4:
            artifact = self.artifacts.get((f"{parts[1]}/{parts[2]}", parts[3].removesuffix(".zip")))
            if artifact is None:
                return _json(404)
            if any(k.lower() == "authorization" for k in headers):
                return _json(400, "the pre-signed URL carries its own auth; "
                                  "an Authorization header is not allowed")
            return 200, {"Content-Type": artifact.content_type}, artifact.body
        if role != "api" or len(parts) != 7 or parts[:1] != ["repos"] \
                or parts[3:5] != ["actions", "artifacts"] or parts[6] != "zip":
            return _json(404)
        repo, artifact_id = f"{parts[1]}/{parts[2]}", parts[5]
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        if self.token is not None and auth != f"Bearer {self.token}":
            return _json(401, "Bad credentials" if auth else "Requires authentication")
        artifact = self.artifacts.get((repo, artifact_id))
        if artifact is None:
            return _json(404)
        with self._lock:
            artifact.answered += 1
            turn = artifact.answered
        if turn <= artifact.drop_first:
            return None
        if turn <= artifact.drop_first + artifact.fail_first:
            return _json(500)
        if artifact.status != 200:
            return _json(artifact.status)
        if artifact.redirect:
            target = f"{self.blob_url}/blobs/{repo}/{artifact_id}.zip?{BLOB_SIGNATURE}"
            return 302, {"Location": target}, b""
        return 200, {"Content-Type": artifact.content_type}, artifact.body


def _json(status: int, message: str | None = None) -> tuple:
    body = {"message": message or _STATUS_MESSAGES.get(status, "Error"),
            "documentation_url": "https://docs.github.com/rest", "status": str(status)}
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeGitHub/1.0"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        fake: FakeGitHubAPI = self.server.fake  # type: ignore[attr-defined]
        role: str = self.server.role  # type: ignore[attr-defined]
        headers = dict(self.headers.items())
        with fake._lock:
            fake.requests.append(SeenRequest(role, "GET", self.path, headers))
        answer = fake._answer(role, self.path, headers)
        if answer is None:
            self.close_connection = True
            return
        status, extra, body = answer
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip archive holding `files` (member name -> content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def wheel_bytes(name: str = "mooncake_transfer_engine",
                version: str = "0.0.1") -> tuple[str, bytes]:
    """(file name, content) of a tiny pure-Python wheel that pip can download and install."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n'.encode(),
        f"{dist_info}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\n"
                                  f"Version: {version}\n").encode(),
        f"{dist_info}/WHEEL": (b"Wheel-Version: 1.0\nGenerator: tests.fakes\n"
                               b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = []
    for path, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(content)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    return f"{name}-{version}-py3-none-any.whl", zip_bytes(files)
