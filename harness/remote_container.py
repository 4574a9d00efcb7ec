"""The container node on the remote host, driven through the harness's own SSH connection.

docker-py's `ssh://` transport opens its own paramiko client and ignores REMOTE_SSH_KEY and the
host-key policy (SPEC §5), so here the remote engine is driven by the docker CLI, run as argv
over `SSHHost`: `docker run` (the argv of `ContainerSpec.docker_run_argv`, the same container as
the local one), `docker exec`, `docker inspect`, `docker restart`, `docker rm -f`,
`docker pull`, `docker image inspect`. Behaviour matches `ContainerNode`: the project
(REMOTE_TEST_DIR) is at /test_run, leftovers of a failed start are removed, and an engine that
does not answer is one clear `DockerError` naming the host.
"""
from __future__ import annotations

import logging
import math
import shlex
from typing import Sequence

from harness.container import EXEC_DEFAULT_TIMEOUT_S, EXEC_KILL_AFTER_S, LEFTOVER_STATES
from harness.container_spec import (LABEL_ROLE, LABEL_RUN_ID, ROLE_CI_CONTAINER, ContainerSpec,
                                    container_spec, start_hint)
from harness.errors import CommandFailed, DockerError
from harness.hosts import Completed
from harness.layout import CONTAINER_ROOT, Layout
from harness.nodes import ContainerBase
from harness.settings import ImagePull, Settings
from harness.ssh import SSHHost

log = logging.getLogger(__name__)

# Control commands (run, inspect, restart, rm) may take this long before the engine counts as
# wedged; a pull gets longer (30 GB images), `docker exec` is bounded by its own timeout.
CONTROL_TIMEOUT_S = 300
PULL_TIMEOUT_S = 3 * 3600
# Extra seconds the CLI gets beyond an exec's own limit before the SSH side gives up on it.
EXEC_GRACE_S = 30
STEP_PULL_IMAGE = "pull-image"          # harness.prep's name for the step

_ENGINE_DOWN = ("cannot connect to the docker daemon", "is the docker daemon running",
                "error during connect", "permission denied while trying to connect")
REMOTE_ENGINE_HINT = ("start the Docker engine on the remote host (systemctl start docker) and "
                      "make sure REMOTE_USER may use it")


def one_line(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]


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


