"""The container node: processes run in the CI container of a host; the project is at /test_run.

One class owns the container's lifecycle policy on either host: `start` replaces any container
of the name with a fresh one and removes what a refused start left; `restart` (between cases)
and `stop_container` (the end of a run: stopped, not removed, so it can be looked into; the next
start replaces it); `remove` (`invoke clean`); `pull` as IMAGE_PULL says. The Docker calls go
through a `ContainerEngine` (harness.containers.engine): the docker SDK on this machine
(`SdkEngine`), the docker CLI over the harness's SSH connection on the remote host
(`DockerCLI`, harness.containers.docker_cli). The container's flags are `container_spec()`; the
background-server machinery (spawn/alive/stop) is the `Node` base's, on `exec`.

Every container carries the labels `mooncake-harness.run-id` and `mooncake-harness.role`, so
`remove_leftovers()` can find what a crashed run or a refused start left behind.
"""
from __future__ import annotations

import logging
import math
import shlex
from typing import Callable, Sequence

import docker

from harness.containers.engine import (CONTROL_TIMEOUT_S, EXEC_DEFAULT_TIMEOUT_S,  # noqa: F401
                                       EXEC_KILL_AFTER_S, LEFTOVER_STATES, ContainerEngine,
                                       EngineRefused)
from harness.containers.spec import (LABEL_ROLE, LABEL_RUN_ID, ROLE_CI_CONTAINER, ContainerSpec,
                                     container_spec, start_hint)
from harness.containers.docker_sdk import SdkEngine, connect, remove_leftovers  # noqa: F401
from harness.errors import CommandFailed, DockerError
from harness.hosts.argv import timed_out, with_timeout
from harness.hosts.local import Completed, LocalHost
from harness.layout import CONTAINER_ROOT, Layout
from harness.hosts.nodes import ContainerBase
from harness.settings import ImagePull, Settings
from harness.results.steps import STEP_PULL_IMAGE, Skipped, starting

log = logging.getLogger(__name__)


def pull_image(engine: ContainerEngine, image: str, policy: ImagePull | str, *,
               host: str = "local") -> Skipped | None:
    """Pull `image` as IMAGE_PULL says: always (failure is an error), missing, never.
    `Skipped` (why) when there was nothing to pull."""
    policy = ImagePull(policy)
    if policy is not ImagePull.ALWAYS and _image_present(engine, image, host):
        return Skipped(f"IMAGE_PULL={policy.value} and {image} is present")
    if policy is ImagePull.NEVER:
        raise DockerError(f"image {image} is not present and IMAGE_PULL=never",
                          step=STEP_PULL_IMAGE, host=host,
                          hint=f"docker pull {image} on that host, or set IMAGE_PULL=missing")
    starting(STEP_PULL_IMAGE, host, f"pulling {image}")
    try:
        engine.pull(image)
        answer = "" if _image_present(engine, image, host) else \
            "the engine reported no error, but the image is not there afterwards"
    except EngineRefused as exc:
        answer = str(exc)
    if answer:
        raise DockerError(f"cannot pull image {image}: {answer}", step=STEP_PULL_IMAGE,
                          host=host, hint="check the image name and the registry; "
                                          "IMAGE_PULL=missing uses an image already on the host")
    return None


def _image_present(engine: ContainerEngine, image: str, host: str) -> bool:
    try:
        return engine.image_present(image)
    except EngineRefused as exc:
        raise DockerError(f"cannot inspect image {image}: {exc}", step=STEP_PULL_IMAGE,
                          host=host) from None


