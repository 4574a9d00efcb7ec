"""What of the project tree goes to the remote host, packed as one tar file (SPEC §5).

`SSHHost.sync_project` wipes the remote dir, uploads the tarball built here by SFTP and unpacks
it there with `tar -x`: one round trip instead of one per file, and no rsync/scp. What may be
wiped is decided by `harness.wipe`, the same rule for the settings and the hosts.
"""
from __future__ import annotations

import io
import os
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

def sync_excluded(relative: str) -> bool:
    """True for paths of the project tree that never go to the remote host."""
    parts = PurePosixPath(relative).parts
    if any(part in SYNC_EXCLUDE_NAMES for part in parts):
        return True
    if relative.endswith(SYNC_EXCLUDE_SUFFIXES):
        return True
    return any(relative == p or relative.startswith(p + "/") for p in SYNC_EXCLUDE_PATHS)


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
