"""Host keys of the remote host, as SSH_HOST_KEY_POLICY says (SPEC §3).

`strict`: only keys already in SSH_KNOWN_HOSTS; `accept-new` (OpenSSH's
`StrictHostKeyChecking=accept-new`): an unknown host's key is recorded there and accepted, a
changed one refused (paramiko's `BadHostKeyException`); `ignore`: any key, nothing recorded.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import paramiko

log = logging.getLogger(__name__)


class UnknownHostKey(paramiko.SSHException):
    """Raised by the strict policy: the host's key is not in the known_hosts file."""


class StrictPolicy(paramiko.RejectPolicy):
    def missing_host_key(self, client, hostname, key):
        raise UnknownHostKey(hostname)


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """OpenSSH's `StrictHostKeyChecking=accept-new`: record an unknown host's key and go on."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        append_known_host(self.known_hosts, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.info("recorded the host key of %s (%s %s) in %s", hostname, key.get_name(),
                 key.fingerprint, self.known_hosts)


def known_hosts_name(address: str, port: int) -> str:
    """How known_hosts names a host: `addr` on port 22, `[addr]:port` elsewhere."""
    return address if port == 22 else f"[{address}]:{port}"


def known_hosts_line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def append_known_host(path: Path, name: str, key: paramiko.PKey) -> None:
    """Add one line to a known_hosts file, creating it (0600, its dir 0700) when missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(known_hosts_line(name, key))
