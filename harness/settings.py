"""Every setting of the harness: its name, type, default and meaning, defined once (SPEC §3).

`Settings.from_env()` reads them from the environment (the names T-One already sets);
`harness.shrc` keeps them in `run/.shrc` as `export NAME=value` lines so a person can source it.
Secrets are never written or printed.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from harness import redaction
from harness.errors import SettingsError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ImagePull(str, enum.Enum):
    ALWAYS = "always"
    MISSING = "missing"
    NEVER = "never"


class HostKeyPolicy(str, enum.Enum):
    STRICT = "strict"
    ACCEPT_NEW = "accept-new"
    IGNORE = "ignore"


class Runtime(str, enum.Enum):
    DOCKER = "docker"
    HOST = "host"


class RemoteVia(str, enum.Enum):
    SSH = "ssh"
    LOCAL = "local"


class PreflightProtocol(str, enum.Enum):
    AUTO = "auto"
    RDMA = "rdma"
    TCP = "tcp"


class SimMooncake(str, enum.Enum):
    AUTO = "auto"
    REQUIRED = "required"
    OFF = "off"


def _s(env: str, default: Any, help: str, *, secret: bool = False,
       aliases: tuple[str, ...] = ()) -> Any:
    """A setting: read from `env` (or the first of `aliases` that is set)."""
    meta = {"env": env, "help": help, "secret": secret, "aliases": aliases}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta, repr=not secret)  # a secret never in repr()


@dataclass(frozen=True)
class Settings:
    # --- names T-One sets today -------------------------------------------------------------
    container_name: str = _s("CONTAINER_NAME", "mooncake-ci-test", "container on each host")
    model_cache: str = _s("MODEL_CACHE", "/root/.cache",
                          "host dir mounted at /root/.cache in the container")
    registry_addr_sglang: str = _s("REGISTRY_ADDR_SGLANG", "lmsysorg/sglang:latest",
                                   "image for SGLANG cases")
    registry_addr_vllm: str = _s("REGISTRY_ADDR_VLLM", "vllm/vllm-openai:latest",
                                 "image for VLLM cases")
    use_huggingface_mirror: bool = _s(
        "USE_HUGGINGFACE_MIRROR", True,
        "pass HF_ENDPOINT=$HUGGINGFACE_MIRROR and HF_HUB_ENABLE_HF_TRANSFER=1 into the container")
    huggingface_mirror: str = _s("HUGGINGFACE_MIRROR", "https://hf-mirror.com",
                                 "Hugging Face mirror URL")
    use_modelscope: bool = _s(
        "USE_MODELSCOPE", False,
        "pass SGLANG_USE_MODELSCOPE=true; different_tp then skips its offline-cache decision")
    remote_test_dir: str = _s("REMOTE_TEST_DIR", "/tmp/Mooncake_tone/mooncake_ci_test",
                              "where the project lives on the remote host (wiped by each run: "
                              "absolute, not a system or home directory)")
    local_ip: str = _s("LOCAL_IP", "", "address of the local host (IPv4 or host name; IPv6 "
                       "is refused); required by double cases")
    remote_ip: str = _s("REMOTE_IP", "", "address of the remote host (IPv4 or host name; IPv6 "
                        "is refused); required by double cases")
    artifact_id: str = _s("ARTIFACT_ID", "",
                          "GitHub Actions artifact id that holds the Mooncake wheel")
    git_repo: str = _s("GIT_REPO", "", "repository (owner/name) of the artifact")
    pr_id: str = _s("PR_ID", "", "pull request under test; recorded in the run summary")
    # --- the harness's own ------------------------------------------------------------------
    mooncake_wheel: str = _s(
        "MOONCAKE_WHEEL", "",
        "take the wheel from a local path, an URL or a pip requirement instead of the artifact")
    github_api_url: str = _s("GITHUB_API_URL", "https://api.github.com", "artifact API base")
    github_token: str = _s(
        "GITHUB_TOKEN", "",
        "token for the artifact download (secret); else the logged-in GitHub CLI's token",
        secret=True, aliases=("GH_TOKEN",))
    install_erdma: bool = _s("INSTALL_ERDMA", True, "run the eRDMA install step")
    erdma_repo_url: str = _s("ERDMA_REPO_URL", "http://mirrors.cloud.aliyuncs.com/erdma",
                             "eRDMA apt repo")
    rdma_devices: list = _s(
        "RDMA_DEVICES",
        ["/dev/infiniband/uverbs0", "/dev/infiniband/uverbs1", "/dev/infiniband/rdma_cm"],
        "comma list of devices passed to the container where they exist")
    image_pull: ImagePull = _s("IMAGE_PULL", ImagePull.ALWAYS,
                               "always (a failed pull is an error), missing, never")
    container_gpus: str = _s("CONTAINER_GPUS", "all", "all, none, or a device list (0,1,...)")
    container_shm_size: str = _s("CONTAINER_SHM_SIZE", "128g", "container /dev/shm size")
    container_privileged: bool = _s("CONTAINER_PRIVILEGED", True,
                                    "privileged container (some runtimes refuse it)")
    container_memlock: int = _s("CONTAINER_MEMLOCK", -1,
                                "memlock ulimit in bytes; -1 is unlimited")
    remote_container_name: str = _s("REMOTE_CONTAINER_NAME", "",
                                    "container name on the remote host (default CONTAINER_NAME)")
    remote_user: str = _s("REMOTE_USER", "root", "SSH user on the remote host")
    remote_ssh_port: int = _s("REMOTE_SSH_PORT", 22, "SSH port of the remote host (1-65535)")
    remote_ssh_key: str = _s("REMOTE_SSH_KEY", "", "SSH private key (default: agent/default keys)")
    ssh_host_key_policy: HostKeyPolicy = _s("SSH_HOST_KEY_POLICY", HostKeyPolicy.ACCEPT_NEW,
                                            "strict, accept-new or ignore")
    ssh_known_hosts: str = _s("SSH_KNOWN_HOSTS", "~/.ssh/known_hosts", "known_hosts file")
    ssh_config: str = _s(
        "SSH_CONFIG", "~/.ssh/config",
        "OpenSSH client config read for REMOTE_IP as ssh reads it (Include, Host, Match; "
        "HostName, User, Port, IdentityFile, ProxyJump, ProxyCommand, StrictHostKeyChecking, "
        "UserKnownHostsFile); REMOTE_USER, REMOTE_SSH_PORT, REMOTE_SSH_KEY, "
        "SSH_HOST_KEY_POLICY and SSH_KNOWN_HOSTS win where set")
    router_pip_index_url: str = _s("ROUTER_PIP_INDEX_URL",
                                   "https://mirrors.aliyun.com/pypi/simple/",
                                   "index for the on-demand sglang-router install")
    sglang_workspace: str = _s("SGLANG_WORKSPACE", "/sgl-workspace",
                               "where the SGLang image keeps its source tree")
    vllm_workspace: str = _s("VLLM_WORKSPACE", "/vllm-workspace",
                             "where the vLLM image keeps its examples")
    epd_image: str = _s("EPD_IMAGE", "payloads/assets/cat_3608x2400.jpg",
                        "JPEG or PNG photo test_epd_sglang sends (a cat: the answer must say "
                        "so); relative to the project directory")
    keep_on_failure: bool = _s("KEEP_ON_FAILURE", False,
                               "true: stop at the first failing case and leave its servers and "
                               "containers up (invoke clean stops them)")
    preflight: bool = _s("PREFLIGHT", True, "Mooncake pre-flight between the two hosts before "
                         "the first case (false: skipped, and said)")
    preflight_protocol: PreflightProtocol = _s(
        "PREFLIGHT_PROTOCOL", PreflightProtocol.AUTO,
        "auto (rdma where the containers have RDMA devices, else tcp), rdma or tcp")
    preflight_max_bytes: int = _s("PREFLIGHT_MAX_BYTES", 1 << 30,
                                  "largest size of the pre-flight's ladder (4 KiB, 1 MiB, "
                                  "64 MiB, 1 GiB), 4096 to 4294967296")
    harness_runtime: Runtime = _s("HARNESS_RUNTIME", Runtime.DOCKER,
                                  "docker: processes run in the container; host: on each host")
    harness_remote: RemoteVia = _s(
        "HARNESS_REMOTE", RemoteVia.SSH,
        "ssh: the remote host over SSH; local: a second node on this machine (the demo)")
    harness_sim: bool = _s("HARNESS_SIM", False, "true: the engines are the simulator (sim/)")
    sim_startup_s: float = _s("HARNESS_SIM_STARTUP_S", 0.5,
                              "seconds before a simulated engine is ready (>= 0)")
    sim_vllm_version: str = _s("HARNESS_SIM_VLLM_VERSION", "0.17.0",
                               "vLLM version the simulator reports")
    sim_faults: str = _s("HARNESS_SIM_FAULTS", "", "comma list of component:fault (sim only)")
    sim_mooncake: SimMooncake = _s(
        "HARNESS_SIM_MOONCAKE", SimMooncake.AUTO,
        "simulated engines move real bytes through Mooncake: auto (when it loads, else said "
        "with the install line), required (also whenever MOONCAKE_WHEEL or a mooncake fault "
        "is set) or off")
    sim_kv_bytes_per_token: int = _s("HARNESS_SIM_KV_BYTES_PER_TOKEN", 57344,
                                     "KV bytes a simulated prefill sends per prompt token "
                                     "(Qwen2.5-7B bf16; at least 64 tokens a request)")
    # --- timeouts (seconds; each a finite number > 0) ----------------------------------------
    timeout_server_ready_s: float = _s("TIMEOUT_SERVER_READY_S", 240.0,
                                       "wait for a server's ready line")
    timeout_health_s: float = _s("TIMEOUT_HEALTH_S", 120.0, "wait for a server's health 200")
    timeout_router_s: float = _s("TIMEOUT_ROUTER_S", 120.0, "wait for the router")
    timeout_proxy_s: float = _s("TIMEOUT_PROXY_S", 240.0, "wait for the vLLM proxy")
    timeout_stop_s: float = _s("TIMEOUT_STOP_S", 10.0, "most a stop waits before killing")
    timeout_gpu_drain_s: float = _s("TIMEOUT_GPU_DRAIN_S", 60.0, "GPU memory drain wait")
    timeout_gpu_drain_after_kill_s: float = _s("TIMEOUT_GPU_DRAIN_AFTER_KILL_S", 45.0,
                                               "second drain wait, after the kill")
    timeout_preflight_s: float = _s("TIMEOUT_PREFLIGHT_S", 120.0,
                                    "most the Mooncake pre-flight may take")
    timeout_case_s: float = _s("TIMEOUT_CASE_S", 7200.0,
                               "most a single-host case's payload may run")
    progress_every_s: float = _s("PROGRESS_EVERY_S", 30.0,
                                 "a 'still waiting' line this often while anything waits (> 0)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read every setting from `environ` (default os.environ); bad values: SettingsError."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            for name in (f.metadata["env"], *f.metadata["aliases"]):
                raw = environ.get(name)
                if raw is not None and raw != "":
                    values[f.name] = _parse(f, name, raw)
                    if f.metadata["secret"]:
                        redaction.remember(raw)
                    redaction.remember_url_credentials(raw)
                    break
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        settings._remember_given(values)
        return settings

    def _remember_given(self, values: Mapping[str, Any]) -> None:
        # Which settings were given (by the environment or an override), so a default can be
        # told from the same value set on purpose: ~/.ssh/config fills in only what was not.
        object.__setattr__(self, "_given", frozenset(values))

    def given(self, name: str) -> bool:
        """Was the setting `name` (its field or env name) set, rather than left at its default?
        Settings built without from_env count a value other than the default as set."""
        for f in fields(self):
            if name in (f.name, f.metadata["env"]):
                known = getattr(self, "_given", None)
                if known is not None:
                    return f.name in known
                default = f.default if f.default is not dataclasses.MISSING \
                    else f.default_factory()
                return getattr(self, f.name) != default
        raise KeyError(name)

    def validate(self) -> None:
        """Refuse values that would misbehave later (a `nan` deadline never passes, port 99999
        fails deep inside a connect, REMOTE_TEST_DIR=/usr/lib would be wiped): one line each."""
        if self.sim_faults.strip():
            if not self.harness_sim:  # a knob nothing would play is a test that cannot fail
                raise SettingsError("HARNESS_SIM_FAULTS is set but HARNESS_SIM is not true: "
                                    "faults are played by the simulator only")
            from harness import simknobs
            simknobs.check_faults(self.sim_faults, self.sim_vllm_version)
            if self._mooncake_faults() and self.sim_mooncake is SimMooncake.OFF:
                raise SettingsError("HARNESS_SIM_FAULTS has a mooncake fault but "
                                    "HARNESS_SIM_MOONCAKE is off: nothing would move to break")
        for f in fields(self):
            if f.metadata["env"].startswith("TIMEOUT_"):
                _require_seconds(f.metadata["env"], getattr(self, f.name), minimum_ok=False)
        _require_seconds("HARNESS_SIM_STARTUP_S", self.sim_startup_s, minimum_ok=True)
        _require_seconds("PROGRESS_EVERY_S", self.progress_every_s, minimum_ok=False)
        if not 1 <= self.sim_kv_bytes_per_token <= 1 << 22:
            raise SettingsError(f"bad value for HARNESS_SIM_KV_BYTES_PER_TOKEN: "
                                f"{self.sim_kv_bytes_per_token} (accepted: 1 to 4194304 bytes)")
        if not 4096 <= self.preflight_max_bytes <= 1 << 32:
            raise SettingsError(f"bad value for PREFLIGHT_MAX_BYTES: {self.preflight_max_bytes} "
                                "(accepted: 4096 to 4294967296 bytes)")
        if not 1 <= self.remote_ssh_port <= 65535:
            raise SettingsError(f"bad value for REMOTE_SSH_PORT: {self.remote_ssh_port} "
                                "(accepted: a TCP port, 1-65535)")
        for name, address in (("LOCAL_IP", self.local_ip), ("REMOTE_IP", self.remote_ip)):
            _require_address(name, address)
        from harness.wipe import wipe_refusal
        refusal = wipe_refusal(self.remote_test_dir)
        if refusal:
            raise SettingsError(f"bad value for REMOTE_TEST_DIR: {self.remote_test_dir!r} "
                                f"({refusal}); each run wipes it on the remote host",
                                hint="use a directory of its own, e.g. "
                                     "/tmp/Mooncake_tone/mooncake_ci_test")

    def replace(self, **changes: Any) -> "Settings":
        changed = dataclasses.replace(self, **changes)
        given = getattr(self, "_given", None)
        if given is not None:
            changed._remember_given({**dict.fromkeys(given), **changes})
        return changed

    def _mooncake_faults(self) -> bool:
        return any(item.strip().startswith("mooncake:") for item in self.sim_faults.split(","))

    @property
    def effective_sim_mooncake(self) -> SimMooncake:
        """HARNESS_SIM_MOONCAKE as the engines get it: a wheel under test (MOONCAKE_WHEEL) makes
        `auto` `required`, so a pre-flight never passes without moving bytes through it."""
        if self.sim_mooncake is SimMooncake.AUTO and (self.mooncake_wheel.strip()
                                                      or self._mooncake_faults()):
            return SimMooncake.REQUIRED
        return self.sim_mooncake

    @property
    def remote_container(self) -> str:
        return self.remote_container_name or self.container_name

    def image_for(self, group: str) -> str:
        return self.registry_addr_vllm if group == "VLLM" else self.registry_addr_sglang

    def env_items(self) -> list[tuple[str, str]]:
        """(NAME, value) of every non-secret setting, as they would be exported."""
        out = []
        for f in fields(self):
            if f.metadata["secret"]:
                continue
            value = _format(getattr(self, f.name))
            out.append((f.metadata["env"], _shown(value)))
        return out

    def __repr__(self) -> str:
        """Every setting but the secret ones, URL credentials masked (a repr lands in logs)."""
        def value(f: dataclasses.Field) -> Any:
            raw = getattr(self, f.name)
            return _shown(raw) if isinstance(raw, str) else raw
        shown = ", ".join(f"{f.name}={value(f)!r}" for f in fields(self)
                          if not f.metadata["secret"])
        return f"Settings({shown})"


def _shown(value: str) -> str:
    """A setting's value fit to be written or printed: credentials inside URLs (MOONCAKE_WHEEL,
    an index URL) and any remembered secret masked."""
    return redaction.scrub(redaction.url_without_credentials(value))


def _require_seconds(name: str, value: float, *, minimum_ok: bool) -> None:
    """A duration: finite, and > 0 (or >= 0 where zero means 'at once')."""
    if math.isfinite(value) and (value > 0 or (minimum_ok and value == 0)):
        return
    accepted = "a finite number >= 0" if minimum_ok else "a finite number > 0"
    raise SettingsError(f"bad value for {name}: {value!r} (accepted: {accepted}, in seconds)")


# Host names and IPv4 addresses; what servers bind and what URLs are built from.
_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


def _require_address(name: str, value: str) -> None:
    """IPv4 or a host name. IPv6 is refused: the URLs the cases, the readiness checks and the
    simulator build put the address in unbracketed (`http://ADDR:PORT`)."""
    if not value:
        return
    if ":" in value or value.startswith("["):
        raise SettingsError(f"bad value for {name}: {value!r} (IPv6 addresses are not "
                            "supported; accepted: an IPv4 address or a host name)")
    if not _HOST_NAME.match(value):
        raise SettingsError(f"bad value for {name}: {value!r} (accepted: an IPv4 address or "
                            "a host name)")


def _parse(f: dataclasses.Field, name: str, raw: str) -> Any:
    kind = _TYPES[f.type]   # a name: this module's annotations are strings (PEP 563)
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError   # the message below says what is accepted
        if kind is list:
            return [part.strip() for part in raw.split(",") if part.strip()]
        if issubclass(kind, enum.Enum):
            return kind(raw.strip().lower())
        return kind(raw)
    except ValueError:
        accepted = ""
        if issubclass(kind, enum.Enum):
            accepted = " (accepted: " + ", ".join(m.value for m in kind) + ")"
        elif kind is bool:
            accepted = " (accepted: true, false)"
        raise SettingsError(f"bad value for {name}: {raw!r}{accepted}") from None


_TYPES = {"str": str, "bool": bool, "int": int, "float": float, "list": list,
          "ImagePull": ImagePull, "HostKeyPolicy": HostKeyPolicy, "Runtime": Runtime,
          "RemoteVia": RemoteVia, "SimMooncake": SimMooncake,
          "PreflightProtocol": PreflightProtocol}


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def help_text() -> str:
    """Every setting with its default and meaning, for --help and the README."""
    lines = []
    for f in fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = _format(default) if default != "" else "(unset)"
        lines.append(f"  {f.metadata['env']:<32} {shown:<24} {f.metadata['help']}")
    return "\n".join(lines)
