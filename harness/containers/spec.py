"""What a CI container is (SPEC §5 step 4), as a pure function of the settings.

`container_spec()` renders every flag once, so each is checked without an engine; the result is
used as docker SDK create kwargs (`ContainerSpec.create_kwargs`, this machine) or as a
`docker run` argv (`ContainerSpec.docker_run_argv`, a host whose engine is reached through the
harness's own SSH connection). Every container carries the labels below, so leftovers of a
crashed run or a refused start can be found.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable

from docker.types import DeviceRequest, Ulimit

from harness.errors import SettingsError
from harness.layout import CONTAINER_ROOT
from harness.settings import Settings

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