class ContainerNode(ContainerBase):
    """Processes run in the CI container on a host, through `engine` (default: the docker SDK
    on this machine, with `client` or a client `connector` opens)."""

    def __init__(self, settings: Settings, host: LocalHost, project_dir: object, *,
                 container_name: str | None = None, name: str | None = None,
                 engine: ContainerEngine | None = None,
                 client: docker.DockerClient | None = None,
                 connector: Callable[..., docker.DockerClient] = connect) -> None:
        self.settings = settings
        self.host = host
        self.name = name or host.name
        self.container_name = container_name or settings.container_name
        self.project_dir = str(project_dir)
        self.layout = Layout(CONTAINER_ROOT)
        self.host_layout = Layout.at(self.project_dir)
        self.engine = engine or SdkEngine(client, connector=connector)

    def __repr__(self) -> str:
        return f"ContainerNode({self.name!r}, container={self.container_name!r})"

    @property
    def client(self) -> docker.DockerClient:
        """The docker SDK client of a local node (`invoke start-container` pulls with it)."""
        if not isinstance(self.engine, SdkEngine):
            raise AttributeError(f"{self!r} has no docker SDK client")
        return self.engine.client

    def _error(self, what: str, exc: EngineRefused, hint: str | None = None) -> DockerError:
        return DockerError(f"{what} container {self.container_name}: {exc}", host=self.name,
                           hint=hint)

    def _stop_timeout(self) -> int:
        return math.ceil(self.settings.timeout_stop_s)

    # --- state -------------------------------------------------------------------------------
    def ping(self) -> str:
        return self.engine.ping()

    def status(self) -> str | None:
        """The container's state (running, exited, created...), None when there is none."""
        try:
            return self.engine.state(self.container_name)
        except EngineRefused as exc:
            raise self._error("cannot inspect", exc) from None

    def running(self) -> bool:
        return self.status() == "running"

    def container_id(self) -> str:
        try:
            found = self.engine.container_id(self.container_name)
        except EngineRefused as exc:
            raise self._error("cannot inspect", exc) from None
        if not found:
            raise DockerError(f"container {self.container_name} does not exist", host=self.name)
        return found

    # --- lifecycle ---------------------------------------------------------------------------
    def spec(self, image: str, run_id: str) -> ContainerSpec:
        return container_spec(self.settings, image, run_id, name=self.container_name,
                              project_dir=self.project_dir, exists=self.host.exists)

    def pull(self, image: str, policy: ImagePull | str) -> Skipped | None:
        return pull_image(self.engine, image, policy, host=self.name)

    def start(self, image: str, run_id: str) -> None:
        """Replace any container of this name with a fresh one of `image`, running idle."""
        self.remove()
        try:
            self.engine.run(self.spec(image, run_id))
        except EngineRefused as exc:
            self._remove_quietly()
            raise DockerError(f"cannot start container {self.container_name} from {image}: "
                              f"{exc}", host=self.name, hint=start_hint(str(exc))) from None
        state = self.status()
        if state != "running":
            logs = self._logs_quietly()
            self._remove_quietly()
            raise DockerError(f"container {self.container_name} exited right after start "
                              f"(status {state})", host=self.name, log_tail=logs or None,
                              hint="the image needs bash and coreutils' sleep")
        log.info("%s: container %s running (%s)", self.name, self.container_name, image)

    def _logs_quietly(self) -> str:
        try:
            return self.engine.logs(self.container_name, 30)
        except (EngineRefused, DockerError):
            return ""

    def _remove_quietly(self) -> None:
        """Cleanup after a failed start (we are already failing: a warning, not an error)."""
        try:
            self.engine.remove(self.container_name)
        except (EngineRefused, DockerError) as exc:
            log.warning("%s: could not remove container %s after a failed start: %s",
                        self.name, self.container_name, exc)

    def restart(self) -> None:
        """Restart the container (kills every process in it; the writable layer survives)."""
        if self.status() is None:
            raise DockerError(f"container {self.container_name} does not exist",
                              host=self.name, hint="run the start-container step first")
        try:
            self.engine.restart(self.container_name, self._stop_timeout())
        except EngineRefused as exc:
            raise self._error("cannot restart", exc) from None
        state = self.status()
        if state != "running":
            raise DockerError(f"container {self.container_name} is {state} after a restart",
                              host=self.name)

    def stop_container(self) -> None:
        """Stop the container if it runs, leaving it to be looked into (Node.stop is for one
        process group)."""
        if not self.running():
            return
        try:
            self.engine.stop(self.container_name, self._stop_timeout())
        except EngineRefused as exc:
            raise self._error("cannot stop", exc) from None
        log.info("%s: stopped container %s (kept; the next run replaces it)", self.name,
                 self.container_name)

    def remove(self) -> None:
        """Remove the container of this name in any state (created, exited, running)."""
        try:
            removed = self.engine.remove(self.container_name)
        except EngineRefused as exc:
            raise self._error("cannot remove", exc) from None
        if removed:
            log.info("%s: removed container %s", self.name, self.container_name)

    def remove_leftovers(self, run_id: str | None = None) -> list[str]:
        """Remove our containers stuck in created/exited/dead (of one run, or any); names."""
        labels = [f"{LABEL_ROLE}={ROLE_CI_CONTAINER}"]
        if run_id:
            labels.append(f"{LABEL_RUN_ID}={run_id}")
        removed = []
        try:
            for name in self.engine.leftovers(labels):
                self.engine.remove(name)
                log.info("%s: removed leftover container %s", self.name, name)
                removed.append(name)
        except EngineRefused as exc:
            raise DockerError(f"cannot remove leftover containers: {exc}", host=self.name) \
                from None
        return removed

    def close(self) -> None:
        """Close the engine connections this node opened; idempotent (an SSH connection is the
        host's: closed with it)."""
        self.engine.close()

    # --- commands ----------------------------------------------------------------------------
    def _run(self, argv: list[str], *, timeout: float | None, check: bool) -> Completed:
        # Every exec is bounded: by its own limit, or EXEC_DEFAULT_TIMEOUT_S when it has none.
        limit = EXEC_DEFAULT_TIMEOUT_S if timeout is None else min(timeout, EXEC_DEFAULT_TIMEOUT_S)
        full = with_timeout(argv, limit, EXEC_KILL_AFTER_S)
        try:
            done = self.engine.exec(self.container_name, full, limit)
        except EngineRefused as exc:
            raise DockerError(
                f"cannot exec in container {self.container_name} on {self.host.address}: {exc} "
                f"(command: {shlex.join(argv)[:200]})", host=self.name,
                hint="is the container running? run the start-container step") from None
        except CommandFailed as exc:       # the transport's own deadline passed
            raise CommandFailed(argv, None, exc.output, host=self.name) from None
        done = Completed(list(argv), done.exit_code, done.output)
        if check and not done.ok:
            stopped = timeout is not None and timed_out(done.exit_code)
            raise CommandFailed(argv, None if stopped else done.exit_code, done.output,
                                host=self.name)
        return done


def remote_container_node(settings: Settings, host, project_dir: object = None, *,
                          container_name: str | None = None, name: str | None = None,
                          docker_cli: Sequence[str] = ("docker",)) -> ContainerNode:
    """The container node of the remote host: its engine driven by the docker CLI over SSH."""
    from harness.containers.docker_cli import DockerCLI
    node_name = name or host.name
    return ContainerNode(settings, host, project_dir or settings.remote_test_dir,
                         container_name=container_name or settings.remote_container,
                         name=node_name, engine=DockerCLI(host, node_name, docker_cli))
