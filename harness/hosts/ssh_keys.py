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


def known_hosts_line_number(path: Path, name: str) -> int | None:
    """The first line of a known_hosts file that names `name` (plain or hashed), or None."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].startswith("@") and len(words) > 1:   # @cert-authority / @revoked
            words = words[1:]
        for pattern in words[0].split(","):
            if pattern == name:
                return number
            if pattern.startswith("|1|"):
                salt = pattern[3:].split("|")[0]
                if paramiko.HostKeys.hash_host(name, salt) == pattern:
                    return number
    return None


def changed_key_message(target: str, key: paramiko.PKey, known_hosts: Path, name: str,
                        policy: str) -> str:
    """One line for a host key that does not match the recorded one: which file and line,
    and the two ways on (remove that line, or the setting that takes any key)."""
    number = known_hosts_line_number(known_hosts, name)
    where = f"line {number} of {known_hosts}" if number else str(known_hosts)
    return (f"host key of {target} has CHANGED ({key.get_name()} {key.fingerprint} does not "
            f"match {where}); refusing to connect (SSH_HOST_KEY_POLICY={policy}); if the host "
            f"was really reinstalled, remove that line with ssh-keygen -R '{name}' -f "
            f"{known_hosts}, or set SSH_HOST_KEY_POLICY=ignore to accept any key")


def key_file_problem(key_file: str) -> tuple[str, str | None] | None:
    """Why REMOTE_SSH_KEY cannot be used (message, hint), or None when it can."""
    if not os.path.isfile(key_file):
        return (f"REMOTE_SSH_KEY {key_file} does not exist",
                "point REMOTE_SSH_KEY at the private key, or unset it to use the SSH agent "
                "and ~/.ssh keys")
    try:
        paramiko.PKey.from_path(key_file)
    except paramiko.PasswordRequiredException:
        return (f"REMOTE_SSH_KEY {key_file} is protected by a passphrase",
                "load it into an SSH agent and unset REMOTE_SSH_KEY")
    except (OSError, paramiko.SSHException, ValueError) as exc:
        return (f"cannot use REMOTE_SSH_KEY {key_file} as a private key "
                f"({exc or type(exc).__name__})", None)
    return None
