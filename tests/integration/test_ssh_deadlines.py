"""Every wait over SSH has a deadline: servers that accept and then never answer.

- a TCP listener that never sends the SSH banner (a wedged sshd, a port forwarded to nowhere);
- an SSH server (paramiko's server side, on loopback) that logs the client in and then never
  answers an exec request, or accepts the SFTP subsystem and never speaks SFTP.

Each ends in one SSHError line within a bounded time, instead of a run that hangs forever.
"""
from __future__ import annotations

import socket
import threading
import time

import paramiko
import pytest

from harness.settings import Settings
from harness.hosts.ssh import SSHError, SSHHost

BOUND_S = 10.0  # the deadlines below are 1-2 s; the rest is slack for a loaded machine


@pytest.fixture
def silent_listener():
    """Accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    server.close()


class _LoginThenSilence(paramiko.ServerInterface):
    """Lets anyone in, opens sessions, then never answers what is asked on them."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        self.release.wait(60)          # the server's transport is stuck: no answer at all
        return False

    def check_channel_subsystem_request(self, channel, name):
        return True                    # "yes, SFTP" ... and then not one SFTP packet


@pytest.fixture
def silent_sshd():
    host_key = paramiko.RSAKey.generate(1024)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    release = threading.Event()
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        server.settimeout(0.2)
        while not release.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            transport.start_server(server=_LoginThenSilence(release))
            transports.append(transport)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    release.set()
    thread.join(5)
    for transport in transports:
        transport.close()
    server.close()


def ssh_host(port: int, tmp_path, **kwargs) -> SSHHost:
    key = paramiko.RSAKey.generate(1024)
    key.write_private_key_file(str(tmp_path / "id_rsa"))
    settings = Settings.from_env({
        "REMOTE_IP": "127.0.0.1", "REMOTE_SSH_PORT": str(port), "REMOTE_USER": "ci",
        "REMOTE_SSH_KEY": str(tmp_path / "id_rsa"), "SSH_HOST_KEY_POLICY": "ignore",
        "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"), "REMOTE_TEST_DIR": "/srv/x/ci"})
    return SSHHost(settings, "127.0.0.1", **kwargs)


def one_line_failure(call) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(SSHError) as err:
        call()
    took = time.monotonic() - started
    assert "\n" not in str(err.value) and err.value.host == "remote"
    return str(err.value), took


def test_no_banner_is_a_bounded_handshake_failure(silent_listener, tmp_path):
    host = ssh_host(silent_listener, tmp_path, connect_timeout=1.0)
    message, took = one_line_failure(lambda: host.run(["true"]))
    assert took < BOUND_S, took
    assert f"127.0.0.1:{silent_listener}" in message
    assert "handshake" in message or "cannot reach" in message, message
    host.close()


def test_an_exec_request_never_answered_is_a_bounded_failure(silent_sshd, tmp_path):
    host = ssh_host(silent_sshd, tmp_path, connect_timeout=1.5)
    message, took = one_line_failure(lambda: host.run(["true"], timeout=300))
    assert took < BOUND_S, took
    assert "did not answer" in message and "within 1.5s" in message, message
    host.close()


def test_an_sftp_session_that_never_speaks_is_a_bounded_failure(silent_sshd, tmp_path):
    host = ssh_host(silent_sshd, tmp_path, connect_timeout=1.5, sftp_timeout=1.0)
    message, took = one_line_failure(lambda: host.read_text("/etc/hostname"))
    assert took < BOUND_S, took
    assert "SFTP" in message and "within 1s" in message, message
    host.close()
