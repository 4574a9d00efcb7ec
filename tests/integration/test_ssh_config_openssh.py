"""The route to the remote host against OpenSSH's own reading of the same config (`ssh -G`):
Include, Match, ProxyJump in every form, ProxyCommand, StrictHostKeyChecking and
UserKnownHostsFile (SPEC §11). The table printed with `pytest -s` is the route per config."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from harness.hosts.ssh_config import resolve
from harness.settings import Settings
from tests.conftest import missing

pytestmark = pytest.mark.integration

# name -> (config text, files it includes {relative name: text}, alias,
#          expected jump hops [(user, hostname, port)])
CONFIGS = {
    "include": ("Include {dir}/conf.d/*.conf\nHost gpu-a\n    User ci\n",
                {"conf.d/10-gpu.conf": "Host gpu-a\n    HostName 10.9.9.9\n    Port 2200\n"},
                "gpu-a", []),
    "proxyjump-uri": ("Host gpu-b\n    HostName 10.9.9.10\n"
                      "    ProxyJump ssh://ops@bastion:2222,jump2\n"
                      "Host bastion\n    HostName 10.1.1.1\nHost jump2\n    HostName 10.1.1.2\n"
                      "    User relay\n", {}, "gpu-b",
                      [("ops", "10.1.1.1", 2222), ("relay", "10.1.1.2", 22)]),
    "proxyjump-plain": ("Host gpu-c\n    ProxyJump admin@bastion:2200\n"
                        "Host bastion\n    HostName 10.1.1.1\n", {}, "gpu-c",
                        [("admin", "10.1.1.1", 2200)]),
    "proxycommand": ("Host gpu-d\n    HostName 10.9.9.11\n    User ci\n    Port 2022\n"
                     "    ProxyCommand ssh -W %h:%p -l %r bastion\n", {}, "gpu-d", []),
    "host-keys": ("Host gpu-e\n    StrictHostKeyChecking yes\n"
                  "    UserKnownHostsFile {dir}/tone_known_hosts {dir}/other\n", {}, "gpu-e", []),
    "match": ("Match host 10.8.8.8\n    Port 2023\n    User deploy\nHost *\n    Port 22\n", {},
              "10.8.8.8", []),
}


def openssh(config, alias: str, *flags: str) -> dict[str, str]:
    """`ssh -G`'s answer: keyword -> value (the first line of each)."""
    ssh = shutil.which("ssh")
    if not ssh:
        missing("no OpenSSH client (ssh) on PATH")
    done = subprocess.run([ssh, "-G", "-F", str(config), *flags, alias], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        found.setdefault(key, value)
    return found


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_route_is_the_one_openssh_takes(tmp_path, name):
    text, included, alias, hops = CONFIGS[name]
    for rel, body in included.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body)
    config = tmp_path / "config"
    config.write_text(text.format(dir=tmp_path))
    route = resolve(Settings.from_env({"SSH_CONFIG": str(config), "REMOTE_IP": alias}), alias)
    seen = openssh(config, alias)
    target = route.target
    print(f"{name}: {target.user}@{target.hostname}:{target.port} via "
          f"{[f'{h.user}@{h.hostname}:{h.port}' for h in route.jumps] or route.proxy_command}"
          f" keys={route.host_key_policy} known_hosts={route.known_hosts}")
    assert (target.hostname, target.user, int(target.port)) == (
        seen["hostname"], seen["user"], int(seen["port"]))
    assert [(h.user, h.hostname, h.port) for h in route.jumps] == hops
    for user, hostname, port in hops:  # each hop as ssh would reach it with that user and port
        hop_alias = next(h.alias for h in route.jumps if h.hostname == hostname)
        jump = openssh(config, hop_alias, "-l", user, "-p", str(port))
        assert (jump["hostname"], jump["user"], int(jump["port"])) == (hostname, user, port)
    raw = seen.get("proxycommand", "none")
    expected = "" if raw == "none" else (raw.replace("%h", seen["hostname"])
                                         .replace("%p", seen["port"]).replace("%r", seen["user"]))
    assert route.proxy_command == expected
    checking = {"true": "strict", "ask": "strict", "accept-new": "accept-new",
                "false": "ignore"}[seen["stricthostkeychecking"]]   # ssh -G's words
    if name == "host-keys":  # what the config says for it, not the harness's defaults
        assert (route.host_key_policy, route.known_hosts) == (
            checking, seen["userknownhostsfile"].split()[0])
