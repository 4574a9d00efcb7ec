"""A router is ready only while its own process listens on its port (issue 7): an answer from a
foreign listener on that port must not make a router that failed to bind look ready."""
import http.server
import sys
import threading

import pytest

from harness.errors import NotReady
from harness.hosts.local import LocalHost
from harness.hosts.nodes import HostNode
from harness.servers.server import Server, router_ready
from tests.simproc import free_port

pytestmark = pytest.mark.integration
READY_LINES = ("echo 'Activated 1 worker(s) (marked as healthy)'; "
               "echo 'Activated 1 worker(s) (marked as healthy)'; "
               "echo 'Successfully loaded tokenizer'; ")


class Readiness(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def router(tmp_path, port: int, script: str) -> Server:
    node = HostNode(LocalHost("local", "127.0.0.1"), tmp_path)
    return Server("router", node, ["bash", "-c", script], "case",
                  node.layout.case_logs("case") / "load_balancer.log", router_ready(2, 3.0),
                  address="127.0.0.1", port=port)


def test_a_foreign_listener_does_not_make_a_router_ready(tmp_path):
    port = free_port()
    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", port), Readiness)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    server = router(tmp_path, port, READY_LINES + "exec sleep 60")  # says ready, never binds
    try:
        server.start()
        with pytest.raises(NotReady, match=f"its own process listening on its port "
                                           f"\\(port {port} is not held by router\\)"):
            server.wait_ready()
    finally:
        server.stop(5)
        foreign.shutdown()
        foreign.server_close()


def test_a_router_listening_itself_is_ready(tmp_path):
    port = free_port()
    listen = f"exec {sys.executable} -m http.server {port} --bind 127.0.0.1"
    server = router(tmp_path, port, READY_LINES + listen)
    try:
        server.start()
        server.wait_ready()
    finally:
        server.stop(5)
