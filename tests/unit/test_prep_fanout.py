"""Both hosts' prep at once (harness.prep.environment.prepare): the first failure stops the
other host at its next step, and what it reports is the failure, not the sibling that merely
stopped."""
import time
from contextlib import ExitStack

import pytest

from harness.prep import environment
from harness.prep.environment import Environment
from harness.errors import HarnessError
from harness.hosts.local import LocalHost
from harness.layout import Layout
from harness.hosts.nodes import HostNode, Node
from harness.settings import Settings


class SlowSyncHost(LocalHost):
    """The remote host: its project sync takes a while (a real one pushes a tarball)."""

    def sync_project(self, local_root, remote_dir, extra_files=None):
        time.sleep(0.5)
        return []


class RemoteContainer(Node):
    """Stands for the remote container node: records which prep steps reached it."""

    name = "remote"

    def __init__(self, root):
        self.host = SlowSyncHost("remote", "127.0.0.2")
        self.layout = self.host_layout = Layout.at(root)
        self.calls = []

    def pull(self, image, policy):
        self.calls.append("pull")

    def remove(self):
        self.calls.append("remove")


def test_a_failed_local_wheel_stops_the_remote_host_before_its_image_pull(tmp_path):
    settings = Settings.from_env({"MOONCAKE_WHEEL": str(tmp_path / "missing.whl"),
                                  "HARNESS_RUNTIME": "docker"})
    local_root, remote_root = tmp_path / "local", tmp_path / "remote"
    env = Environment(settings, Layout.at(local_root), "run1")
    env.local = HostNode(LocalHost("local"), local_root)
    env.remote = RemoteContainer(remote_root)
    with pytest.raises(HarnessError) as err, ExitStack() as stack:
        environment.prepare(env, stack, "SGLANG")
    assert err.value.step == "get-wheel" and err.value.host == "local", str(err.value)
    assert "pull" not in env.remote.calls  # 30 GB not pulled for a run that cannot happen
    assert "remote" not in str(err.value)  # the remote host only stopped: not a second error
