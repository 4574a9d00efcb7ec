"""The container engine of the remote host: the docker CLI, run as argv over `SSHHost`.

docker-py's `ssh://` transport opens its own paramiko client and ignores REMOTE_SSH_KEY, SSH_CONFIG
and the host-key policy (SPEC §5), so the remote engine is driven by the CLI over the harness's
own SSH connection: `docker run` (the argv of `ContainerSpec.docker_run_argv`, the same container
as the local one), `docker exec`, `docker inspect`, `docker restart`, `docker stop`,
`docker rm -f`, `docker pull`, `docker image inspect`. The policy (replace, restart, stop, pull)
is `ContainerNode`'s (harness.containers.node); an engine that does not answer is one clear
`DockerError` naming the host.
"""
from __future__ import annotations

import shlex
from typing import Sequence

from harness.containers.engine import (CONTROL_TIMEOUT_S, EXEC_KILL_AFTER_S, LEFTOVER_STATES,
                                       ContainerEngine, EngineRefused)
from harness.containers.spec import ContainerSpec
from harness.errors import CommandFailed, DockerError
from harness.text import one_line
from harness.hosts.local import Completed
from harness.hosts.ssh import SSHHost

# A pull gets longer than a control command (30 GB images).
PULL_TIMEOUT_S = 3 * 3600
# Extra seconds the CLI gets beyond an exec's own limit before the SSH side gives up on it.
EXEC_GRACE_S = 30

_ENGINE_DOWN = ("cannot connect to the docker daemon", "is the docker daemon running",
                "error during connect", "permission denied while trying to connect")
REMOTE_ENGINE_HINT = ("start the Docker engine on the remote host (systemctl start docker) and "
                      "make sure REMOTE_USER may use it")


def daemon_error(output: str) -> str | None:
    """The CLI's own complaint (engine down, no such container...), None for a command's
    output. `docker exec` exits 1 for both, so the words decide."""
    for line in output.splitlines():
        low = line.strip().lower()
        if any(mark in low for mark in _ENGINE_DOWN):
            return line.strip()
        if low.startswith("error response from daemon:"):
            return line.strip()
    return None


def _missing(done: Completed) -> bool:
    return "no such" in done.output.lower()


class DockerCLI(ContainerEngine):
    """The engine of `host`, through `docker` (and its global options, e.g. --host)."""

    def __init__(self, host: SSHHost, name: str, docker: Sequence[str] = ("docker",)) -> None:
        self.host = host
        self.name = name                 # the node's name, for errors
        self.docker = list(docker)

    def _docker(self, args: Sequence[str], *, timeout: float = CONTROL_TIMEOUT_S) -> Completed:
        """Run `docker args` on the remote host; an engine that does not answer → DockerError."""
        argv = [*self.docker, *args]
        try:
            done = self.host.run(argv, timeout=timeout, check=False)
        except CommandFailed as exc:                  # timed out
            raise DockerError(f"docker {args[0]} on {self.host.address} did not finish within "
                              f"{timeout:.0f}s ({shlex.join(argv)[:200]})", host=self.name,
                              log_tail=exc.log_tail, hint=REMOTE_ENGINE_HINT) from None
        if done.exit_code == 127:
            raise DockerError(f"no docker CLI on {self.host.address} "
                              f"({one_line(done.output, 500)})",
                              host=self.name, hint="install the Docker CLI on the remote host")
        complaint = daemon_error(done.output) if not done.ok else None
        if complaint and any(mark in complaint.lower() for mark in _ENGINE_DOWN):
            raise DockerError(f"Docker engine on {self.host.address} not reachable "
                              f"({one_line(complaint, 200)})", host=self.name,
                              hint=REMOTE_ENGINE_HINT)
        return done

    def _checked(self, args: Sequence[str], *, missing_ok: bool = False,
                 timeout: float = CONTROL_TIMEOUT_S) -> Completed:
        done = self._docker(args, timeout=timeout)
        if not done.ok and not (missing_ok and _missing(done)):
            raise EngineRefused(one_line(done.output, 500) or f"exit {done.exit_code}")
        return done

    def ping(self) -> str:
        done = self._docker(["version", "--format", "{{.Server.Version}}"], timeout=60)
        if not done.ok or not done.output.strip():
            raise DockerError(f"Docker engine on {self.host.address} not reachable "
                              f"({one_line(done.output, 200)})", host=self.name,
                              hint=REMOTE_ENGINE_HINT)
        return done.output.strip()

    def state(self, name: str) -> str | None:
        done = self._checked(["container", "inspect", "--format", "{{.State.Status}}", name],
                             missing_ok=True)
        return done.output.strip() if done.ok else None

    def container_id(self, name: str) -> str | None:
        done = self._checked(["container", "inspect", "--format", "{{.Id}}", name],
                             missing_ok=True)
        return done.output.strip().splitlines()[-1] if done.ok and done.output.strip() else None

    def run(self, spec: ContainerSpec) -> None:
        self._checked(spec.docker_run_argv()[1:])

    def logs(self, name: str, tail: int) -> str:
        return self._docker(["logs", "--tail", str(tail), name]).output

    def restart(self, name: str, timeout_s: int) -> None:
        self._checked(["restart", "-t", str(timeout_s), name], missing_ok=True)

    def stop(self, name: str, timeout_s: int) -> None:
        self._checked(["stop", "-t", str(timeout_s), name], missing_ok=True)

    def remove(self, name: str) -> bool:
        done = self._checked(["rm", "-f", name], missing_ok=True)
        return done.ok

    def leftovers(self, label_filters: list[str]) -> list[str]:
        args = ["ps", "-a", "--format", "{{.Names}}"]
        for label in label_filters:
            args += ["--filter", f"label={label}"]
        for state in LEFTOVER_STATES:
            args += ["--filter", f"status={state}"]
        return self._checked(args).output.split()

    def image_present(self, image: str) -> bool:
        done = self._docker(["image", "inspect", "--format", "{{.Id}}", image])
        if done.ok:
            return True
        if "no such image" in done.output.lower():
            return False
        raise EngineRefused(one_line(done.output, 500))

    def pull(self, image: str) -> None:
        self._checked(["pull", "--quiet", image], timeout=PULL_TIMEOUT_S)

    def exec(self, name: str, argv: list[str], limit_s: float) -> Completed:
        # The SSH side waits the command's limit plus the time `timeout` and the CLI need.
        outer = limit_s + EXEC_KILL_AFTER_S + EXEC_GRACE_S
        try:
            done = self.host.run([*self.docker, "exec", name, *argv], timeout=outer,
                                 check=False)
        except CommandFailed as exc:
            raise CommandFailed(argv, None, exc.output, host=self.name) from None
        complaint = daemon_error(done.output) if done.exit_code in (1, 125, 126, 127) else None
        if complaint or done.exit_code == 125:
            raise EngineRefused(one_line(complaint or done.output, 300))
        return Completed(list(argv), done.exit_code, done.output)
