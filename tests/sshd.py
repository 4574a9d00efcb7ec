"""A real OpenSSH server for the tests: the "remote" host is this machine reached over SSH.

`Sshd(workdir).start()` runs `sshd -D -e -f CONFIG` on 127.0.0.2 (a free port), with its own
ed25519 host key and one authorized client key, all under `workdir`; `stop()` ends it by PID
(its per-connection children and the commands they run too). Only loopback addresses.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
HOST = "127.0.0.2"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def available() -> str | None:
    """Why a test sshd cannot run here, or None when it can."""
    for tool in (SSHD, SSH_KEYGEN):
        if not os.access(tool, os.X_OK):
            return f"{os.path.basename(tool)} is not installed (openssh-server)"
    if not os.path.isdir("/run/sshd"):
        return "/run/sshd is missing (sshd's privilege-separation dir)"
    return None


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on at `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def keygen(path: Path, comment: str) -> Path:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return path


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(") ")[2].split()
        return int(fields[1]), fields[19]
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[tuple[int, str]]:
    """Every descendant of pid as (pid, start time), read from /proc."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                parents.setdefault(info[0], []).append((int(entry), info[1]))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _kill(procs: list[tuple[int, str]], sig: int) -> None:
    """Signal each process that is still the one we found (same start time: no reused PID)."""
    for pid, started in procs:
        info = _stat(pid)
        if info is None or info[1] != started:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(procs: list[tuple[int, str]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all((_stat(pid) or (0, None))[1] != started for pid, started in procs):
            return
        time.sleep(0.02)


@dataclass
class Sshd:
    """One test sshd. After `start()`: host, port, user, client_key, known_hosts, host_key."""
    workdir: Path
    host: str = HOST
    user: str = "root"
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def client_key(self) -> Path:
        return self.workdir / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        """An empty known_hosts file (tests copy it where they need their own)."""
        return self.workdir / "known_hosts"

    @property
    def host_key_file(self) -> Path:
        return self.workdir / "ssh_host_ed25519_key"

    @property
    def host_key(self) -> str:
        """The host's public key line (`ssh-ed25519 AAAA... comment`)."""
        return (self.workdir / "ssh_host_ed25519_key.pub").read_text().strip()

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "sshd.log"

    def start(self) -> "Sshd":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.host_key_file.exists():
            keygen(self.host_key_file, "harness-test-host")
        if not self.client_key.exists():
            keygen(self.client_key, "harness-test-client")
        self.known_hosts.touch()
        self.port = self.port or free_port(self.host)
        config = self.workdir / "sshd_config"
        # No AcceptEnv line: the client's environment is not taken over (sshd's default).
        config.write_text("\n".join([
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.host_key_file}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.client_key}.pub",
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "Subsystem sftp internal-sftp",
            # bash sources ~/.bashrc for commands run by sshd only at shell level 1; SHLVL=1
            # makes it level 2. This machine's ~/.bashrc runs `pyenv init`, whose rehash lock
            # a dropped connection can leave behind, stalling every later login for 60 s.
            "SetEnv SHLVL=1",
            "MaxSessions 64",
            "MaxStartups 64",
            "LogLevel INFO",
            "",
        ]))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"test sshd exited with {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"test sshd did not answer on {self.host}:{self.port} within "
                                   f"{START_TIMEOUT_S:.0f}s: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def drop_connections(self) -> None:
        """Kill every connection (and what runs in it) at once; the daemon keeps listening."""
        if self.proc is not None:
            _kill(_children(self.proc.pid), signal.SIGKILL)

    def stop(self) -> None:
        """End the daemon and everything it started, by PID; idempotent."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        children = _children(proc.pid)
        if proc.poll() is None:
            proc.terminate()
        _kill(children, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
        _wait_gone(children, STOP_TIMEOUT_S)
        _kill(children, signal.SIGKILL)

    def __enter__(self) -> "Sshd":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
