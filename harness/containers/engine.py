"""What a container node asks of a Docker engine: the small interface its two transports share.

`ContainerNode` (harness.containers.node) owns the lifecycle policy (replace on start, remove what a
refused start left, restart between cases, stop at the end, IMAGE_PULL); an engine only carries
one call to Docker and back, by container name. Two transports implement it, as testcontainers'
`DockerContainer` delegates to its client:

    SdkEngine   (harness.containers.docker_sdk)        the docker SDK, on this machine
    DockerCLI   (harness.containers.docker_cli)  the docker CLI over the harness's SSH connection

A refusal of the engine (no such image, a runtime that cannot start the container) is an
`EngineRefused` carrying the engine's own words on one line; the node turns it into a
`DockerError` naming the container and host. An engine that does not answer at all is a
`DockerError` straight from the transport, with what to do.
"""
from __future__ import annotations

from harness.containers.spec import ContainerSpec
from harness.hosts.local import Completed

# Control calls (create, start, restart, inspect) may take this long before the engine counts as
# wedged. `docker exec` is bounded by `timeout` inside the container: the command's own limit,
# or EXEC_DEFAULT_TIMEOUT_S when it has none.
CONTROL_TIMEOUT_S = 300
EXEC_DEFAULT_TIMEOUT_S = 2 * 3600
# Extra seconds `timeout` gives a command after TERM before it KILLs it.
EXEC_KILL_AFTER_S = 5
# Our containers in these states are what a crashed run or a refused start left behind.
LEFTOVER_STATES = ("created", "exited", "dead")


class EngineRefused(Exception):
    """The engine answered no; `str()` is its answer on one line."""


class ContainerEngine:
    """One Docker engine, addressed by container name. Missing containers are not errors:
    `state` answers None, `stop` and `remove` do nothing."""

    def ping(self) -> str:
        """The engine's version; DockerError when it does not answer."""
        raise NotImplementedError

    def state(self, name: str) -> str | None:
        """running, exited, created...; None when there is no such container."""
        raise NotImplementedError

    def container_id(self, name: str) -> str | None:
        raise NotImplementedError

    def run(self, spec: ContainerSpec) -> None:
        """Create the container of `spec` and start it (`docker run --detach`)."""
        raise NotImplementedError

    def logs(self, name: str, tail: int) -> str:
        raise NotImplementedError

    def restart(self, name: str, timeout_s: int) -> None:
        raise NotImplementedError

    def stop(self, name: str, timeout_s: int) -> None:
        raise NotImplementedError

    def remove(self, name: str) -> bool:
        """Remove the container in any state; False when there was none."""
        raise NotImplementedError

    def leftovers(self, label_filters: list[str]) -> list[str]:
        """Names of the containers carrying every `key=value` label, in LEFTOVER_STATES."""
        raise NotImplementedError

    def image_present(self, image: str) -> bool:
        raise NotImplementedError

    def pull(self, image: str) -> None:
        raise NotImplementedError

    def exec(self, name: str, argv: list[str], limit_s: float) -> Completed:
        """Run argv (already bounded by `timeout` to `limit_s`) in the container; its exit code
        and output. EngineRefused when the engine, not the command, said no."""
        raise NotImplementedError

    def close(self) -> None:
        """Close what the engine opened; idempotent."""
