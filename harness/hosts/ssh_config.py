"""Where and how to reach the remote host: REMOTE_IP resolved through the OpenSSH client config.

SPEC §3: `HostName`, `User`, `Port`, `IdentityFile` and `ProxyJump` of the `Host` block that
matches REMOTE_IP in SSH_CONFIG (default `~/.ssh/config`, read with paramiko's `SSHConfig`) are
used; REMOTE_USER, REMOTE_SSH_PORT and REMOTE_SSH_KEY win where they are set, and without either
it is root, 22 and the SSH agent/default keys. Jump hosts are looked up in the same file (as
`ssh -J` does); the harness's settings apply to the destination only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import paramiko

from harness.errors import SettingsError
from harness.settings import Settings

# A ProxyJump chain longer than this is a loop in the config, not a network.
MAX_JUMPS = 8


@dataclass(frozen=True)
class Hop:
    """One SSH connection to open: where, as whom, with which keys."""
    alias: str                     # the name looked up in the config (REMOTE_IP for the target)
    hostname: str
    port: int
    user: str
    key_files: list[str] = field(default_factory=list)   # empty: agent and default keys
    key_from_setting: bool = False                        # REMOTE_SSH_KEY (else the config's)

    @property
    def target(self) -> str:
        return f"{self.hostname}:{self.port}"


@dataclass(frozen=True)
class Route:
    """The destination and the jump hosts before it, first jump first."""
    target: Hop
    jumps: list[Hop] = field(default_factory=list)
    config_file: str = ""           # the config that was read ("" when there was none)


def load_config(path: str) -> tuple[paramiko.SSHConfig, str]:
    """The parsed config and its path; an empty config when the file does not exist."""
    full = os.path.expanduser(path) if path else ""
    if not full or not os.path.isfile(full):
        return paramiko.SSHConfig(), ""
    try:
        return paramiko.SSHConfig.from_path(full), full
    except (OSError, UnicodeDecodeError, ValueError, paramiko.ConfigParseError) as exc:
        raise SettingsError(f"cannot read SSH_CONFIG {full}: {exc}",
                            hint="fix the file, or point SSH_CONFIG at another one") from None


def resolve(settings: Settings, address: str) -> Route:
    """The route to `address` (REMOTE_IP) as the config and the settings say."""
    config, path = load_config(settings.ssh_config)
    found = config.lookup(address)
    user = settings.remote_user
    if not settings.given("REMOTE_USER") and found.get("user"):
        user = found["user"]
    port = settings.remote_ssh_port
    if not settings.given("REMOTE_SSH_PORT") and found.get("port"):
        port = _port(found["port"], address, path)
    if settings.given("REMOTE_SSH_KEY") and settings.remote_ssh_key:
        keys, from_setting = [os.path.expanduser(settings.remote_ssh_key)], True
    else:
        keys, from_setting = _identity_files(found), False
    target = Hop(address, found.get("hostname", address), port, user, keys, from_setting)
    jumps = _jumps(config, found.get("proxyjump", ""), path, settings.remote_user, 0)
    if from_setting:  # a jump host with no IdentityFile of its own tries REMOTE_SSH_KEY too
        jumps = [hop if hop.key_files else replace(hop, key_files=keys) for hop in jumps]
    return Route(target, jumps, path)


def _jumps(config: paramiko.SSHConfig, spec: str, path: str, default_user: str,
           depth: int) -> list[Hop]:
    """The hops of a ProxyJump value (`[user@]host[:port]`, comma-separated), each one's own
    jumps first, as OpenSSH does; `none` is none."""
    if depth > MAX_JUMPS:
        raise SettingsError(f"ProxyJump chain in SSH_CONFIG {path} is longer than {MAX_JUMPS} "
                            "hops (a loop?)")
    hops: list[Hop] = []
    pending = [part.strip() for part in spec.split(",") if part.strip()]
    if [p.lower() for p in pending] == ["none"]:
        return []
    for part in pending:
        user, _, rest = part.rpartition("@")
        alias, port_text = rest, ""
        if rest.count(":") == 1:
            alias, _, port_text = rest.partition(":")
        found = config.lookup(alias)
        inner = found.get("proxyjump", "")
        hops += _jumps(config, inner, path, default_user, depth + 1)
        port = _port(port_text or found.get("port", "22"), alias, path)
        hops.append(Hop(alias, found.get("hostname", alias), port,
                        user or found.get("user", default_user), _identity_files(found)))
    return hops


def _identity_files(found: paramiko.SSHConfigDict) -> list[str]:
    """The config's IdentityFile entries that exist (OpenSSH skips missing ones too)."""
    files = [os.path.expanduser(p) for p in found.get("identityfile", [])]
    return [p for p in files if os.path.isfile(p)]


def _port(text: str, alias: str, path: str) -> int:
    if str(text).isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    raise SettingsError(f"bad Port {text!r} for {alias} in SSH_CONFIG {path or '(none)'} "
                        "(accepted: a TCP port, 1-65535)")