class RemoteContainerNode(ContainerBase):
    """Processes run in the CI container on the remote host; the project is at /test_run."""

    def __init__(self, settings: Settings, host: SSHHost, project_dir: object = None, *,
                 container_name: str | None = None, name: str | None = None,
                 docker: Sequence[str] = ("docker",)) -> None:
        self.settings = settings
        self.host = host
        self.name = name or host.name
        self.container_name = container_name or settings.remote_container
        self.project_dir = str(project_dir or settings.remote_test_dir)
        self.layout = Layout(CONTAINER_ROOT)
        self.host_layout = Layout.at(self.project_dir)
        self.docker = list(docker)       # the CLI and its global options (e.g. --host)

    def __repr__(self) -> str:
        return f"RemoteContainerNode({self.name!r}, container={self.container_name!r})"

    # --- the docker CLI over SSH ---------------------------------------------------------------
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
            raise DockerError(f"no docker CLI on {self.host.address} ({one_line(done.output)})",
                              host=self.name, hint="install the Docker CLI on the remote host")
        complaint = daemon_error(done.output) if not done.ok else None
        if complaint and any(mark in complaint.lower() for mark in _ENGINE_DOWN):
            raise DockerError(f"Docker engine on {self.host.address} not reachable "
                              f"({one_line(complaint, 200)})", host=self.name,
                              hint=REMOTE_ENGINE_HINT)
        return done

    def _error(self, what: str, done: Completed, hint: str | None = None) -> DockerError:
        return DockerError(f"{what} container {self.container_name}: "
                           f"{one_line(done.output) or f'exit {done.exit_code}'}",
                           host=self.name, hint=hint)

    def ping(self) -> str:
        """The remote engine's version; DockerError when it does not answer."""
        done = self._docker(["version", "--format", "{{.Server.Version}}"], timeout=60)
        if not done.ok or not done.output.strip():
            raise DockerError(f"Docker engine on {self.host.address} not reachable "
                              f"({one_line(done.output, 200)})", host=self.name,
                              hint=REMOTE_ENGINE_HINT)
        return done.output.strip()

    def status(self) -> str | None:
        """The container's state (running, exited, created...), None when there is none."""
        done = self._docker(["container", "inspect", "--format", "{{.State.Status}}",
                             self.container_name])
        if done.ok:
            return done.output.strip()
        if "no such" in done.output.lower():
            return None
        raise self._error("cannot inspect", done)

    def running(self) -> bool:
        return self.status() == "running"

    # --- images ------------------------------------------------------------------------------
    def container_id(self) -> str:
        done = self._docker(["inspect", "--format", "{{.Id}}", self.container_name])
        if not done.ok or not done.output.strip():
            raise DockerError(f"cannot inspect container {self.container_name} on "
                              f"{self.host.address}: {one_line(done.output)}", host=self.name)
        return done.output.strip().splitlines()[-1]

    def image_present(self, image: str) -> bool:
        done = self._docker(["image", "inspect", "--format", "{{.Id}}", image])
        if done.ok:
            return True
        if "no such image" in done.output.lower():
            return False
        raise DockerError(f"cannot inspect image {image}: {one_line(done.output)}",
                          step=STEP_PULL_IMAGE, host=self.name)

    def pull(self, image: str, policy: ImagePull | str) -> bool:
        """Pull as IMAGE_PULL says (like prep.pull_image locally); True when it pulled."""
        policy = ImagePull(policy)
        if policy is not ImagePull.ALWAYS and self.image_present(image):
            log.info("%s: IMAGE_PULL=%s and %s is present", self.name, policy.value, image)
            return False
        if policy is ImagePull.NEVER:
            raise DockerError(f"image {image} is not present and IMAGE_PULL=never",
                              step=STEP_PULL_IMAGE, host=self.name,
                              hint=f"docker pull {image} on that host, or set IMAGE_PULL=missing")
        done = self._docker(["pull", "--quiet", image], timeout=PULL_TIMEOUT_S)
        if not done.ok:
            raise DockerError(f"cannot pull image {image}: {one_line(done.output)}",
                              step=STEP_PULL_IMAGE, host=self.name,
                              hint="check the image name and the registry; IMAGE_PULL=missing "
                                   "uses an image already on the host")
        return True

    # --- lifecycle ---------------------------------------------------------------------------
    def spec(self, image: str, run_id: str) -> ContainerSpec:
        """The same container as ContainerNode's; optional paths are checked on the remote."""
        return container_spec(self.settings, image, run_id, name=self.container_name,
                              project_dir=self.project_dir, exists=self.host.exists)

    def start(self, image: str, run_id: str) -> None:
        """Replace any container of this name with a fresh one of `image`, running idle."""
        self.remove()
        done = self._docker(self.spec(image, run_id).docker_run_argv()[1:])
        if not done.ok:
            self._remove_quietly()
            message = one_line(done.output)
            raise DockerError(f"cannot start container {self.container_name} from {image}: "
                              f"{message}", host=self.name, hint=start_hint(message))
        state = self.status()
        if state != "running":
            logs = self._docker(["logs", "--tail", "30", self.container_name]).output
            self._remove_quietly()
            raise DockerError(f"container {self.container_name} exited right after start "
                              f"(status {state})", host=self.name, log_tail=logs or None,
                              hint="the image needs bash and coreutils' sleep")
        log.info("%s: container %s running (%s)", self.name, self.container_name, image)

    def _remove_quietly(self) -> None:
        try:
            self._docker(["rm", "-f", self.container_name])
        except DockerError as exc:
            log.warning("%s: could not remove container %s after a failed start: %s",
                        self.name, self.container_name, exc)

    def restart(self) -> None:
        """Restart the container (kills every process in it; the writable layer survives)."""
        if self.status() is None:
            raise DockerError(f"container {self.container_name} does not exist",
                              host=self.name, hint="run the start-container step first")
        done = self._docker(["restart", "-t", str(math.ceil(self.settings.timeout_stop_s)),
                             self.container_name])
        if not done.ok:
            raise self._error("cannot restart", done)
        state = self.status()
        if state != "running":
            raise DockerError(f"container {self.container_name} is {state} after a restart",
                              host=self.name)

    def stop_container(self) -> None:
        """Stop the container if it runs (Node.stop is for one process group)."""
        if not self.running():
            return
        done = self._docker(["stop", "-t", str(math.ceil(self.settings.timeout_stop_s)),
                             self.container_name])
        if not done.ok and "no such" not in done.output.lower():
            raise self._error("cannot stop", done)

    def remove(self) -> None:
        """Remove the container of this name in any state (created, exited, running)."""
        done = self._docker(["rm", "-f", self.container_name])
        if not done.ok and "no such" not in done.output.lower():
            raise self._error("cannot remove", done)

    def remove_leftovers(self, run_id: str | None = None) -> list[str]:
        """Remove our containers stuck in created/exited/dead (of one run, or any); names."""
        args = ["ps", "-a", "--format", "{{.Names}}",
                "--filter", f"label={LABEL_ROLE}={ROLE_CI_CONTAINER}"]
        if run_id:
            args += ["--filter", f"label={LABEL_RUN_ID}={run_id}"]
        for state in LEFTOVER_STATES:
            args += ["--filter", f"status={state}"]
        done = self._docker(args)
        if not done.ok:
            raise DockerError(f"cannot list containers: {one_line(done.output)}", host=self.name)
        removed = []
        for name in done.output.split():
            gone = self._docker(["rm", "-f", name])
            if not gone.ok and "no such" not in gone.output.lower():
                raise DockerError(f"cannot remove leftover container {name}: "
                                  f"{one_line(gone.output)}", host=self.name)
            log.info("%s: removed leftover container %s", self.name, name)
            removed.append(name)
        return removed

    def close(self) -> None:
        """The SSH connection is the host's: closed with it, not here."""

    # --- commands ----------------------------------------------------------------------------
    def _run(self, argv: list[str], *, timeout: float | None, check: bool) -> Completed:
        # Every exec is bounded: by its own limit, or EXEC_DEFAULT_TIMEOUT_S when it has none;
        # the SSH side waits that long plus the time `timeout` and the CLI need to end it.
        limit = EXEC_DEFAULT_TIMEOUT_S if timeout is None else min(timeout, EXEC_DEFAULT_TIMEOUT_S)
        inner = ["timeout", "-k", str(EXEC_KILL_AFTER_S), f"{max(limit, 0.001):g}", *argv]
        outer = limit + EXEC_KILL_AFTER_S + EXEC_GRACE_S
        try:
            done = self.host.run([*self.docker, "exec", self.container_name, *inner],
                                 timeout=outer, check=False)
        except CommandFailed as exc:
            raise CommandFailed(argv, None, exc.output, host=self.name) from None
        complaint = daemon_error(done.output) if done.exit_code in (1, 125, 126, 127) else None
        if complaint or done.exit_code == 125:
            raise DockerError(
                f"cannot exec in container {self.container_name} on {self.host.address}: "
                f"{one_line(complaint or done.output, 300)} (command: {shlex.join(argv)[:200]})",
                host=self.name, hint="is the container running? run the start-container step")
        done = Completed(list(argv), done.exit_code, done.output)
        if check and not done.ok:
            timed_out = timeout is not None and done.exit_code in (124, 137)
            raise CommandFailed(argv, None if timed_out else done.exit_code, done.output,
                                host=self.name)
        return done
