"""The file half of `SSHHost`: LocalHost's file interface over the one SFTP session.

A mixin: `SSHHost` provides the connection (`_transport`, `_answered_within`, `_dying`, its
errors), `run`, `name` and `target`; here is the one SFTP session on it (`_sftp_call`: every
request with a deadline, errors as one `SSHError` line). Trees go by one command (`rm -rf`,
`tar -x`) rather than a request per file.
"""
from __future__ import annotations

import errno
import logging
import posixpath
import socket
import stat
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

import paramiko

from harness.errors import HarnessError, close_quietly
from harness.hosts.sync_tree import build_tarball
from harness.wipe import check_wipeable

log = logging.getLogger("harness.hosts.ssh")
_RAISE = object()


class SFTPFiles:
    """read_text, read_tail, read_from, write_text, exists, mkdir, remove, empty_dir, put, get,
    get_tree and sync_project, as LocalHost has them."""

    # --- the one SFTP session ----------------------------------------------------------------
    def _sftp_call(self, op: str, path: object, func: Callable[[paramiko.SFTPClient], object],
                   missing: object = _RAISE):
        """func on the one SFTP session. A missing file gives `missing` (default: raise
        FileNotFoundError, as LocalHost does); any other file error or a lost connection is
        one SSHError line."""
        transport = self._transport()
        with self._sftp_lock:
            try:
                if self._sftp is None:
                    self._sftp = self._open_sftp(transport)
                return func(self._sftp)
            except socket.timeout:
                # a late answer would be taken for the next request's: start a new session
                self._drop_sftp()
                raise self._error(f"SFTP {op} {path} on {self.target} got no answer within "
                                  f"{self.sftp_timeout:g}s",
                                  hint="the remote host or its disk is wedged") from None
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

    def _open_sftp(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        """One SFTP session whose every request times out (paramiko's would wait forever)."""
        channel = transport.open_session(timeout=self.connect_timeout)
        try:
            channel.settimeout(self.sftp_timeout)
            self._answered_within(self.sftp_timeout, channel,
                                  lambda: channel.invoke_subsystem("sftp"), "the SFTP request")
            return paramiko.SFTPClient(channel)
        except BaseException:
            channel.close()
            raise

    def _drop_sftp(self) -> None:
        close_quietly(self._sftp)
        self._sftp = None

    # --- files --------------------------------------------------------------------------------
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
        and unpacked there. Leaves out `.git`, caches, venvs and all of run/ (the wheel goes by
        its own step). `extra_files` ({relative path: content}, e.g. the rewritten run/.shrc)
        replace the tree's files of the same path. Returns the paths sent."""
        target = self._wipeable_here(str(remote_dir))
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

    def _wipeable_here(self, remote_dir: str) -> str:
        """`check_wipeable` as the remote host sees the dir: symlinks resolved there, and its
        user's $HOME (wherever it lives) refused too, before anything is removed."""
        check_wipeable(remote_dir)
        done = self.run(["bash", "-c", 'cd ~ && pwd -P && realpath -m -- "$1"', "where",
                         remote_dir], timeout=60, check=False)
        lines = done.output.splitlines()
        if not done.ok or len(lines) < 2:
            raise HarnessError(f"cannot resolve {remote_dir} on {self.target}: "
                               f"{done.output.strip()[:200] or f'exit {done.exit_code}'}",
                               host=self.name)
        home, resolved = lines[-2].strip(), lines[-1].strip()
        check_wipeable(resolved, home)
        return posixpath.normpath(remote_dir)
