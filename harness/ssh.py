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
import tarfile
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

# What `sync_project` leaves behind (names anywhere in the tree, or paths from its root).
SYNC_EXCLUDE_NAMES = frozenset({".git", ".venv", ".nox", "__pycache__", ".pytest_cache",
                                ".ruff_cache", ".mypy_cache"})
SYNC_EXCLUDE_PATHS = frozenset({"run/logs", "run/pids"})
SYNC_EXCLUDE_SUFFIXES = (".pyc",)

_SFTP_ERRORS = (IOError, OSError, paramiko.SSHException, EOFError)


class SSHError(HarnessError):
    """The remote host could not be reached, refused us, or the connection broke."""


class _UnknownHostKey(paramiko.SSHException):
    """Raised by the strict policy: the host's key is not in the known_hosts file."""


class _StrictPolicy(paramiko.RejectPolicy):
    def missing_host_key(self, client, hostname, key):
        raise _UnknownHostKey(hostname)


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """OpenSSH's `StrictHostKeyChecking=accept-new`: record an unknown host's key and go on."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        append_known_host(self.known_hosts, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.info("recorded the host key of %s (%s %s) in %s", hostname, key.get_name(),
                 key.fingerprint if hasattr(key, "fingerprint") else "", self.known_hosts)


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


def sync_excluded(relative: str) -> bool:
    """True for paths of the project tree that never go to the remote host."""
    parts = PurePosixPath(relative).parts
    if any(part in SYNC_EXCLUDE_NAMES for part in parts):
        return True
    if relative.endswith(SYNC_EXCLUDE_SUFFIXES):
        return True
    return any(relative == p or relative.startswith(p + "/") for p in SYNC_EXCLUDE_PATHS)


def check_wipeable(remote_dir: str) -> str:
    """The remote dir, normalised; refuses `/` and top-level dirs, which a wipe would wreck."""
    path = posixpath.normpath(str(remote_dir))
    if not path.startswith("/") or len(PurePosixPath(path).parts) < 3:
        raise HarnessError(f"refusing to wipe {remote_dir!r} on the remote host: REMOTE_TEST_DIR "
                           "must be an absolute path at least two levels deep "
                           "(e.g. /tmp/Mooncake_tone/mooncake_ci_test)")
    return path


def build_tarball(local_root: Path, out: Path,
                  extra_files: Mapping[str, str | bytes] | None = None) -> list[str]:
    """Tar the project tree (without what `sync_excluded` says) plus `extra_files` into `out`."""
    extra = {str(PurePosixPath(k)): v for k, v in (extra_files or {}).items()}
    members: list[str] = []

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        rel = info.name
        if rel in ("", ".") or (not sync_excluded(rel) and rel not in extra):
            if rel not in ("", "."):
                members.append(rel)
            return info
        return None

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(local_root)):
            tar.add(local_root / entry, arcname=entry, filter=keep)
        for rel, content in sorted(extra.items()):
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            _add_parent_dirs(tar, rel, members)
            tar.addfile(info, _BytesReader(data))
            members.append(rel)
    return members


def _add_parent_dirs(tar: tarfile.TarFile, rel: str, members: list[str]) -> None:
    for parent in reversed(PurePosixPath(rel).parents):
        name = str(parent)
        if name != "." and name not in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            tar.addfile(info)
            members.append(name)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._pos + size
        chunk = self._data[self._pos:end]
        self._pos += len(chunk)
        return chunk


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
            kwargs.update(key_filename=self.key_file, allow_agent=False, look_for_keys=False)
        self.connects += 1
        try:
            client.connect(**kwargs)
        except BaseException as exc:
            client.close()
            raise self._connect_error(exc) from None
        transport = client.get_transport()
        transport.set_keepalive(KEEPALIVE_S)
        log.info("%s: connected to %s@%s over SSH", self.name, self.user, self.target)
        return client

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
            client.set_missing_host_key_policy(_StrictPolicy())
        else:
            client.set_missing_host_key_policy(_AcceptNewPolicy(self.known_hosts))

    def _connect_error(self, exc: BaseException) -> BaseException:
        name = known_hosts_name(self.address, self.port)
        if isinstance(exc, _UnknownHostKey):
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
    def _sftp_call(self, what: str, func: Callable[[paramiko.SFTPClient], object]):
        """Run func on the one SFTP session; lost connection → SSHError."""
        transport = self._transport()
        with self._sftp_lock:
            try:
                if self._sftp is None:
                    self._sftp = paramiko.SFTPClient.from_transport(transport)
                return func(self._sftp)
            except (paramiko.SSHException, EOFError, socket.error) as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise               # a file error (ENOENT, EACCES...): the caller decides
                self._sftp = None
                if not transport.is_active():
                    raise self._lost(what, exc) from None
                raise self._error(f"SFTP {what} failed on {self.target}: {exc}") from None

    def _file_error(self, op: str, path: object, exc: OSError) -> SSHError:
        reason = exc.strerror or str(exc)
        return self._error(f"cannot {op} {path} on {self.target}: {reason}")

    def read_text(self, path: object) -> str:
        def read(sftp):
            with sftp.open(str(path), "rb") as fh:
                return fh.read()
        try:
            data = self._sftp_call(f"read of {path}", read)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._file_error("read", path, exc) from None
        return data.decode(errors="replace")

    def read_tail(self, path: object, max_bytes: int = 64 * 1024) -> str:
        """The end of a file (for log tails); '' when it does not exist."""
        def read(sftp):
            with sftp.open(str(path), "rb") as fh:
                size = fh.stat().st_size
                fh.seek(max(0, size - max_bytes))
                return fh.read()
        try:
            return self._sftp_call(f"read of {path}", read).decode(errors="replace")
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise self._file_error("read", path, exc) from None

    def read_from(self, path: object, offset: int) -> tuple[str, int]:
        """Text appended to a file since `offset`, and the new offset (for following a log).

        One `stat` per poll while nothing changed; the file is opened only when it grew."""
        def read(sftp):
            if sftp.stat(str(path)).st_size <= offset:
                return b""
            with sftp.open(str(path), "rb") as fh:
                fh.seek(offset)
                return fh.read()
        try:
            data = self._sftp_call(f"read of {path}", read)
        except FileNotFoundError:
            return "", offset
        except OSError as exc:
            raise self._file_error("read", path, exc) from None
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
        try:
            self._sftp_call(f"write of {target}", write)
        except OSError as exc:
            raise self._file_error("write", target, exc) from None

    def exists(self, path: object) -> bool:
        try:
            self._sftp_call(f"stat of {path}", lambda sftp: sftp.stat(str(path)))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._file_error("stat", path, exc) from None
        return True

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
            except OSError:
                if not stat.S_ISDIR(sftp.stat(target).st_mode):   # lost a race is fine
                    raise
        target = posixpath.normpath(str(path))
        try:
            self._sftp_call(f"mkdir of {target}", lambda sftp: make(sftp, target))
        except OSError as exc:
            raise self._file_error("create directory", target, exc) from None

    def remove(self, path: object) -> None:
        """Remove a file or a whole tree; nothing there is fine."""
        self.run(["rm", "-rf", "--", str(path)], timeout=300)

    def empty_dir(self, path: object) -> None:
        """Make `path` an existing, empty directory."""
        self.run(["bash", "-c", 'rm -rf -- "$1" && mkdir -p -- "$1"', "empty_dir", str(path)],
                 timeout=300)

    def put(self, local: object, remote: object) -> None:
        """Upload one file (its parent dir is created)."""
        target = PurePosixPath(str(remote))
        self.mkdir(target.parent)
        try:
            self._sftp_call(f"upload of {local}",
                            lambda sftp: sftp.put(str(local), str(target), confirm=True))
        except OSError as exc:
            raise self._file_error("upload to", target, exc) from None

    def get(self, remote: object, local: object) -> None:
        """Download one file (its local parent dir is created)."""
        Path(str(local)).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._sftp_call(f"download of {remote}", lambda sftp: sftp.get(str(remote), str(local)))
        except OSError as exc:
            raise self._file_error("download", remote, exc) from None

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
            try:
                sftp.stat(str(remote_dir))
            except FileNotFoundError:
                return
            walk(sftp, str(remote_dir), local_root)
        try:
            self._sftp_call(f"copy of {remote_dir}", copy)
        except OSError as exc:
            raise self._file_error("copy", remote_dir, exc) from None
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
