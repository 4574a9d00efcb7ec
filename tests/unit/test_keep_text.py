"""What KEEP_ON_FAILURE and `invoke serve` print: shell lines per runtime and host, server URLs,
the keep reason, the stop command. (That the lines work: tests/integration/test_keep.py.)"""
from __future__ import annotations

from pathlib import PurePosixPath

from harness.containers.node import ContainerNode
from harness.hosts.local import LocalHost
from harness.run.keep import Kept, reach_text, server_url, shell_line, stop_line
from harness.hosts.nodes import HostNode
from harness.servers.server import Server
from harness.settings import Settings
from harness.hosts.ssh_config import Hop, Route


class FakeSSHHost(LocalHost):
    """Only what the shell line reads of an SSHHost: its route."""

    def __init__(self, route: Route) -> None:
        super().__init__("remote", route.target.hostname)
        self.route = route


def settings(**env: str) -> Settings:
    return Settings.from_env({"LOCAL_IP": "127.0.0.1", "REMOTE_IP": "127.0.0.2", **env})


def server(name: str, node, address: str | None = None, port: int | None = None) -> Server:
    return Server(name, node, ["python3", "-m", name], "test_1p1d_erdma",
                  PurePosixPath(f"/p/run/logs/x/{name}.log"), [], address=address, port=port)


def test_urls_come_from_the_servers_own_address_and_port():
    local = HostNode(LocalHost("local", "127.0.0.1"), "/p")
    assert server_url(server("decode", local, "127.0.0.2", 30001)) == "http://127.0.0.2:30001"
    # the router listens on every address: it is reached at its node's
    assert server_url(server("router", local, "0.0.0.0", 8000)) == "http://127.0.0.1:8000"
    assert server("router", local, "0.0.0.0", 8000).url("/generate") == \
        "http://127.0.0.1:8000/generate"
    assert server_url(server("payload", local)) is None


def test_shell_lines_per_runtime_and_host():
    s = settings(REMOTE_SSH_KEY="/keys/ci", SSH_KNOWN_HOSTS="/keys/known",
                 SSH_HOST_KEY_POLICY="strict")
    route = Route(Hop("127.0.0.2", "127.0.0.2", 2222, "ci"),
                  [Hop("jump", "127.0.0.3", 22, "root")])
    remote_container = ContainerNode(s, FakeSSHHost(route), "/r", container_name="ci-remote",
                                     name="remote", engine=object())
    assert shell_line(s, remote_container) == (
        "ssh -t -p 2222 -i /keys/ci -o UserKnownHostsFile=/keys/known -J root@127.0.0.3:22 "
        "ci@127.0.0.2 docker exec -it ci-remote bash")
    local_container = ContainerNode(s, LocalHost("local"), "/p", engine=object())
    assert shell_line(s, local_container) == "docker exec -it mooncake-ci-test bash"
    remote_host = HostNode(FakeSSHHost(route), "/r", name="remote")
    assert shell_line(s, remote_host).endswith("ci@127.0.0.2 'cd /r && exec bash'")
    assert shell_line(s, HostNode(LocalHost("local"), "/p")).startswith("cd /p ")


def test_stop_line_reaches_the_remote_only_where_the_plain_clean_does_not():
    local = HostNode(LocalHost("local"), "/p")
    remote = HostNode(LocalHost("remote", "127.0.0.2"), "/r", name="remote")
    demo = settings(HARNESS_RUNTIME="host", HARNESS_REMOTE="local")
    assert stop_line(demo, [local, remote]).startswith("invoke clean   (in /p")
    assert stop_line(settings(), [local, remote]).startswith("invoke clean --remote ")
    assert stop_line(settings(), [local]).startswith("invoke clean ")


def test_the_keep_reason_and_the_block_say_what_was_kept():
    local = HostNode(LocalHost("local", "127.0.0.1"), "/p")
    router = server("router", local, "0.0.0.0", 8000)
    kept = Kept("test_1p1d_erdma", "Qwen/Qwen3-8B", [router])
    assert kept.not_run_reason() == ("not run: the run stopped at the failure of "
                                     "test_1p1d_erdma because KEEP_ON_FAILURE=true kept "
                                     "test_1p1d_erdma's servers up")
    text = reach_text(settings(HARNESS_RUNTIME="host"), [local], kept)
    assert "router   http://127.0.0.1:8000" in text and "/p/run/logs/x/router.log" in text
    payload = Kept("test_moe_mooncake", payload=True, containers=True)
    assert payload.not_run_reason().endswith("kept the containers up")
    assert "nothing is kept but the containers" in reach_text(settings(), [local], payload)


def test_the_run_policy_keeps_only_while_not_cancelled():
    from harness.policy import RunPolicy
    policy = RunPolicy(keep_on_failure=True)
    assert policy.keeps_failures and not policy.keeps_containers
    policy.keep_servers(["decode"])
    policy.stop_at("test_1p1d_erdma")
    assert policy.kept_servers == ["decode"] and policy.keeps_containers
    policy.cancel.set("interrupted")
    assert not policy.keeps_failures  # Ctrl-C/SIGTERM still stops everything
    assert not RunPolicy().keeps_failures
