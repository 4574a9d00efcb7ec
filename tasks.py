"""invoke tasks: each per-host preparation step on its own, for people debugging a host by hand.

They read the same settings as everything else (environment variables, `python -m harness
settings` lists them) and call the same functions as a run. `invoke --list` shows them.
"""
from __future__ import annotations

import functools
import inspect
import logging
import sys
from pathlib import Path

from invoke import Exit, task

from harness import redaction
from harness.errors import HarnessError
from harness.settings import Settings

GROUP_HELP = {"group": "SGLANG or VLLM: which image (REGISTRY_ADDR_SGLANG/_VLLM) to use"}


def _harness_task(body):
    """Settings in, one clear line and exit 1 out on any harness error."""
    @functools.wraps(body)
    def wrapper(c, *args, **kwargs):
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                                datefmt="%H:%M:%S", stream=sys.stderr)
            for handler in logging.getLogger().handlers:  # the token never reaches the console
                handler.addFilter(redaction.SecretFilter())
        try:
            return body(c, Settings.from_env(), *args, **kwargs)
        except HarnessError as exc:
            raise Exit(f"error: {exc.details()}", code=1) from None
    # invoke builds the task's options from its signature: hide the injected `settings`.
    signature = inspect.signature(body)
    wrapper.__signature__ = signature.replace(
        parameters=[p for name, p in signature.parameters.items() if name != "settings"])
    return wrapper


def _tell(answer: object, step: str) -> None:
    """A step that found nothing to do says so (the run tells it on its prep line)."""
    why = getattr(answer, "why", None)
    if why:
        print(f"{step}: skipped ({why})")


def _group(group: str) -> str:
    from harness.groups import GROUPS
    group = group.upper()
    if group not in GROUPS:
        raise Exit(f"error: unknown group {group!r}; accepted: {', '.join(GROUPS)}", code=2)
    return group


@task(help=GROUP_HELP)
@_harness_task
def prepare(c, settings, group="SGLANG"):
    """Prepare this host: run dir and .shrc, wheel, image, container, eRDMA, Python installs."""
    from harness.prep import manual
    manual.prepare_standalone(settings, _group(group))


@task(name="prepare-remote", help=GROUP_HELP)
@_harness_task
def prepare_remote(c, settings, group="SGLANG"):
    """Push the project to REMOTE_IP (REMOTE_TEST_DIR) and prepare that host the same way."""
    from harness.prep import manual
    if not settings.remote_ip:
        raise Exit("error: set REMOTE_IP (and REMOTE_USER, REMOTE_SSH_KEY, ...) first", code=2)
    manual.prepare_standalone(settings, _group(group), remote=True)


@task(name="get-wheel")
@_harness_task
def get_wheel(c, settings):
    """Fetch the Mooncake wheel into run/whls (ARTIFACT_ID+GIT_REPO, or MOONCAKE_WHEEL)."""
    from harness.layout import Layout
    from harness.settings import PROJECT_ROOT
    from harness.prep.wheel import fetch_wheel
    print(fetch_wheel(settings, Path(Layout.at(PROJECT_ROOT).whls)))


@task(name="start-container", help=GROUP_HELP)
@_harness_task
def start_container(c, settings, group="SGLANG"):
    """Pull the group's image (per IMAGE_PULL) and start CONTAINER_NAME, replacing an old one."""
    from harness.prep import per_host as prep
    from harness.prep import manual
    node = manual.container_node(settings)
    image = settings.image_for(_group(group))
    _tell(prep.pull_image(node.client, image, settings.image_pull), "pull-image")
    prep.start_container(node, image, "manual")
    print(f"container {settings.container_name} running {image}")


@task(name="stop-container")
@_harness_task
def stop_container(c, settings):
    """Stop and remove CONTAINER_NAME on this host."""
    from harness.prep import manual
    manual.container_node(settings).remove()
    print(f"container {settings.container_name} removed")


@task(name="install-erdma")
@_harness_task
def install_erdma(c, settings):
    """Install the eRDMA user-space packages in the running container and check ibv_devinfo."""
    from harness.prep import per_host as prep
    from harness.prep import manual
    _tell(prep.install_erdma(manual.container_node(settings), settings), "install-erdma")


@task
@_harness_task
def reset(c, settings):
    """Reset this host as between cases (container restart, GPU drain, scoped kill).

    Restart the container (HARNESS_RUNTIME=host: stop this run's processes), wait until every
    GPU uses at most 1024 MB, kill only this container's GPU processes if needed, wait again."""
    from harness.prep.environment import local_node
    from harness.layout import Layout
    from harness.prep.reset import gpu_source_for, reset_node
    from harness.settings import PROJECT_ROOT
    node = local_node(settings, Layout.at(PROJECT_ROOT))
    try:
        print(reset_node(node, settings, gpu_source_for(node, settings)).summary())
    finally:
        node.close()


@task(help={"wheels": "also remove run/whls and run/.shrc",
            "remote": "also stop what runs on REMOTE_IP (over SSH) and remove its container"})
@_harness_task
def clean(c, settings, wheels=False, remote=False):
    """Stop processes recorded in run/pids, remove the container and run/logs, run/pids."""
    from harness.prep import manual
    if remote and not settings.remote_ip:
        raise Exit("error: --remote needs REMOTE_IP (and REMOTE_USER, REMOTE_SSH_KEY, ...)",
                   code=2)
    manual.clean(settings, wheels=wheels, remote=remote)


@task(help={"case": "a double case (test_1p1d_erdma, test_epd_sglang, test_vllm_1p1d_erdma)",
            "model": "one of the case's models (default: its first)"})
@_harness_task
def serve(c, settings, case, model=""):
    """Start a double case's servers and router/proxy on both hosts; keep them up until Ctrl-C.

    Prepares both hosts as a run does, starts the servers of one model exactly as the case
    does, prints how to reach them (docker exec lines, URLs, logs), and stops everything on
    Ctrl-C or SIGTERM."""
    from harness.run.serve import serve as serve_case
    serve_case(settings, case, model or None)
