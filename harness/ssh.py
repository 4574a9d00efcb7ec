"""The remote host over SSH: `SSHHost`, the same small interface as `LocalHost` on paramiko.

One paramiko connection is opened on first use and reused for the whole run (exec channels and
one SFTP session share it); `close()` ends it. Host keys follow `SSH_HOST_KEY_POLICY` and
`SSH_KNOWN_HOSTS` (SPEC §3): `strict` knows only the file, `accept-new` records unknown keys in
it and refuses changed ones, `ignore` takes any key and records nothing. Every failure is one
`SSHError` line naming the host (`remote`) and the address, with a hint of what to do.
No `ssh`, `scp` or `rsync` subprocess is involved: the project tree goes up as one tar file.
"""
from __future__ import annotations

import errno
import logging
import os
import posixpath
import shlex
import socket
import stat
import tempfile
import threading
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping, Sequence

import paramiko

from harness.errors import CommandFailed, HarnessError
from harness.hosts import Completed
from harness.settings import HostKeyPolicy, Settings
from harness.ssh_keys import AcceptNewPolicy, StrictPolicy, UnknownHostKey, known_hosts_name
from harness.sync_tree import build_tarball, check_wipeable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0
KEEPALIVE_S = 15
POLL_S = 0.2
# Seconds a command with a timeout may overrun it locally before the channel is closed (the
# remote `timeout` wrapper TERMs it at the limit and KILLs it this much later).
TIMEOUT_GRACE_S = 2.0
REMOTE_KILL_AFTER_S = 5
EOF_AFTER_EXIT_S = 2.0
TIMED_OUT_CODES = (124, 137)
_RAISE = object()


class SSHError(HarnessError):
    """The remote host could not be reached, refused us, or the connection broke."""


def remote_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                   cwd: object = None, timeout: float | None = None) -> str:
    """argv as one line for the remote shell: `cd CWD && timeout ... env K=V argv`, all quoted."""
    words = [str(a) for a in argv]
    if env:
        words = ["env", *[f"{k}={v}" for k, v in env.items()], *words]
    if timeout is not None:
        words = ["timeout", "-k", str(REMOTE_KILL_AFTER_S), f"{max(timeout, 0.001):g}", *words]
    line = shlex.join(words)
    if cwd:
        line = f"cd {shlex.quote(str(cwd))} && {line}"
    return line


