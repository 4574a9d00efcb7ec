"""Hosts: where commands run and files live. `LocalHost` is this machine (subprocess + files).

The remote host (`SSHHost`, paramiko exec + SFTP) has the same small interface.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from harness.errors import CommandFailed, HarnessError
from harness.files import write_text_atomic
from harness.redaction import child_environ
from harness.hosts.sync_tree import build_tarball
from harness.wipe import check_wipeable


@dataclass(frozen=True)
class Completed:
    """What a finished command left: its argv, exit status and combined output."""
    argv: list[str]
    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class LocalHost:
    """This machine. `name` is how errors refer to it; `address` is the IP servers bind."""

    def __init__(self, name: str = "local", address: str = "127.0.0.1") -> None:
        self.name = name
        self.address = address

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, cwd: object = None, check: bool = True) -> Completed:
        """Run argv to completion; stdout and stderr together. Raises CommandFailed on non-zero."""
        full_env = child_environ(env)   # never the GitHub token, whatever runs
        try:
            # A session of its own: Ctrl-C/SIGTERM to the harness's process group must not kill
            # the commands its cleanup runs (the stops of its servers) half-way.
            proc = subprocess.run(list(argv), env=full_env, cwd=str(cwd) if cwd else None,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout, text=True,
                                  errors="replace", start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            out = exc.output or ""
            if isinstance(out, bytes):
                out = out.decode(errors="replace")
            raise CommandFailed(argv, None, out, host=self.name) from None
        except FileNotFoundError as exc:
            raise CommandFailed(argv, 127, str(exc), host=self.name) from None
        done = Completed(list(argv), proc.returncode, proc.stdout)
        if check and not done.ok:
            raise CommandFailed(argv, done.exit_code, done.output, host=self.name)
        return done

    # --- files --------------------------------------------------------------------------------
    def read_text(self, path: object) -> str:
        return Path(str(path)).read_text(errors="replace")

    def read_tail(self, path: object, max_bytes: int = 64 * 1024) -> str:
        """The end of a file (for log tails); '' when it does not exist."""
        try:
            with open(str(path), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def read_from(self, path: object, offset: int) -> tuple[str, int]:
        """Text appended to a file since `offset`, and the new offset (for following a log)."""
        try:
            with open(str(path), "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return "", offset
        return data.decode(errors="replace"), offset + len(data)

    def write_text(self, path: object, text: str) -> None:
        write_text_atomic(Path(str(path)), text)

    def exists(self, path: object) -> bool:
        return Path(str(path)).exists()

    def mkdir(self, path: object) -> None:
        Path(str(path)).mkdir(parents=True, exist_ok=True)

    def remove(self, path: object) -> None:
        """Remove a file or a whole tree; nothing there is fine."""
        target = Path(str(path))
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def empty_dir(self, path: object) -> None:
        """Make `path` an existing, empty directory."""
        self.remove(path)
        self.mkdir(path)

    def put(self, local: object, remote: object) -> None:
        """Copy one file (its parent dir is created); `remote` is a path on this machine."""
        target = Path(str(remote))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(local), target)

    def get_tree(self, remote_dir: object, local_dir: object) -> list[Path]:
        """Copy a tree's regular files into local_dir (merged); a missing tree copies nothing."""
        source, dest = Path(str(remote_dir)), Path(str(local_dir))
        copied = []
        if source.resolve() == dest.resolve() or not source.is_dir():
            return copied
        for path in sorted(source.rglob("*")):
            if path.is_file() and not path.is_symlink():
                target = dest / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied.append(target)
        return copied

    def sync_project(self, local_root: object, remote_dir: object,
                     extra_files: Mapping[str, str | bytes] | None = None) -> list[str]:
        """Make remote_dir a copy of the project tree, exactly as the SSH host does (the demo's
        second node lives on this machine): wiped first, the same files left out."""
        check_wipeable(str(remote_dir))
        target = Path(check_wipeable(os.path.realpath(str(remote_dir)), Path.home().as_posix()))
        source = Path(os.path.realpath(str(local_root)))
        if target == source or target in source.parents or source in target.parents:
            raise HarnessError(f"refusing to wipe {remote_dir}: the project tree {source} is "
                               "there; REMOTE_TEST_DIR must be a directory of its own",
                               step="sync-project", host=self.name)
        with tempfile.TemporaryDirectory(prefix="harness-sync-") as tmp:
            tarball = Path(tmp) / "project.tar"
            members = build_tarball(source, tarball, extra_files)
            try:
                self.remove(target)
                target.mkdir(parents=True)
                with tarfile.open(tarball) as tar:
                    try:
                        tar.extractall(target, filter="data")
                    except TypeError:  # Pythons before the extraction filters (3.10.11, older)
                        tar.extractall(target)
            except (OSError, tarfile.TarError) as exc:
                raise HarnessError(f"cannot copy the project to {target}: {exc}",
                                   step="sync-project", host=self.name) from None
        return members

    def close(self) -> None:
        """Nothing to release locally; here for the same interface as the SSH host."""
