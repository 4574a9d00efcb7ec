"""A node whose processes run in a Docker container on this machine, through the docker SDK.

The container's flags are `container_spec()` (harness/container_spec.py). `ContainerNode` starts,
execs in, restarts and removes the container; the background-server machinery
(spawn/alive/stop) is the `Node` base's, on `exec`.

Every container carries the labels `mooncake-harness.run-id` and `mooncake-harness.role`, so
`remove_leftovers()` can find what a crashed run or a refused start left behind.
"""
from __future__ import annotations

import logging
import math
import shlex
import threading
from typing import Callable

import docker
import docker.errors

from harness.container_spec import (LABEL_ROLE, LABEL_RUN_ID, ROLE_CI_CONTAINER, ContainerSpec,
                                    container_spec, engine_message, start_hint)
from harness.errors import CommandFailed, DockerError
from harness.hosts import Completed, LocalHost
from harness.layout import CONTAINER_ROOT, Layout
from harness.nodes import ContainerBase
from harness.settings import ImagePull, Settings

log = logging.getLogger(__name__)

# Control calls (create, start, restart, pull) may take this long before the engine counts as
# wedged. `docker exec` is bounded by `timeout` inside the container: the command's own limit,
# or EXEC_DEFAULT_TIMEOUT_S when it has none, and the exec client's socket by that plus a grace.
CONTROL_TIMEOUT_S = 300
EXEC_DEFAULT_TIMEOUT_S = 2 * 3600
# Extra seconds `timeout` gives a command after TERM before it KILLs it.
EXEC_KILL_AFTER_S = 5
EXEC_SOCKET_GRACE_S = 60
LEFTOVER_STATES = ("created", "exited", "dead")

ENGINE_HINT = "start dockerd, e.g. bash tests/provision.sh"


