"""What a run may wipe on the remote host: the one rule for the settings and the hosts.

Each run empties REMOTE_TEST_DIR before it copies the project there; a typo in that setting
must never empty a system or home directory.
"""
from __future__ import annotations

import posixpath
from pathlib import PurePosixPath

from harness.errors import HarnessError

# Trees of the operating system: neither they nor anything under them is a place to wipe.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
                "/proc", "/run", "/sbin", "/snap", "/sys", "/usr", "/var/lib", "/var/log",
                "/var/cache", "/var/spool", "/var/mail", "/var/run", "/var/backups")
# Where home directories live: /root and /home/<user> (and the remote user's $HOME, when known).
HOME_PARENT = "/home"
ROOT_HOME = "/root"


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
