"""The run's environment: the nodes of both hosts, their preparation, resets and log collection.

Preparation (SPEC §5) runs on the two hosts at the same time. The wheel is fetched once, locally;
the remote host syncs the project tree, pulls its image and starts its container meanwhile, and
only its pip install waits for the wheel.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.policy import RunPolicy
from harness.prep import per_host as prep

from harness.hosts import procs
from harness.errors import HarnessError
from harness.hosts.local import LocalHost
from harness.layout import Layout
from harness.prep.sim_gpu import SimGpu, sim_gpu_dir
from harness.hosts.nodes import HostNode, Node
from harness.prep.reset import gpu_source_for, reset_node
from harness.settings import RemoteVia, Runtime, Settings
from harness.shrc import shrc_text
from harness.results.steps import Steps
from harness.results.timeline import Timeline
from harness.waiting import Cancel, fan_out, wait_until
from harness.prep.download import DOWNLOAD_DEADLINE_S
from harness.prep.wheel import fetch_wheel, find_wheel

log = logging.getLogger(__name__)
# The remote host's pip step waits for the local wheel: as long as its download may take, and
# a little more (the local step fails by itself once its own deadline passes).
WHEEL_WAIT_S = DOWNLOAD_DEADLINE_S + 60.0


@dataclass
class Environment:
    settings: Settings
    layout: Layout            # the local project tree
    run_id: str
    local: Node | None = None
    remote: Node | None = None
    prep_s: dict[str, float] = field(default_factory=dict)
    policy: RunPolicy = field(default_factory=RunPolicy)  # the run's: cancel, keep-on-failure
    timeline: Timeline = field(default_factory=Timeline.off)  # the run's record of spans

    @property
    def cancel(self) -> Cancel:
        """The run's cancel token: Ctrl-C/SIGTERM set it."""
        return self.policy.cancel

    @property
    def nodes(self) -> list[Node]:
        return [n for n in (self.local, self.remote) if n is not None]


# --- nodes ------------------------------------------------------------------------------------
def local_node(settings: Settings, layout: Layout) -> Node:
    host = LocalHost("local", settings.local_ip or "127.0.0.1")
    if settings.harness_runtime is Runtime.HOST:
        return HostNode(host, layout.root)
    from harness.containers.node import ContainerNode
    return ContainerNode(settings, host, layout.root)


def remote_node(settings: Settings) -> Node:
    """The remote host's node: over SSH, or (the demo) a second node on this machine."""
    if settings.harness_remote is RemoteVia.LOCAL:
        host = LocalHost("remote", settings.remote_ip)
        if settings.harness_runtime is Runtime.HOST:
            return HostNode(host, settings.remote_test_dir, name="remote")
        from harness.containers.node import ContainerNode
        return ContainerNode(settings, host, settings.remote_test_dir,
                             container_name=settings.remote_container, name="remote")
    from harness.hosts.ssh import SSHHost
    ssh_host = SSHHost(settings, settings.remote_ip, "remote")
    if settings.harness_runtime is Runtime.HOST:
        return HostNode(ssh_host, settings.remote_test_dir, name="remote")
    from harness.containers.node import remote_container_node
    return remote_container_node(settings, ssh_host, settings.remote_test_dir)


def open_nodes(env: Environment, stack: ExitStack, needs_remote: bool) -> None:
    """Create the nodes once per run; they are closed when the run ends."""
    if env.local is None:
        env.local = local_node(env.settings, env.layout)
        stack.callback(env.local.close)
    if needs_remote and env.remote is None:
        env.remote = remote_node(env.settings)
        stack.callback(env.remote.host.close)
        stack.callback(env.remote.close)
    for node in env.nodes:  # mark what they start; stop what an earlier run left (hosts.procs)
        procs.claim(node, env.run_id, env.settings.timeout_stop_s)


# --- preparation ------------------------------------------------------------------------------
def _steps(env: Environment, node: Node, cancel: Cancel) -> Steps:
    """One host's prep steps: a cancel (Ctrl-C, or the other host's prep failed) stops it
    before its next step; a long step prints progress lines."""
    return Steps(node.name, f"prep {node.name}", env.prep_s, env.timeline, kind="prep",
                 cancel=cancel, key=lambda name: f"{node.name}:{name}", progress=True)


