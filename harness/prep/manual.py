"""The invoke tasks' backends: preparation, the container and cleaning, each on its own, for
people debugging a host by hand (`invoke --list`)."""
from __future__ import annotations

import logging
import uuid
from contextlib import ExitStack

from harness.hosts.local import LocalHost
from harness.hosts.nodes import HostNode, Node
from harness.layout import Layout
from harness.prep import environment
from harness.prep.environment import Environment
from harness.settings import PROJECT_ROOT, RemoteVia, Runtime, Settings

log = logging.getLogger(__name__)


def container_node(settings: Settings) -> Node:
    """The local container node (for tasks that act on CONTAINER_NAME)."""
    from harness.containers.node import ContainerNode
    return ContainerNode(settings, LocalHost("local", settings.local_ip or "127.0.0.1"),
                         PROJECT_ROOT)


def prepare_standalone(settings: Settings, group: str, *, remote: bool = False) -> None:
    """`invoke prepare`/`prepare-remote`: prepare as a run would, leaving the containers up."""
    env = Environment(settings, Layout.at(PROJECT_ROOT), uuid.uuid4().hex[:12])
    with ExitStack() as closing:
        with ExitStack() as stack:
            environment.open_nodes(env, closing, needs_remote=remote)
            environment.prepare(env, stack, group, local_node=not remote)
            stack.pop_all()  # keep the containers for the person debugging
    for name, seconds in env.prep_s.items():
        print(f"{name:<32} {seconds:.1f}s")


def clean(settings: Settings, *, wheels: bool, remote: bool = False) -> None:
    """`invoke clean`: stop recorded processes, remove the container and the run's logs;
    `remote`: on the remote host too (what KEEP_ON_FAILURE left there)."""
    layout = Layout.at(PROJECT_ROOT)
    host = LocalHost("local")
    # Host runtime: the recorded groups and every process marked with this checkout (harness.
    # procs), of any run; in the Docker runtime the PID files are the container's, so only the
    # marker sweep runs on this host. HARNESS_REMOTE=local: the remote dir's node is here too.
    nodes = [HostNode(host, layout.root)]
    if settings.harness_remote is RemoteVia.LOCAL:
        nodes.append(HostNode(host, settings.remote_test_dir, name="remote"))
    stopped = [found for node in nodes for found in (
        node.stop_all(None, settings.timeout_stop_s) if settings.harness_runtime is Runtime.HOST
        else node.sweep(timeout_s=settings.timeout_stop_s))]
    if settings.harness_runtime is Runtime.DOCKER:
        node = container_node(settings)
        if node.running():
            stopped += node.stop_all(None, settings.timeout_stop_s)
        node.remove()
    if remote:
        stopped += _clean_remote(settings)
    for path in (layout.logs, layout.pids) + ((layout.whls, layout.shrc) if wheels else ()):
        host.remove(path)
    log.info("clean: stopped %s; removed run/logs, run/pids%s", stopped or "nothing",
             ", run/whls, run/.shrc" if wheels else "")


def _clean_remote(settings: Settings) -> list[str]:
    """The remote host's share of `invoke clean`, through the node a run uses there."""
    if settings.harness_remote is RemoteVia.LOCAL and settings.harness_runtime is Runtime.HOST:
        return []  # the remote dir's node is on this machine: clean() has swept it
    node = environment.remote_node(settings)
    try:
        if settings.harness_runtime is Runtime.HOST:
            return [f"remote: {found}" for found in node.stop_all(None, settings.timeout_stop_s)]
        stopped = []
        if node.running():
            stopped = [f"remote: {found}" for found in node.stop_all(None,
                                                                     settings.timeout_stop_s)]
        node.remove()
        return stopped
    finally:
        node.close()
        node.host.close()
