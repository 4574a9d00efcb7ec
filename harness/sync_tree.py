"""What of the project tree goes to the remote host, packed as one tar file (SPEC §5).

`SSHHost.sync_project` wipes the remote dir, uploads the tarball built here by SFTP and unpacks
it there with `tar -x`: one round trip instead of one per file, and no rsync/scp. What may be
wiped is decided here too (`wipe_refusal`), by the same rule for the settings and the hosts.
"""
from __future__ import annotations

import io
import os
import posixpath
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Mapping

from harness.errors import HarnessError

# What `sync_project` leaves behind (names anywhere in the tree, or paths from its root).
# All of run/: the local wheel step empties and rewrites run/whls while the remote host is
# synced, so reading it could meet a vanishing file or a half-written zip. The remote host gets
# its own run/.shrc as an extra file and the wheel by its own step, once the wheel is whole.
SYNC_EXCLUDE_NAMES = frozenset({".git", ".venv", ".nox", "__pycache__", ".pytest_cache",
                                ".ruff_cache", ".mypy_cache", ".benchmarks"})
SYNC_EXCLUDE_PATHS = frozenset({"run"})
SYNC_EXCLUDE_SUFFIXES = (".pyc",)

# Trees of the operating system: neither they nor anything under them is a place to wipe.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
                "/proc", "/run", "/sbin", "/snap", "/sys", "/usr", "/var/lib", "/var/log",
                "/var/cache", "/var/spool", "/var/mail", "/var/run", "/var/backups")
# Where home directories live: /root and /home/<user> (and the remote user's $HOME, when known).
HOME_PARENT = "/home"
ROOT_HOME = "/root"


def sync_excluded(relative: str) -> bool:
    """True for paths of the project tree that never go to the remote host."""
    parts = PurePosixPath(relative).parts
    if any(part in SYNC_EXCLUDE_NAMES for part in parts):
        return True
    if relative.endswith(SYNC_EXCLUDE_SUFFIXES):
        return True
    return any(relative == p or relative.startswith(p + "/") for p in SYNC_EXCLUDE_PATHS)


def _within(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _home_refusal(path: str, home: str) -> str | None:
    """A home dir itself, a dir above it, or its dot-dirs (~/.ssh, ~/.cache: keys, models)."""
    if _within(home, path):
        return f"it is the home directory {home} or holds it"
    if _within(path, home):
        first = PurePosixPath(path).relative_to(home).parts[0]
        if first.startswith("."):
            return f"it is inside {home}/{first}"
    return None


def wipe_refusal(remote_dir: str, home: str | None = None) -> str | None:
    """Why `remote_dir` must not be wiped, or None when it may be.

    Refused: a relative path, `/` and every top-level dir, the system trees and anything under
    them, /root and /home/<user> (and `home`, the user's $HOME where known) and the dirs above
    them, and a home's dot-dirs (~/.ssh, ~/.cache) with all they hold."""
    raw = str(remote_dir).strip()
    if not raw.startswith("/"):
        return "not an absolute path"
    path = posixpath.normpath(raw)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if len(PurePosixPath(path).parts) < 3:
        return "a top-level directory; it must be at least two levels deep"
    for tree in SYSTEM_TREES:
        if _within(path, tree):
            return f"inside the system directory {tree}"
    homes = [ROOT_HOME]
    parts = PurePosixPath(path).parts
    if _within(path, HOME_PARENT) and len(parts) >= 3:
        homes.append(posixpath.join(HOME_PARENT, parts[2]))
    if home and home.startswith("/") and posixpath.normpath(home) != "/":
        homes.append(posixpath.normpath(home))
    for each in homes:
        why = _home_refusal(path, each)
        if why:
            return why
    return None


def check_wipeable(remote_dir: str, home: str | None = None) -> str:
    """The dir, normalised; HarnessError when `wipe_refusal` refuses it (what a wipe would
    wreck). The hosts call it again with the resolved path and the user's home before wiping."""
    why = wipe_refusal(remote_dir, home)
    if why:
        raise HarnessError(f"refusing to wipe {remote_dir!r}: {why}; REMOTE_TEST_DIR must be an "
                           "absolute directory of its own, not a system or home directory "
                           "(e.g. /tmp/Mooncake_tone/mooncake_ci_test)")
    return posixpath.normpath(str(remote_dir).strip())


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

    try:
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            for entry in sorted(os.listdir(local_root)):
                if not sync_excluded(entry):
                    tar.add(local_root / entry, arcname=entry, filter=keep)
            for rel, content in sorted(extra.items()):
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(rel)
                info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                _add_parent_dirs(tar, rel, members)
                tar.addfile(info, io.BytesIO(data))
                members.append(rel)
    except (OSError, tarfile.TarError) as exc:
        # a file that vanished or cannot be read while the tree is packed: one line, not a
        # traceback ("internal error") for every case
        raise HarnessError(f"cannot pack the project tree {local_root} for the remote host: "
                           f"{exc}", step="sync-project") from None
    return members


def _add_parent_dirs(tar: tarfile.TarFile, rel: str, members: list[str]) -> None:
    for parent in reversed(PurePosixPath(rel).parents):
        name = str(parent)
        if name != "." and name not in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            tar.addfile(info)
            members.append(name)
