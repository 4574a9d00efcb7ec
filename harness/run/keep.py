"""KEEP_ON_FAILURE and `invoke serve`: servers left up for a person, and how to reach them.

What is kept is described in one block, printed at the end of a kept run and while `invoke serve`
holds its servers: how to get a shell on each host (`docker exec`, over `ssh` for the remote
host), each server's URL, state and log, and how to stop it all (`invoke clean`).
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Sequence

from harness.hosts.nodes import ContainerBase, Node
from harness.servers.server import Server
from harness.settings import RemoteVia, Runtime, Settings

# SSH_HOST_KEY_POLICY as OpenSSH's client spells it (strict: its default, asking)
_HOST_KEY_OPTIONS = {"accept-new": ["-o", "StrictHostKeyChecking=accept-new"],
                     "ignore": ["-o", "StrictHostKeyChecking=no"]}


@dataclass
class Kept:
    """What a failed case left up: its failing model's servers (none for a payload case, or a
    failure before any server of the model started) and, in the Docker runtime, the
    containers."""
    case: str
    model: str = ""
    servers: list[Server] = field(default_factory=list)
    payload: bool = False      # a single-host case: its servers were the payload's own
    containers: bool = False   # HARNESS_RUNTIME=docker: the containers stay up

    @property
    def what(self) -> str:
        if self.servers:
            return f"{self.case}'s servers"
        return "the containers" if self.containers else "nothing"

    def headline(self) -> str:
        if self.servers:
            return f"KEEP_ON_FAILURE: {self.what} are left up ({self.model})"
        return (f"KEEP_ON_FAILURE: the run stopped at the failure of {self.case}; "
                + ("the containers are left up" if self.containers
                   else "nothing of it is left running"))

    def not_run_reason(self) -> str:
        return (f"not run: the run stopped at the failure of {self.case} because "
                f"KEEP_ON_FAILURE=true kept {self.what} up")


def server_url(server: Server) -> str | None:
    """Where a person reaches the server (its node's address for a wildcard bind); None for
    one without a port (a payload)."""
    return server.url() if server.port is not None else None


def shell_line(settings: Settings, node: Node) -> str:
    """The exact command that gives a person a shell where the node's processes run."""
    ssh = _ssh_prefix(settings, node)
    if isinstance(node, ContainerBase):
        docker = f"docker exec -it {shlex.quote(node.container_name)} bash"
        return f"{ssh} {docker}" if ssh else docker
    root = shlex.quote(str(node.host_layout.root))
    if ssh:
        return f"{ssh} {shlex.quote(f'cd {root} && exec bash')}"
    return f"cd {root}   (HARNESS_RUNTIME=host: no container, the processes run on this host)"


def _ssh_prefix(settings: Settings, node: Node) -> str:
    """`ssh -t ...` to the node's host as the harness reaches it; "" for this machine."""
    route = getattr(node.host, "route", None)
    if route is None:
        return ""
    target = route.target
    words = ["ssh", "-t", "-p", str(target.port)]
    if settings.remote_ssh_key:
        words += ["-i", os.path.expanduser(settings.remote_ssh_key)]
    if settings.given("SSH_CONFIG"):
        words += ["-F", os.path.expanduser(settings.ssh_config)]
    if settings.given("SSH_KNOWN_HOSTS"):
        words += ["-o", "UserKnownHostsFile=" + os.path.expanduser(settings.ssh_known_hosts)]
    words += _HOST_KEY_OPTIONS.get(settings.ssh_host_key_policy.value, [])
    if route.jumps:
        words += ["-J", ",".join(f"{hop.user}@{hop.hostname}:{hop.port}" for hop in route.jumps)]
    words.append(f"{target.user}@{target.hostname}")
    return shlex.join(words)


def stop_line(settings: Settings, nodes: Sequence[Node]) -> str:
    """How to stop everything: `invoke clean` here; `--remote` also reaches the remote host
    (HARNESS_REMOTE=local in the host runtime: the plain clean already covers its dir)."""
    remote_needs_flag = any(n.name == "remote" for n in nodes) and not (
        settings.harness_remote is RemoteVia.LOCAL and settings.harness_runtime is Runtime.HOST)
    command = "invoke clean --remote" if remote_needs_flag else "invoke clean"
    return (f"{command}   (in {nodes[0].host_layout.root}, with the same settings; it also "
            "removes run/logs and run/pids)")


def reach_text(settings: Settings, nodes: Sequence[Node], kept: Kept, *,
               alive: dict[int, bool] | None = None, title: str = "") -> str:
    """The block that says what is up and how to reach and stop it."""
    lines = [title or kept.headline()]
    but = "but the containers" if kept.containers else "(HARNESS_RUNTIME=host: no container)"
    if kept.payload:
        lines.append(f"  {kept.case} is a pytest payload case: its servers were the payload's "
                     f"own and are gone with it; nothing is kept {but}")
    elif not kept.servers:
        lines.append(f"  no server of {kept.case} was running when it failed; "
                     f"nothing is kept {but}")
    lines.append("  shells:")
    for node in nodes:
        lines.append(f"    {node.name:<7} {shell_line(settings, node)}")
    if kept.servers:
        lines.append("  servers:")
    for server in kept.servers:
        url = server_url(server) or "(no URL)"
        state = ""
        if alive is not None and server.proc is not None:
            state = "up" if alive.get(id(server), True) else "EXITED"
        where = f"{server.node.name}:" if server.node.name != "local" else ""
        lines.append(f"    {server.name:<8} {url:<28} {state:<6} log {where}"
                     f"{server.node.on_host(server.log)}")
    lines.append(f"  stop them all: {stop_line(settings, nodes)}")
    return "\n".join(lines)


def liveness(servers: Sequence[Server]) -> dict[int, bool]:
    """Whether each server's process group is still there (a crashed one is said so)."""
    return {id(s): s.proc is not None and s.node.alive(s.proc.pgid) for s in servers}