class SSHHost:
    """The remote host. `name` is how errors refer to it; `address` is the IP servers bind."""

    def __init__(self, settings: Settings, address: str, name: str = "remote", *,
                 connect_timeout: float = CONNECT_TIMEOUT_S,
                 client_factory: Callable[[], paramiko.SSHClient] = paramiko.SSHClient) -> None:
        self.name = name
        self.address = address
        self.port = int(settings.remote_ssh_port)
        self.user = settings.remote_user
        self.key_file = os.path.expanduser(settings.remote_ssh_key) if settings.remote_ssh_key \
            else ""
        self.policy = HostKeyPolicy(settings.ssh_host_key_policy)
        self.known_hosts = Path(os.path.expanduser(settings.ssh_known_hosts))
        self.connect_timeout = connect_timeout
        self.connects = 0            # how many connections were opened (one per run is the aim)
        self._client_factory = client_factory
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()        # connection setup and the one SFTP session
        self._sftp_lock = threading.RLock()

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"

    def __repr__(self) -> str:
        return f"SSHHost({self.name!r}, {self.user}@{self.target})"

    # --- the connection ----------------------------------------------------------------------
    def _error(self, message: str, hint: str | None = None) -> SSHError:
        return SSHError(message, host=self.name, hint=hint)

    def _lost(self, what: str, exc: BaseException | None = None) -> SSHError:
        why = f" ({type(exc).__name__}: {exc})" if exc is not None and str(exc) else ""
        return self._error(f"SSH connection to {self.target} lost during {what}{why}",
                           hint="the remote host went down, sshd was restarted or the network "
                                "dropped; processes started there may still run")

    def _transport(self) -> paramiko.Transport:
        """The open transport; connects on first use (and again after a lost connection)."""
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return transport
                log.warning("%s: SSH connection to %s was lost; reconnecting",
                            self.name, self.target)
                self._drop()
            self._client = self._connect()
            return self._client.get_transport()

    def _connect(self) -> paramiko.SSHClient:
        client = self._client_factory()
        self._apply_host_key_policy(client)
        kwargs = dict(hostname=self.address, port=self.port, username=self.user,
                      timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                      auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout)
        if self.key_file:
            if not os.path.isfile(self.key_file):
                raise self._error(f"REMOTE_SSH_KEY {self.key_file} does not exist",
                                  hint="point REMOTE_SSH_KEY at the private key, or unset it "
                                       "to use the SSH agent and ~/.ssh keys")
            self._check_key_file()
            kwargs.update(key_filename=self.key_file, allow_agent=False, look_for_keys=False)
        self.connects += 1
        try:
            client.connect(**kwargs)
        except BaseException as exc:
            client.close()
            raise self._connect_error(exc) from None
        transport = client.get_transport()
        transport.set_keepalive(KEEPALIVE_S)
        _tcp_keepalive(transport.sock)
        log.info("%s: connected to %s@%s over SSH", self.name, self.user, self.target)
        return client

    def _check_key_file(self) -> None:
        """A key that cannot be used is said so here, not as a refused login later."""
        try:
            paramiko.PKey.from_path(self.key_file)
        except paramiko.PasswordRequiredException:
            raise self._error(f"REMOTE_SSH_KEY {self.key_file} is protected by a passphrase",
                              hint="load it into an SSH agent and unset REMOTE_SSH_KEY") \
                from None
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise self._error(f"cannot use REMOTE_SSH_KEY {self.key_file} as a private key "
                              f"({exc or type(exc).__name__})") from None

    def _apply_host_key_policy(self, client: paramiko.SSHClient) -> None:
        if self.policy is HostKeyPolicy.IGNORE:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            return
        if self.known_hosts.is_file():
            try:
                client.get_host_keys().load(str(self.known_hosts))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise self._error(f"cannot read SSH_KNOWN_HOSTS {self.known_hosts}: {exc}") \
                    from None
        elif self.policy is HostKeyPolicy.STRICT and self.known_hosts.exists():
            raise self._error(f"SSH_KNOWN_HOSTS {self.known_hosts} is not a file")
        if self.policy is HostKeyPolicy.STRICT:
            client.set_missing_host_key_policy(StrictPolicy())
        else:
            client.set_missing_host_key_policy(AcceptNewPolicy(self.known_hosts))

    def _connect_error(self, exc: BaseException) -> BaseException:
        name = known_hosts_name(self.address, self.port)
        if isinstance(exc, UnknownHostKey):
            return self._error(
                f"host key of {self.target} is not in {self.known_hosts} "
                f"(SSH_HOST_KEY_POLICY=strict); add it with ssh-keyscan -p {self.port} "
                f"{self.address} >> {self.known_hosts} or use accept-new")
        if isinstance(exc, paramiko.BadHostKeyException):
            return self._error(
                f"host key of {self.target} has CHANGED ({exc.key.get_name()} "
                f"{exc.key.fingerprint} does not match {self.known_hosts}); refusing to connect "
                f"(SSH_HOST_KEY_POLICY={self.policy.value}); if the host was really reinstalled, "
                f"remove the old line with ssh-keygen -R '{name}' -f {self.known_hosts}")
        if isinstance(exc, paramiko.AuthenticationException):
            return self._error(
                f"SSH login as {self.user}@{self.target} refused (wrong user or key; "
                f"REMOTE_USER/REMOTE_SSH_KEY)",
                hint=f"the key ({self.key_file or 'agent/default keys'}) must be in "
                     f"~{self.user}/.ssh/authorized_keys on the remote host")
        if isinstance(exc, (paramiko.ssh_exception.NoValidConnectionsError, socket.timeout,
                            TimeoutError, socket.gaierror, OSError)):
            why = _reach_reason(exc)
            return self._error(f"cannot reach {self.target} over SSH ({why})",
                               hint="check REMOTE_IP and REMOTE_SSH_PORT, and that sshd runs "
                                    "on the remote host")
        if isinstance(exc, (paramiko.SSHException, EOFError)):
            return self._error(f"SSH handshake with {self.target} failed ({exc or type(exc)})",
                               hint="is an SSH server listening on REMOTE_SSH_PORT?")
        return exc

    def _drop(self) -> None:
        for thing in (self._sftp, self._client):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing must not fail a cleanup path
                    pass
        self._sftp = None
        self._client = None

    def close(self) -> None:
        """Close the SFTP session and the connection; idempotent (a later use reconnects)."""
        with self._lock, self._sftp_lock:
            self._drop()

    def __enter__(self) -> "SSHHost":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- commands ----------------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, cwd: object = None, check: bool = True) -> Completed:
        """Run argv to completion remotely; stdout and stderr together. Raises CommandFailed on
        non-zero (with check), on timeout always; SSHError when the connection breaks."""
        argv = [str(a) for a in argv]
        command = remote_command(argv, env=env, cwd=cwd, timeout=timeout)
        what = f"`{shlex.join(argv)[:200]}`"
        transport = self._transport()
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(what, exc) from None
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(POLL_S)
            channel.exec_command(command)
            channel.shutdown_write()          # stdin at EOF, as LocalHost's DEVNULL
            output, code = self._collect(channel, transport, timeout, what)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(what, exc) from None
        finally:
            channel.close()
        text = output.decode(errors="replace")
        if code is None or (timeout is not None and code in TIMED_OUT_CODES):
            raise CommandFailed(argv, None, text, host=self.name)
        done = Completed(argv, code, text)
        if check and not done.ok:
            raise CommandFailed(argv, code, text, host=self.name)
        return done

    def _collect(self, channel: paramiko.Channel, transport: paramiko.Transport,
                 timeout: float | None, what: str) -> tuple[bytes, int | None]:
        """Read until EOF and the exit status; (output, None) when the local deadline passed."""
        deadline = None if timeout is None else time.monotonic() + timeout + TIMEOUT_GRACE_S
        chunks: list[bytes] = []
        eof = False
        exited_at = None
        while not (eof and channel.status_event.is_set()):
            if deadline is not None and time.monotonic() >= deadline:
                return b"".join(chunks), None
            if channel.status_event.is_set() and exited_at is None:
                exited_at = time.monotonic()
            # A process left in the background may hold the output open: once the command
            # exited, its output is only waited for while it keeps coming.
            if exited_at is not None and time.monotonic() - exited_at > EOF_AFTER_EXIT_S:
                break
            if not eof:
                try:
                    data = channel.recv(65536)
                except socket.timeout:
                    data = None
                if data:
                    chunks.append(data)
                    if exited_at is not None:
                        exited_at = time.monotonic()
                elif data == b"":
                    eof = True
            else:
                channel.status_event.wait(POLL_S)
            if not transport.is_active():
                raise self._lost(what)
        if channel.exit_status == -1 and self._dying(transport):
            raise self._lost(what)
        return b"".join(chunks), channel.exit_status

    @staticmethod
    def _dying(transport: paramiko.Transport) -> bool:
        """After a channel closed without an exit status: did the connection go? (paramiko
        closes the channels a moment before it marks the transport inactive)."""
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            if not transport.is_active():
                return True
            time.sleep(0.02)
        return False

    # --- files (SFTP) ------------------------------------------------------------------------
    def _sftp_call(self, op: str, path: object, func: Callable[[paramiko.SFTPClient], object],
                   missing: object = _RAISE):
        """func on the one SFTP session. A missing file gives `missing` (default: raise
        FileNotFoundError, as LocalHost does); any other file error or a lost connection is
        one SSHError line."""
        transport = self._transport()
        with self._sftp_lock:
            try:
                if self._sftp is None:
                    self._sftp = paramiko.SFTPClient.from_transport(transport)
                return func(self._sftp)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if self._sftp is None or self._sftp.sock.closed:
                    self._sftp = None            # reopened on the next call
                    if self._dying(transport):
                        raise self._lost(f"{op} {path}", exc) from None
                    raise self._error(f"SFTP session to {self.target} closed during {op} "
                                      f"{path} ({exc})") from None
                if isinstance(exc, FileNotFoundError):
                    if missing is _RAISE:
                        raise
                    return missing
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                raise self._error(f"cannot {op} {path} on {self.target}: {reason}") from None

    def read_text(self, path: object) -> str:
        def read(sftp):
            with sftp.open(str(path), "rb") as fh:
                return fh.read()
        return self._sftp_call("read", path, read).decode(errors="replace")

    def read_tail(self, path: object, max_bytes: int = 64 * 1024) -> str:
        """The end of a file (for log tails); '' when it does not exist."""
        def read(sftp):
            with sftp.open(str(path), "rb") as fh:
                fh.seek(max(0, fh.stat().st_size - max_bytes))
                return fh.read()
        return self._sftp_call("read", path, read, missing=b"").decode(errors="replace")

    def read_from(self, path: object, offset: int) -> tuple[str, int]:
        """Text appended to a file since `offset`, and the new offset (for following a log).

        One `stat` per poll while nothing changed; the file is opened only when it grew."""
        def read(sftp):
            if sftp.stat(str(path)).st_size <= offset:
                return b""
            with sftp.open(str(path), "rb") as fh:
                fh.seek(offset)
                return fh.read()
        data = self._sftp_call("read", path, read, missing=b"")
        return data.decode(errors="replace"), offset + len(data)

    def write_text(self, path: object, text: str) -> None:
        """Write atomically: a temporary file beside it, then posix-rename over it."""
        target = PurePosixPath(str(path))
        self.mkdir(target.parent)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")

        def write(sftp):
            with sftp.open(str(tmp), "wb") as fh:
                fh.write(text.encode())
            sftp.posix_rename(str(tmp), str(target))
        self._sftp_call("write", target, write)

    def exists(self, path: object) -> bool:
        return self._sftp_call("stat", path, lambda sftp: bool(sftp.stat(str(path))),
                               missing=False)

    def mkdir(self, path: object) -> None:
        """Create a directory and its parents; there already is fine."""
        def make(sftp, target: str) -> None:
            try:
                if stat.S_ISDIR(sftp.stat(target).st_mode):
                    return
                raise OSError(errno.EEXIST, "exists and is not a directory")
            except FileNotFoundError:
                pass
            parent = posixpath.dirname(target)
            if parent and parent != target:
                make(sftp, parent)
            try:
                sftp.mkdir(target)
            except OSError as exc:
                try:
                    if stat.S_ISDIR(sftp.stat(target).st_mode):   # lost a race is fine
                        return
                except OSError:
                    pass
                # no errno: not to be mistaken for a missing file by the caller
                raise OSError(f"{exc.strerror or exc}") from None
        target = posixpath.normpath(str(path))
        self._sftp_call("create directory", target, lambda sftp: make(sftp, target))

    def remove(self, path: object) -> None:
        """Remove a file or a whole tree; nothing there is fine.

        Files (PID files, logs: the common case) go by SFTP; a tree by `rm -rf` over SSH."""
        def remove_file(sftp) -> bool:
            if stat.S_ISDIR(sftp.lstat(str(path)).st_mode):
                return False
            sftp.remove(str(path))
            return True
        if not self._sftp_call("remove", path, remove_file, missing=True):
            self.run(["rm", "-rf", "--", str(path)], timeout=300)

    def empty_dir(self, path: object) -> None:
        """Make `path` an existing, empty directory."""
        self.run(["bash", "-c", 'rm -rf -- "$1" && mkdir -p -- "$1"', "empty_dir", str(path)],
                 timeout=300)

    def put(self, local: object, remote: object) -> None:
        """Upload one file (its parent dir is created)."""
        target = PurePosixPath(str(remote))
        self.mkdir(target.parent)
        self._sftp_call("upload to", target,
                        lambda sftp: sftp.put(str(local), str(target), confirm=True))

    def get(self, remote: object, local: object) -> None:
        """Download one file (its local parent dir is created)."""
        Path(str(local)).parent.mkdir(parents=True, exist_ok=True)
        self._sftp_call("download", remote, lambda sftp: sftp.get(str(remote), str(local)))

    def get_tree(self, remote_dir: object, local_dir: object) -> list[Path]:
        """Copy a remote tree's regular files into local_dir (merged, overwriting same names).

        A missing remote dir copies nothing. Returns the local files written."""
        copied: list[Path] = []
        local_root = Path(str(local_dir))

        def walk(sftp, remote: str, local: Path) -> None:
            for entry in sorted(sftp.listdir_attr(remote), key=lambda e: e.filename):
                src = posixpath.join(remote, entry.filename)
                dst = local / entry.filename
                if stat.S_ISDIR(entry.st_mode):
                    walk(sftp, src, dst)
                elif stat.S_ISREG(entry.st_mode):
                    local.mkdir(parents=True, exist_ok=True)
                    sftp.get(src, str(dst))
                    copied.append(dst)

        def copy(sftp) -> None:
            sftp.stat(str(remote_dir))
            walk(sftp, str(remote_dir), local_root)
        self._sftp_call("copy", remote_dir, copy, missing=None)
        return copied

    def sync_project(self, local_root: object, remote_dir: object,
                     extra_files: Mapping[str, str | bytes] | None = None) -> list[str]:
        """Make remote_dir a copy of the project tree: wiped first, then one tar file uploaded
        and unpacked there. Leaves out `.git`, caches, venvs, run/logs and run/pids; keeps
        run/whls. `extra_files` ({relative path: content}, e.g. the rewritten run/.shrc)
        replace the tree's files of the same path. Returns the paths sent."""
        target = check_wipeable(str(remote_dir))
        with tempfile.TemporaryDirectory(prefix="harness-sync-") as tmp:
            tarball = Path(tmp) / "project.tar"
            members = build_tarball(Path(str(local_root)), tarball, extra_files)
            remote_tar = f"{target}.sync-{uuid.uuid4().hex[:8]}.tar"
            self.run(["rm", "-rf", "--", target], timeout=600)
            self.put(tarball, remote_tar)
            try:
                self.run(["bash", "-c", 'mkdir -p -- "$2" && tar -x --no-same-owner -f "$1" '
                         '-C "$2"', "sync", remote_tar, target], timeout=600)
            finally:
                self.run(["rm", "-f", "--", remote_tar], check=False, timeout=60)
        log.info("%s: project synced to %s (%d entries)", self.name, target, len(members))
        return members


def _tcp_keepalive(sock) -> None:
    """Notice a peer that vanished without a word (power loss, partition) within about a
    minute: TCP keepalive probes, and a limit on unacknowledged data (Linux options)."""
    options = [(socket.SOL_SOCKET, "SO_KEEPALIVE", 1), (socket.IPPROTO_TCP, "TCP_KEEPIDLE", 15),
               (socket.IPPROTO_TCP, "TCP_KEEPINTVL", 5), (socket.IPPROTO_TCP, "TCP_KEEPCNT", 6),
               (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", 60_000)]
    for level, name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(level, option, value)
            except (OSError, AttributeError):
                pass


def _reach_reason(exc: BaseException) -> str:
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        errors = list(exc.errors.values())
        first = errors[0] if errors else exc
        return getattr(first, "strerror", None) or str(first).lower()
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connection timed out"
    if isinstance(exc, socket.gaierror):
        return f"address not resolved: {exc.strerror or exc}"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
