"""Reading an OpenSSH client config as `ssh` reads it, before paramiko parses it (SPEC §11).

paramiko's `SSHConfig` knows `Host` and `Match` but not `Include`, and it expands the `%`
tokens of `ProxyCommand` with the config's own user and port before the settings may change
them. So `Include` is expanded here (globs; relative paths under ~/.ssh, as for a user's
config), and `ProxyCommand` keeps its tokens for `proxy_command` to expand with the final
values. What would change where or how the harness connects and it cannot honour is named.
"""
from __future__ import annotations

import glob
import os
import re
import shlex

import paramiko

from harness.errors import SettingsError

MAX_INCLUDE_DEPTH = 16          # OpenSSH's own limit on nested Include
_TOKEN_GUARD = "\ue000"         # stands for `%` in ProxyCommand while paramiko parses
_KEYWORD = re.compile(r"^\s*(\w+)(\s*=\s*|\s+)(.*)$")
# Keywords that change where or how `ssh` connects, which the harness does not do.
UNHONOURED = ("bindaddress", "bindinterface", "canonicalizehostname", "certificatefile",
              "hostkeyalias", "identityagent", "pkcs11provider", "proxyusefdpass",
              "securitykeyprovider", "addressfamily")


def read_config(path: str) -> paramiko.SSHConfig:
    """The config at `path` with its Includes in place (SettingsError naming a bad one)."""
    return paramiko.SSHConfig.from_text(_expanded(path, 0))


def _expanded(path: str, depth: int) -> str:
    if depth > MAX_INCLUDE_DEPTH:
        raise SettingsError(f"SSH_CONFIG: Include nested deeper than {MAX_INCLUDE_DEPTH} "
                            f"levels at {path} (a loop?)")
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read SSH_CONFIG {path}: {exc}",
                            hint="fix the file, or point SSH_CONFIG at another one") from None
    out, block = [], ""
    for line in lines:
        match = _KEYWORD.match(line)
        keyword = match[1].lower() if match else ""
        if keyword in ("host", "match"):
            block = line
        if keyword == "proxycommand":
            line = line.replace("%", _TOKEN_GUARD)
        if keyword != "include":
            out.append(line)
            continue
        for pattern in shlex.split(match[3]):
            for included in _included_files(pattern):
                out.append(_expanded(included, depth + 1))
                if block:  # the lines after an Include belong to the block it stood in
                    out.append(block)
    return "\n".join(out)


def _included_files(pattern: str) -> list[str]:
    full = os.path.expanduser(pattern)
    if not os.path.isabs(full):
        full = os.path.join(os.path.expanduser("~/.ssh"), full)
    return sorted(p for p in glob.glob(full) if os.path.isfile(p))


def proxy_command(found: paramiko.SSHConfigDict, hostname: str, port: int, user: str) -> str:
    """The ProxyCommand that applies ("" for none), its tokens expanded as `ssh` does."""
    raw = found.get("proxycommand", "").replace(_TOKEN_GUARD, "%")
    if not raw or raw.lower() == "none":
        return ""
    tokens = {"h": hostname, "p": str(port), "r": user, "n": hostname, "%": "%"}
    return re.sub(r"%(.)", lambda m: tokens.get(m[1], m[0]), raw)


def jump_specs(spec: str) -> list[tuple[str, str, str]]:
    """(user, host, port) of each hop of a ProxyJump value: `[user@]host[:port]` or
    `ssh://[user@]host[:port]`, comma-separated; `none` is no hop."""
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if [p.lower() for p in parts] == ["none"]:
        return []
    hops = []
    for part in parts:
        part = part[len("ssh://"):] if part.lower().startswith("ssh://") else part
        user, _, rest = part.rpartition("@")
        host, port = rest, ""
        if rest.startswith("[") and "]" in rest:      # [v6 address]:port
            host, _, tail = rest[1:].partition("]")
            port = tail.removeprefix(":")
        elif rest.count(":") == 1:
            host, _, port = rest.partition(":")
        hops.append((user, host, port))
    return hops


def refuse_unhonoured(found: paramiko.SSHConfigDict, alias: str, path: str) -> None:
    """One line naming a keyword of the matching blocks that the harness cannot honour."""
    for keyword in UNHONOURED:
        if keyword in found:
            raise SettingsError(f"SSH_CONFIG {path}: {keyword} applies to {alias}, and the "
                                "harness cannot honour it (it connects with paramiko)",
                                hint=f"drop {keyword} for this host, or give the harness a "
                                     "config of its own in SSH_CONFIG")
