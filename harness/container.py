"""A node whose processes run in a Docker container on this machine, through the docker SDK.

SPEC §5 step 4 is `container_spec()`: a pure function of the settings, so every flag is checked
without an engine, rendered as docker SDK create kwargs (`ContainerSpec.create_kwargs`) or as a
`docker run` argv (`ContainerSpec.docker_run_argv`, for a host whose engine is reached through
the harness's own SSH connection). `ContainerNode` starts, execs in, restarts and removes the
container; the background-server machinery (spawn/alive/stop) is the `Node` base's, on `exec`.

Every container carries the labels `mooncake-harness.run-id` and `mooncake-harness.role`, so
`remove_leftovers()` can find what a crashed run or a refused start left behind.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shlex
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import docker
import docker.errors
from docker.types import DeviceRequest, Ulimit

from harness.errors import CommandFailed, DockerError, SettingsError
from harness.hosts import Completed, LocalHost
from harness.layout import CONTAINER_ROOT, Layout
from harness.nodes import ContainerBase
from harness.settings import ImagePull, Settings

log = logging.getLogger(__name__)

LABEL_RUN_ID = "mooncake-harness.run-id"
LABEL_ROLE = "mooncake-harness.role"
ROLE_CI_CONTAINER = "ci-container"

MODEL_CACHE_MOUNT = "/root/.cache"
TEST_JSONL_HOST = "/root/test.jsonl"
TEST_JSONL_MOUNT = "/tmp/test.jsonl"
STACK_BYTES = 64 * 1024 * 1024
# The image's own entrypoint is replaced (vLLM's would start a server): bash idles for ever.
IDLE_ENTRYPOINT = ["bash"]
IDLE_COMMAND = ["-c", "hostname; exec sleep infinity"]

# Control calls (create, start, restart, pull) may take this long before the engine counts as
# wedged; `docker exec` has no such limit: it is bounded by `timeout` inside the container.
CONTROL_TIMEOUT_S = 300
# Extra seconds `timeout` gives a command after TERM before it KILLs it.
EXEC_KILL_AFTER_S = 5
LEFTOVER_STATES = ("created", "exited", "dead")

ENGINE_HINT = "start dockerd, e.g. bash tests/provision.sh"


# --- the container's flags ---------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerSpec:
    """Everything `docker run` is told for the CI container (SPEC §5 step 4)."""
    name: str
    image: str
    labels: dict[str, str]
    gpus: str                          # "all", "none" or "list"
    gpu_ids: list[str]                 # the device ids when gpus is "list"
    memlock: int | None                # bytes, -1 unlimited, None: the engine's default
    stack: int
    shm_size: str
    privileged: bool
    volumes: dict[str, str]            # host path -> container path (read-write)
    environment: dict[str, str]
    devices: list[str]                 # "/dev/x:/dev/x:rwm"
    init: bool = True
    ipc_mode: str = "host"
    network_mode: str = "host"
    cap_add: list[str] = field(default_factory=lambda: ["SYS_PTRACE"])
    entrypoint: list[str] = field(default_factory=lambda: list(IDLE_ENTRYPOINT))
    command: list[str] = field(default_factory=lambda: list(IDLE_COMMAND))

    def device_requests(self) -> list[DeviceRequest]:
        if self.gpus == "all":
            return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        if self.gpu_ids:
            return [DeviceRequest(device_ids=list(self.gpu_ids), capabilities=[["gpu"]])]
        return []

    def ulimits(self) -> list[Ulimit]:
        limits = []
        if self.memlock is not None:
            limits.append(Ulimit(name="memlock", soft=self.memlock, hard=self.memlock))
        limits.append(Ulimit(name="stack", soft=self.stack, hard=self.stack))
        return limits

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `client.containers.create(**kwargs)`."""
        kwargs: dict[str, Any] = {
            "image": self.image,
            "name": self.name,
            "entrypoint": list(self.entrypoint),
            "command": list(self.command),
            "detach": True,
            "init": self.init,
            "ipc_mode": self.ipc_mode,
            "network_mode": self.network_mode,
            "cap_add": list(self.cap_add),
            "privileged": self.privileged,
            "shm_size": self.shm_size,
            "ulimits": self.ulimits(),
            "volumes": {src: {"bind": dst, "mode": "rw"} for src, dst in self.volumes.items()},
            "environment": dict(self.environment),
            "devices": list(self.devices),
            "labels": dict(self.labels),
        }
        requests = self.device_requests()
        if requests:
            kwargs["device_requests"] = requests
        return kwargs

    def docker_run_argv(self, docker: str = "docker") -> list[str]:
        """The same container as a `docker run` argv (for an engine driven through the CLI)."""
        argv = [docker, "run", "--detach", "--name", self.name]
        if self.init:
            argv.append("--init")
        argv += [f"--ipc={self.ipc_mode}", f"--network={self.network_mode}"]
        argv += [f"--cap-add={cap}" for cap in self.cap_add]
        if self.gpus == "all":
            argv += ["--gpus", "all"]
        elif self.gpu_ids:
            argv += ["--gpus", f'"device={",".join(self.gpu_ids)}"']
        if self.memlock is not None:
            argv += ["--ulimit", f"memlock={self.memlock}:{self.memlock}"]
        argv += ["--ulimit", f"stack={self.stack}:{self.stack}", f"--shm-size={self.shm_size}"]
        if self.privileged:
            argv.append("--privileged")
        for src, dst in self.volumes.items():
            argv += ["-v", f"{src}:{dst}"]
        for name, value in self.environment.items():
            argv += ["-e", f"{name}={value}"]
        argv += [f"--device={dev}" for dev in self.devices]
        for name, value in self.labels.items():
            argv += ["--label", f"{name}={value}"]
        argv += [f"--entrypoint={shlex.join(self.entrypoint)}", self.image, *self.command]
        return argv


