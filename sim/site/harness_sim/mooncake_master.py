"""SIMULATED stand-in for `mooncake_master`, used only where the real one cannot run.

The harness's simulator prefers the REAL master from the mooncake-transfer-engine wheel. On a
machine without the RDMA user-space libraries it needs (libibverbs, libnl: a fresh Linux box
running `nox -s demo`), the real binary exits at once with "error while loading shared
libraries". Then this stand-in takes its place: it says so on its first line, accepts TCP
connections on the RPC port and answers `GET /health` on the metrics port, which is all the
payloads check. It stores nothing.
"""
from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

PROBE_TIMEOUT_S = 15


def real_master() -> str | None:
    """The real `mooncake_master` on PATH (never this stand-in's own launcher)."""
    me = os.path.realpath(sys.argv[0])
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder, "mooncake_master")
        if os.access(candidate, os.X_OK) and os.path.realpath(candidate) != me:
            return candidate
    return shutil.which("mooncake_master")


def usable(binary: str) -> tuple[bool, str]:
    try:
        probe = subprocess.run([binary, "--version"], capture_output=True, text=True,
                               timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    output = (probe.stderr or probe.stdout).strip().splitlines()
    return probe.returncode == 0, output[-1] if output else f"exit {probe.returncode}"


def flag(args: list[str], *names: str, default: str = "") -> str:
    for arg in args:
        for name in names:
            for prefix in (f"--{name}=", f"-{name}="):
                if arg.startswith(prefix):
                    return arg[len(prefix):]
    return default


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = b'{"status": "ok", "service_ready": true, "simulated": true}'
        self.send_response(200 if self.path.startswith("/health") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def stand_in(args: list[str], why: str) -> int:
    host = flag(args, "rpc_address", default="127.0.0.1")
    port = int(flag(args, "rpc_port", "port", default="50051"))
    metrics_host = flag(args, "metrics_host", default="127.0.0.1")
    metrics_port = int(flag(args, "metrics_port", default="9003"))
    print(f"[harness-sim] SIMULATED mooncake_master: the real one cannot run here ({why}); "
          f"a stand-in listens on {host}:{port} (RPC) and {metrics_host}:{metrics_port} "
          "(GET /health)", flush=True)
    rpc = socket.create_server((host, port))
    health = http.server.ThreadingHTTPServer((metrics_host, metrics_port), _Health)
    threading.Thread(target=health.serve_forever, daemon=True).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rpc.settimeout(0.2)
    print(f"Master service started on port {port}", flush=True)
    while not stop.is_set():
        try:
            conn, _ = rpc.accept()
            conn.close()
        except OSError:
            continue
    rpc.close()
    health.shutdown()
    return 0


def main() -> int:
    args = sys.argv[1:]
    binary = real_master()
    why = "no mooncake_master on PATH"
    if binary:
        ok, why = usable(binary)
        if ok:
            os.execv(binary, [binary, *args])
    return stand_in(args, why)
