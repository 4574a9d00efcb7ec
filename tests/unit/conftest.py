"""Fixtures of the unit tests that run real processes on this host (no Docker, no fixed ports)."""
from __future__ import annotations

import os
import signal

import pytest

from harness.hosts.local import LocalHost
from harness.hosts.nodes import HostNode


@pytest.fixture
def node(tmp_path):
    """This host as a HostNode whose project root is the test's tmp_path."""
    return HostNode(LocalHost("local", "127.0.0.1"), tmp_path)


@pytest.fixture
def servers():
    """The harness Servers a test made; each one's process group is SIGKILLed afterwards."""
    started: list = []
    yield started
    for server in started:
        if server.proc is not None:
            try:
                os.killpg(server.proc.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
