"""Where and how to reach the remote host: REMOTE_IP resolved through the OpenSSH client config.

SPEC §3, §11: the blocks of SSH_CONFIG (default `~/.ssh/config`; `Include`, `Host` and `Match`
as `ssh` reads them, harness.hosts.ssh_config_file) that match REMOTE_IP give `HostName`,
`User`, `Port`, `IdentityFile`, `ProxyJump` (every form) or `ProxyCommand`, and
`StrictHostKeyChecking`/`UserKnownHostsFile`; REMOTE_USER, REMOTE_SSH_PORT, REMOTE_SSH_KEY,
SSH_HOST_KEY_POLICY and SSH_KNOWN_HOSTS win where they are set, and without either it is root,
22 and the SSH agent/default keys. Jump hosts are looked up in the same file (as `ssh -J`
does); the harness's settings apply to the destination only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import paramiko

from harness.errors import SettingsError
from harness.hosts.ssh_config_file import (jump_specs, proxy_command, read_config,
                                           refuse_unhonoured)
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
    proxy_command: str = ""         # ProxyCommand, tokens expanded ("" for none)
    host_key_policy: str = "accept-new"   # SSH_HOST_KEY_POLICY, or StrictHostKeyChecking's
    known_hosts: str = ""           # SSH_KNOWN_HOSTS, or the first UserKnownHostsFile


# StrictHostKeyChecking -> SSH_HOST_KEY_POLICY (nobody answers `ask`'s question: strict)
HOST_KEY_CHECKING = {"yes": "strict", "ask": "strict", "accept-new": "accept-new",
                     "no": "ignore", "off": "ignore"}


def load_config(path: str) -> tuple[paramiko.SSHConfig, str]:
    """The parsed config and its path; an empty config when the file does not exist."""
    full = os.path.expanduser(path) if path else ""
    if not full or not os.path.isfile(full):
        return paramiko.SSHConfig(), ""
    try:
        return read_config(full), full
    except (ValueError, paramiko.ConfigParseError) as exc:
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
    refuse_unhonoured(found, address, path)
    # paramiko's lookup always sets hostname (to the alias itself where no HostName applies)
    target = Hop(address, found["hostname"], port, user, keys, from_setting)
    jumps = _jumps(config, found.get("proxyjump", ""), path, settings.remote_user, 0)
    if from_setting:  # a jump host with no IdentityFile of its own tries REMOTE_SSH_KEY too
        jumps = [hop if hop.key_files else replace(hop, key_files=keys) for hop in jumps]
    command = proxy_command(found, target.hostname, port, user)
    if command and jumps:
        raise SettingsError(f"SSH_CONFIG {path}: both ProxyJump and ProxyCommand apply to "
                            f"{address}; keep one of them for this host")
    return Route(target, jumps, path, command, *_host_keys(settings, found, address, path))


def _host_keys(settings: Settings, found: paramiko.SSHConfigDict, alias: str,
               path: str) -> tuple[str, str]:
    """(SSH_HOST_KEY_POLICY, known_hosts file): the settings where set, else the config's
    StrictHostKeyChecking and first UserKnownHostsFile, else the settings' defaults."""
    checking = found.get("stricthostkeychecking", "").lower()
    if checking and checking not in HOST_KEY_CHECKING:
        raise SettingsError(f"bad StrictHostKeyChecking {checking!r} for {alias} in SSH_CONFIG "
                            f"{path} (accepted: {', '.join(HOST_KEY_CHECKING)})")
    policy = settings.ssh_host_key_policy.value
    if checking and not settings.given("SSH_HOST_KEY_POLICY"):
        policy = HOST_KEY_CHECKING[checking]
    files = found.get("userknownhostsfile", "").split()
    known = files[0] if files and not settings.given("SSH_KNOWN_HOSTS") else \
        settings.ssh_known_hosts
    return policy, os.path.expanduser(known)


def _jumps(config: paramiko.SSHConfig, spec: str, path: str, default_user: str,
           depth: int) -> list[Hop]:
    """The hops of a ProxyJump value (ssh_config_file.jump_specs), each one's own jumps
    first, as OpenSSH does; `none` is none."""
    if depth > MAX_JUMPS:
        raise SettingsError(f"ProxyJump chain in SSH_CONFIG {path} is longer than {MAX_JUMPS} "
                            "hops (a loop?)")
    hops: list[Hop] = []
    for user, alias, port_text in jump_specs(spec):
        found = config.lookup(alias)
        inner = found.get("proxyjump", "")
        hops += _jumps(config, inner, path, default_user, depth + 1)
        port = _port(port_text or found.get("port", "22"), alias, path)
        hops.append(Hop(alias, found["hostname"], port,
                        user or found.get("user", default_user), _identity_files(found)))
    return hops


def _identity_files(found: paramiko.SSHConfigDict) -> list[str]:
    """The config's IdentityFile entries that exist (OpenSSH skips missing ones too)."""
    files = [os.path.expanduser(p) for p in found.get("identityfile", [])]
    return [p for p in files if os.path.isfile(p)]


def _port(text: str, alias: str, path: str) -> int:
    if str(text).isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    # only a config file read gives a Port or a ProxyJump, so `path` always names one
    raise SettingsError(f"bad Port {text!r} for {alias} in SSH_CONFIG {path} "
                        "(accepted: a TCP port, 1-65535)")
