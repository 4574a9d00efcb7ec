"""The names of the per-host preparation steps (SPEC §5) and the one line each logs.

Shared by the preparation steps (harness.prep.per_host) and the container node, which pulls
its own image, so the containers layer need not import prep.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from harness.errors import HarnessError

log = logging.getLogger("harness.prep.per_host")

STEP_RUN_DIR = "run-dir"
STEP_GET_WHEEL = "get-wheel"
STEP_PULL_IMAGE = "pull-image"
STEP_START_CONTAINER = "start-container"
STEP_INSTALL_ERDMA = "install-erdma"
STEP_PIP_INSTALL = "pip-install"


def starting(step: str, host: str, what: str) -> None:
    """What a step is doing, for the record (the console has the step's own start line)."""
    log.debug("[%s] %s: %s", host, step, what)


def skipped(step: str, host: str, why: str) -> None:
    """The one line for a step that does not run (the demo shows these, never drops them)."""
    log.info("[%s] %s: skipped (%s)", host, step, why)


@contextmanager
def at_step(step: str, host: str) -> Iterator[None]:
    """Fill in step and host on any HarnessError raised inside."""
    try:
        yield
    except HarnessError as exc:
        exc.at(step=step, host=host)
        raise