class _Wheel:
    """The local wheel, handed to the remote host's pip step when it is ready."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.path: Path | None = None
        self.failed = False

    def set(self, path: Path | None, failed: bool = False) -> None:
        self.path, self.failed = path, failed
        self.ready.set()


def prepare(env: Environment, stack: ExitStack, group: str, *, local_node: bool = True) -> None:
    """Prepare every node of the run for `group`, the hosts at the same time.

    With local_node=False (`invoke prepare-remote`) this host only provides the wheel."""
    wheel = _Wheel()
    def local(cancel: Cancel) -> None:
        steps = _steps(env, env.local, cancel)
        try:
            _prepare_local(env, env.local, stack, group, wheel, local_node, steps)
        finally:
            steps.tell_skipped()

    def remote(cancel: Cancel) -> None:
        steps = _steps(env, env.remote, cancel)
        try:
            _prepare_remote(env, env.remote, stack, group, wheel, steps)
        finally:
            steps.tell_skipped()

    fan_out([local, remote] if env.remote is not None else [local], env.cancel, "prep")


def _prepare_local(env: Environment, node: Node, stack: ExitStack, group: str,
                   wheel: _Wheel, whole: bool, step: Steps) -> None:
    s = env.settings
    try:
        same_wheel = step("run-dir", lambda: prep.prepare_run_dir(s, node.host, env.layout))
        if s.harness_sim:  # memory a gpu-leak fault "leaked" in an earlier run is not ours
            SimGpu(node.host, sim_gpu_dir(env.layout)).clear()
        whl_dir = Path(env.layout.whls)
        if not (s.mooncake_wheel or s.artifact_id) and s.harness_sim:
            path = step.skip("get-wheel", "simulated run without MOONCAKE_WHEEL or ARTIFACT_ID")
        elif same_wheel:
            path = step.skip("get-wheel", f"artifact {s.artifact_id} already in run/whls (its "
                             "stamp and sha256 match)", value=find_wheel(whl_dir))
        else:
            path = step("get-wheel", lambda: fetch_wheel(
                s, whl_dir, sleep=step.cancel.sleeper("waiting to retry the wheel download")))
    except BaseException:
        wheel.set(None, failed=True)
        raise
    wheel.set(path)
    if whole:
        _container_steps(env, node, stack, group, step)
        _pip_step(env, node, group, step, path)


def _prepare_remote(env: Environment, node: Node, stack: ExitStack, group: str,
                    wheel: _Wheel, step: Steps) -> None:
    s = env.settings
    remote = env.layout.view(node.host_layout.root)
    shrc = shrc_text(s, remote.path_entries())
    step("sync-project", lambda: node.host.sync_project(env.layout.root, remote.root,
                                                        {"run/.shrc": shrc}))
    _container_steps(env, node, stack, group, step)
    arrived, _, waited = wait_until(
        lambda: (wheel.ready.is_set(), "the local get-wheel step is still running"),
        timeout_s=WHEEL_WAIT_S, poll_s=0.1, cancel=step.cancel, awaited="the local wheel")
    if not arrived:
        raise HarnessError(f"the local wheel did not arrive within {waited:.0f}s",
                           step="pip-install", host=node.name)
    if wheel.failed:
        raise HarnessError("the local wheel step failed; nothing to install here",
                           step="pip-install", host=node.name)
    if wheel.path is not None:
        target = remote.whls / wheel.path.name
        step("put-wheel", lambda: _put_wheel(node, wheel.path, target))
    _pip_step(env, node, group, step, wheel.path)


def _put_wheel(node: Node, local: Path, target) -> None:
    node.host.run(["bash", "-c", 'rm -f -- "$1"/*.whl', "put-wheel", str(target.parent)])
    node.host.put(local, target)


def _container_steps(env: Environment, node: Node, stack: ExitStack, group: str,
                     step: Steps) -> None:
    s = env.settings
    if isinstance(node, HostNode):
        for name in ("pull-image", "start-container", "install-erdma"):
            step.skip(name, "HARNESS_RUNTIME=host")
        return
    image = s.image_for(group)
    step("pull-image", lambda: node.pull(image, s.image_pull))
    # At the end of the run the container is stopped, not removed (SPEC §8, as the old
    # scripts' `docker stop`): a person can look inside after a failure; the next run's
    # start-container replaces it, `invoke clean` removes it.
    stack.callback(_stop_container, env, node)
    step("start-container", lambda: prep.start_container(node, image, env.run_id))
    step("install-erdma", lambda: prep.install_erdma(node, s))


def _stop_container(env: Environment, node: Node) -> None:
    if env.policy.keeps_containers:
        log.info("%s: container %s left running (KEEP_ON_FAILURE)", node.name,
                 getattr(node, "container_name", ""))
        return
    node.stop_container()


def _pip_step(env: Environment, node: Node, group: str, step: Steps,
              wheel: Path | None) -> None:
    if wheel is None and isinstance(node, HostNode):
        step.skip("pip-install", "no wheel to install")
        return
    step("pip-install", lambda: prep.install_python_packages(
        node, env.settings, group, wheel.name if wheel else None))


# --- between and after cases ------------------------------------------------------------------
def reset(env: Environment, next_case: str) -> None:
    """Reset every node at the same time (SPEC §8): restart (or stop this run's processes),
    wait for GPU memory, scoped kill, wait again. A failure means an unhealthy host."""
    def reset_one(node: Node) -> Callable[[Cancel], None]:
        def job(cancel: Cancel) -> None:
            started = time.monotonic()
            with env.timeline.span(node.name, "reset", f"reset before {next_case}",
                                   case=next_case) as span:
                report = reset_node(node, env.settings, gpu_source_for(node, env.settings),
                                    cancel=cancel, spans=env.timeline, case=next_case)
                span.detail = report.action
            env.prep_s[f"{node.name}:reset before {next_case}"] = round(
                time.monotonic() - started, 3)
            log.info("reset %s: %s", node.name, report.summary())
        return job
    fan_out([reset_one(node) for node in env.nodes], env.cancel, "reset")


def fresh_case_dirs(env: Environment, case: str) -> None:
    """A case's log and PID dirs are emptied at its start, on both hosts (SPEC §4)."""
    for node in env.nodes:
        node.host.empty_dir(node.on_host(node.layout.case_logs(case)))
        node.host.empty_dir(node.on_host(node.layout.case_pids(case)))


def collect_remote_logs(env: Environment, case: str) -> None:
    """Copy the remote host's logs of `case` into the local tree (before the result is
    written). A copy that fails is a warning: it never changes a verdict."""
    node = env.remote
    if node is None:
        return
    source = node.on_host(node.layout.case_logs(case))
    try:
        copied = node.host.get_tree(source, Path(env.layout.case_logs(case)))
    except HarnessError as exc:
        log.warning("could not copy the remote logs of %s: %s", case, exc)
        return
    log.info("%s: copied %d log file(s) of %s", node.name, len(copied), case)
