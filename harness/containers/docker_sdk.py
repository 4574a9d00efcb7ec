"""The container engine on this machine, through the docker SDK (harness.containers.engine).

The client is opened on first use. `docker exec` can outlast any control timeout (a pip
install), so execs go through a second client whose socket waits as long as the longest command
may run (`timeout` in the container ends it first).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import docker
import docker.errors

from harness.containers.engine import (CONTROL_TIMEOUT_S, EXEC_DEFAULT_TIMEOUT_S,
                                       EXEC_KILL_AFTER_S, LEFTOVER_STATES, ContainerEngine,
                                       EngineRefused)
from harness.containers.spec import (LABEL_ROLE, LABEL_RUN_ID, ROLE_CI_CONTAINER, ContainerSpec,
                                     engine_message)
from harness.errors import DockerError, close_quietly
from harness.hosts.local import Completed
from harness.waiting import note_progress

log = logging.getLogger(__name__)

EXEC_SOCKET_GRACE_S = 60
ENGINE_HINT = "start dockerd, e.g. bash tests/provision.sh"


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
    engine = SdkEngine(client)
    removed = []
    try:
        found = engine.leftovers(labels)
        for each in found:
            if name and each != name:
                continue
            engine.remove(each)
            log.info("removed leftover container %s", each)
            removed.append(each)
    except EngineRefused as exc:
        raise DockerError(f"cannot remove leftover containers: {exc}") from None
    return removed


class SdkEngine(ContainerEngine):
    """The local engine. `client`: one handed in (left open by close()), else `connector`'s."""

    def __init__(self, client: docker.DockerClient | None = None, *,
                 connector: Callable[..., docker.DockerClient] = connect) -> None:
        self._connector = connector
        self._client = client
        self._exec_client: docker.DockerClient | None = None
        self._owns_client = client is None
        self._lock = threading.Lock()      # servers may be spawned from several threads

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = self._connector()
                self._owns_client = True
            return self._client

    def _exec_api(self):
        if not self._owns_client:
            return self.client.api
        with self._lock:
            if self._exec_client is None:
                self._exec_client = self._connector(
                    timeout=EXEC_DEFAULT_TIMEOUT_S + EXEC_KILL_AFTER_S + EXEC_SOCKET_GRACE_S)
            return self._exec_client.api

    def _get(self, name: str):
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise EngineRefused(engine_message(exc)) from None

    def _call(self, action: Callable[[], object]) -> object:
        try:
            return action()
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise EngineRefused(engine_message(exc)) from None

    def ping(self) -> str:
        return str(self.client.version().get("Version", ""))

    def state(self, name: str) -> str | None:
        container = self._get(name)
        return None if container is None else container.status

    def container_id(self, name: str) -> str | None:
        container = self._get(name)
        return None if container is None else container.id

    def run(self, spec: ContainerSpec) -> None:
        try:
            self.client.containers.create(**spec.create_kwargs()).start()
        except docker.errors.DockerException as exc:
            raise EngineRefused(engine_message(exc)) from None

    def logs(self, name: str, tail: int) -> str:
        container = self._get(name)
        if container is None:
            return ""
        raw = self._call(lambda: container.logs(tail=tail))
        return raw.decode(errors="replace") if isinstance(raw, bytes) else ""

    def restart(self, name: str, timeout_s: int) -> None:
        container = self._get(name)
        if container is not None:
            self._call(lambda: container.restart(timeout=timeout_s))

    def stop(self, name: str, timeout_s: int) -> None:
        container = self._get(name)
        if container is not None:
            self._call(lambda: container.stop(timeout=timeout_s))

    def remove(self, name: str) -> bool:
        container = self._get(name)
        if container is None:
            return False
        self._call(lambda: container.remove(force=True))
        return True

    def leftovers(self, label_filters: list[str]) -> list[str]:
        found = self._call(lambda: self.client.containers.list(
            all=True, filters={"label": list(label_filters)})) or []
        return [c.name for c in found if c.status in LEFTOVER_STATES]

    def image_present(self, image: str) -> bool:
        try:
            self.client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.DockerException as exc:
            raise EngineRefused(engine_message(exc)) from None

    def pull(self, image: str) -> None:
        answer = ""
        layers = PullProgress()
        try:
            for message in self.client.api.pull(image, stream=True, decode=True):
                layers.feed(message)
                note_progress(layers.describe())
                if isinstance(message, dict) and (message.get("error")
                                                  or message.get("errorDetail")):
                    detail = message.get("errorDetail") or {}
                    answer = message.get("error") or detail.get("message") or str(message)
                    break
        except docker.errors.DockerException as exc:
            answer = engine_message(exc)
        if answer:
            raise EngineRefused(" ".join(answer.split())[:500])

    def exec(self, name: str, argv: list[str], limit_s: float) -> Completed:
        api = self._exec_api()
        try:
            exec_id = api.exec_create(name, argv, stdout=True, stderr=True)["Id"]
            raw = api.exec_start(exec_id, demux=False)
            exit_code = api.exec_inspect(exec_id).get("ExitCode")
        except docker.errors.DockerException as exc:
            raise EngineRefused(engine_message(exc)) from None
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else (raw or "")
        return Completed(list(argv), -1 if exit_code is None else int(exit_code), output)

    def close(self) -> None:
        close_quietly(self._exec_client, self._client if self._owns_client else None)
        self._exec_client = None
        if self._owns_client:
            self._client = None


class PullProgress:
    """Layers and bytes of an image pull, from the engine's progress messages (a progress line's
    detail: a 30 GB pull takes minutes)."""

    DONE = ("Download complete", "Pull complete", "Already exists")

    def __init__(self) -> None:
        self.layers: dict[str, tuple[int, int, bool]] = {}   # id -> (bytes done, total, done)

    def feed(self, message: object) -> None:
        if not isinstance(message, dict) or not message.get("id"):
            return
        status = str(message.get("status", ""))
        if status.startswith("Pulling from"):  # the image's line, not a layer's
            return
        done_bytes, total, done = self.layers.get(message["id"], (0, 0, False))
        detail = message.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            done_bytes, total = int(detail.get("current", 0)), int(detail["total"])
        if status in self.DONE:
            done, done_bytes = True, total
        self.layers[message["id"]] = (done_bytes, total, done)

    def describe(self) -> str:
        if not self.layers:
            return "no layer yet"
        finished = sum(done for _, _, done in self.layers.values())
        got = sum(b for b, _, _ in self.layers.values())
        total = sum(t for _, t, _ in self.layers.values())
        return (f"{finished}/{len(self.layers)} layers done, "
                f"{got / 1e9:.2f} of {total / 1e9:.2f} GB downloaded")