# --- the engine --------------------------------------------------------------------------------
def connect(timeout: float = CONTROL_TIMEOUT_S) -> docker.DockerClient:
    """A client of the local engine; unreachable → one-line DockerError with what to do."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise DockerError(f"Docker engine not reachable ({engine_message(exc)[:200]}); "
                          f"{ENGINE_HINT}") from None
    return client


def remove_leftovers(client: docker.DockerClient, *, run_id: str | None = None,
                     name: str | None = None) -> list[str]:
    """Remove our containers stuck in created/exited/dead, of one run or one name; their names."""
    labels = [f"{LABEL_ROLE}={ROLE_CI_CONTAINER}"]
    if run_id:
        labels.append(f"{LABEL_RUN_ID}={run_id}")
    removed = []
    try:
        found = client.containers.list(all=True, filters={"label": labels})
    except docker.errors.DockerException as exc:
        raise DockerError(f"cannot list containers: {engine_message(exc)}") from None
    for container in found:
        if name and container.name != name:
            continue
        if container.status not in LEFTOVER_STATES:
            continue
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise DockerError(f"cannot remove leftover container {container.name}: "
                              f"{engine_message(exc)}") from None
        log.info("removed leftover container %s (%s)", container.name, container.status)
        removed.append(container.name)
    return removed


class ContainerNode(ContainerBase):
    """Processes run in the CI container on this machine; the project is at /test_run in it."""

    def __init__(self, settings: Settings, host: LocalHost, project_dir: object, *,
                 container_name: str | None = None, name: str | None = None,
                 client: docker.DockerClient | None = None,
                 connector: Callable[..., docker.DockerClient] = connect) -> None:
        self.settings = settings
        self.host = host
        self.name = name or host.name
        self.container_name = container_name or settings.container_name
        self.project_dir = str(project_dir)
        self.layout = Layout(CONTAINER_ROOT)
        self.host_layout = Layout.at(project_dir)
        self._connector = connector
        self._client = client
        self._exec_client: docker.DockerClient | None = None
        self._owns_client = client is None
        self._lock = threading.Lock()      # servers may be spawned from several threads

    # --- the engine, opened lazily -----------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = self._connector()
                self._owns_client = True
            return self._client

    def _exec_api(self):
        # `docker exec` can outlast any control timeout (a pip install): a client whose socket
        # waits as long as the longest command may run (`timeout` in the container ends it).
        if not self._owns_client:
            return self.client.api
        with self._lock:
            if self._exec_client is None:
                self._exec_client = self._connector(
                    timeout=EXEC_DEFAULT_TIMEOUT_S + EXEC_KILL_AFTER_S + EXEC_SOCKET_GRACE_S)
            return self._exec_client.api

    def _error(self, what: str, exc: BaseException, hint: str | None = None) -> DockerError:
        return DockerError(f"{what} container {self.container_name}: {engine_message(exc)}",
                           host=self.name, hint=hint)

    def _container(self):
        try:
            return self.client.containers.get(self.container_name)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise self._error("cannot inspect", exc) from None

    # --- lifecycle ---------------------------------------------------------------------------
    def spec(self, image: str, run_id: str) -> ContainerSpec:
        return container_spec(self.settings, image, run_id, name=self.container_name,
                              project_dir=self.project_dir)

    def start(self, image: str, run_id: str) -> None:
        """Replace any container of this name with a fresh one of `image`, running idle."""
        self.remove()
        kwargs = self.spec(image, run_id).create_kwargs()
        container = None
        try:
            container = self.client.containers.create(**kwargs)
            container.start()
            container.reload()
            if container.status != "running":
                logs = container.logs(tail=30).decode(errors="replace")
                raise DockerError(
                    f"container {self.container_name} exited right after start "
                    f"(status {container.status})", host=self.name,
                    log_tail=logs or None, hint="the image needs bash and coreutils' sleep")
        except (docker.errors.DockerException, DockerError) as exc:
            self._remove_quietly(container)
            if isinstance(exc, DockerError):
                raise
            message = engine_message(exc)
            raise DockerError(f"cannot start container {self.container_name} from {image}: "
                              f"{message}", host=self.name, hint=start_hint(message)) from None
        log.info("%s: container %s running (%s)", self.name, self.container_name, image)

    def _remove_quietly(self, container) -> None:
        """Cleanup after a failed start: remove what was created, by object or by name."""
        try:
            if container is not None:
                container.remove(force=True)
            else:
                remove_leftovers(self.client, name=self.container_name)
        except (docker.errors.DockerException, DockerError) as exc:
            log.warning("%s: could not remove container %s after a failed start: %s",
                        self.name, self.container_name, engine_message(exc))

    def running(self) -> bool:
        container = self._container()
        return container is not None and container.status == "running"

    def pull(self, image: str, policy: ImagePull | str) -> None:
        from harness.prep import pull_image
        pull_image(self.client, image, policy, host=self.name)

    def container_id(self) -> str:
        container = self._container()
        if container is None:
            raise DockerError(f"container {self.container_name} does not exist", host=self.name)
        return container.id

    def restart(self) -> None:
        """Restart the container (kills every process in it; the writable layer survives)."""
        container = self._container()
        if container is None:
            raise DockerError(f"container {self.container_name} does not exist",
                              host=self.name, hint="run the start-container step first")
        try:
            container.restart(timeout=math.ceil(self.settings.timeout_stop_s))
            container.reload()
        except docker.errors.DockerException as exc:
            raise self._error("cannot restart", exc) from None
        if container.status != "running":
            raise DockerError(f"container {self.container_name} is {container.status} "
                              "after a restart", host=self.name)

    def stop_container(self) -> None:
        """Stop the container if it runs (Node.stop is for one process group)."""
        container = self._container()
        if container is None or container.status != "running":
            return
        try:
            container.stop(timeout=math.ceil(self.settings.timeout_stop_s))
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as exc:
            raise self._error("cannot stop", exc) from None

    def remove(self) -> None:
        """Remove the container of this name in any state (created, exited, running)."""
        container = self._container()
        if container is None:
            return
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as exc:
            raise self._error("cannot remove", exc) from None
        log.info("%s: removed container %s", self.name, self.container_name)

    def close(self) -> None:
        """Close the engine connections this node opened; idempotent."""
        for client in (self._exec_client, self._client if self._owns_client else None):
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing must not fail a cleanup path
                    pass
        self._exec_client = None
        if self._owns_client:
            self._client = None

    # --- commands ----------------------------------------------------------------------------
    def _run(self, argv: list[str], *, timeout: float | None, check: bool) -> Completed:
        limit = EXEC_DEFAULT_TIMEOUT_S if timeout is None else min(timeout, EXEC_DEFAULT_TIMEOUT_S)
        full = ["timeout", "-k", str(EXEC_KILL_AFTER_S), f"{max(limit, 0.001):g}", *argv]
        api = self._exec_api()
        try:
            exec_id = api.exec_create(self.container_name, full, stdout=True, stderr=True)["Id"]
            raw = api.exec_start(exec_id, demux=False)
            exit_code = api.exec_inspect(exec_id).get("ExitCode")
        except docker.errors.DockerException as exc:
            raise DockerError(
                f"cannot exec in container {self.container_name}: {engine_message(exc)} "
                f"(command: {shlex.join(argv)[:200]})", host=self.name,
                hint="is the container running? run the start-container step") from None
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else (raw or "")
        exit_code = -1 if exit_code is None else int(exit_code)
        done = Completed(list(argv), exit_code, output)
        if check and not done.ok:
            timed_out = timeout is not None and exit_code in (124, 137)
            raise CommandFailed(argv, None if timed_out else exit_code, output, host=self.name)
        return done

    def __repr__(self) -> str:
        return f"ContainerNode({self.name!r}, container={self.container_name!r})"