def parse_gpus(value: str) -> tuple[str, list[str]]:
    """CONTAINER_GPUS → ("all", []), ("none", []) or ("list", ids). Bad values: SettingsError."""
    raw = value.strip()
    low = raw.lower()
    if low == "all":
        return "all", []
    if low in ("none", ""):
        return "none", []
    if low.startswith("device="):
        raw = raw[len("device="):]
    ids = [part.strip() for part in raw.strip('"').split(",") if part.strip()]
    if not ids or not all(re.fullmatch(r"\d+|GPU-[0-9A-Za-z-]+|MIG-[0-9A-Za-z/-]+", i)
                          for i in ids):
        raise SettingsError(f"bad value for CONTAINER_GPUS: {value!r} "
                            "(accepted: all, none, or a list of GPU indices/UUIDs like 0,1)")
    return "list", ids


def parse_memlock(value: int) -> int | None:
    """CONTAINER_MEMLOCK → the ulimit: -1 unlimited, 0 not set (engine default), N bytes."""
    if value < -1:
        raise SettingsError(f"bad value for CONTAINER_MEMLOCK: {value} "
                            "(accepted: -1 unlimited, 0 not set, or a number of bytes)")
    return None if value == 0 else value


def container_spec(settings: Settings, image: str, run_id: str, *, name: str,
                   project_dir: object,
                   exists: Callable[[str], bool] = os.path.exists) -> ContainerSpec:
    """The CI container for `image`, from the settings; `exists` tells which host paths exist."""
    gpus, gpu_ids = parse_gpus(settings.container_gpus)
    volumes = {settings.model_cache: MODEL_CACHE_MOUNT, str(project_dir): str(CONTAINER_ROOT)}
    if exists(TEST_JSONL_HOST):
        volumes[TEST_JSONL_HOST] = TEST_JSONL_MOUNT
    environment = {"NCCL_GIN_TYPE": "0"}
    if settings.use_huggingface_mirror:
        environment["HF_ENDPOINT"] = settings.huggingface_mirror
        environment["HF_HUB_ENABLE_HF_TRANSFER"] = "1"
    if settings.use_modelscope:
        environment["SGLANG_USE_MODELSCOPE"] = "true"
    devices = [f"{dev}:{dev}:rwm" for dev in settings.rdma_devices if exists(dev)]
    return ContainerSpec(
        name=name, image=image,
        labels={LABEL_RUN_ID: run_id, LABEL_ROLE: ROLE_CI_CONTAINER},
        gpus=gpus, gpu_ids=gpu_ids,
        memlock=parse_memlock(settings.container_memlock), stack=STACK_BYTES,
        shm_size=settings.container_shm_size, privileged=settings.container_privileged,
        volumes=volumes, environment=environment, devices=devices)


def create_kwargs(settings: Settings, image: str, run_id: str, *, name: str, project_dir: object,
                  exists: Callable[[str], bool] = os.path.exists) -> dict[str, Any]:
    """docker SDK kwargs for `client.containers.create(**kwargs)` (SPEC §5 step 4)."""
    return container_spec(settings, image, run_id, name=name, project_dir=project_dir,
                          exists=exists).create_kwargs()


def start_hint(message: str) -> str:
    """Which setting turns off what the engine refused (its message as runc/dockerd word it)."""
    low = message.lower()
    if "device driver" in low or "gpu" in low or "nvidia" in low:
        return ("no GPU runtime here: set CONTAINER_GPUS=none "
                "(or install the NVIDIA container toolkit)")
    if "privileged" in low or "apply caps" in low:
        return "this runtime refuses privileged containers: set CONTAINER_PRIVILEGED=false"
    if "memlock" in low or "rlimit type 8" in low:
        return ("this host cannot raise memlock: set CONTAINER_MEMLOCK=0 (the engine's default) "
                "or a byte count it allows")
    if "shm" in low:
        return "set CONTAINER_SHM_SIZE to a size this host can give (e.g. 1g)"
    if "no such image" in low:
        return "pull the image first (IMAGE_PULL=missing or always)"
    return ("CONTAINER_GPUS, CONTAINER_PRIVILEGED, CONTAINER_MEMLOCK and CONTAINER_SHM_SIZE "
            "turn off what a runtime may refuse")


def engine_message(exc: BaseException) -> str:
    """The engine's answer, on one line."""
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return " ".join(str(text).split())[:500]


# --- the engine --------------------------------------------------------------------------------
def connect(timeout: float | None = CONTROL_TIMEOUT_S) -> docker.DockerClient:
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
        # `docker exec` can outlast any control timeout (a pip install, a case payload): a
        # client without a socket timeout; the command's own limit is `timeout` in the container.
        if not self._owns_client:
            return self.client.api
        with self._lock:
            if self._exec_client is None:
                self._exec_client = self._connector(timeout=None)
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
        full = list(argv)
        if timeout is not None:
            full = ["timeout", "-k", str(EXEC_KILL_AFTER_S), f"{max(timeout, 0.001):g}", *full]
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
