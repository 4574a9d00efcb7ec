"""The route to the remote host (harness.hosts.ssh_config.resolve): set values win over the
OpenSSH config, the config fills in what is not set (SPEC §3)."""
from __future__ import annotations

import pytest

from harness.errors import SettingsError
from harness.hosts.ssh_config import resolve
from harness.settings import Settings

CONFIG = """
Host 10.0.0.2
    HostName gpu-b.internal
    User ci
    Port 2222
    IdentityFile {key}
    ProxyJump ops@bastion:2200
"""


def settings(tmp_path, **env: str) -> Settings:
    path = tmp_path / "config"
    (tmp_path / "ci_key").write_text("not read here")
    path.write_text(CONFIG.format(key=tmp_path / "ci_key"))
    return Settings.from_env({"SSH_CONFIG": str(path), "REMOTE_IP": "10.0.0.2", **env})


def test_the_config_fills_in_what_is_not_set(tmp_path):
    route = resolve(settings(tmp_path), "10.0.0.2")
    target = route.target
    assert (target.hostname, target.user, target.port) == ("gpu-b.internal", "ci", 2222)
    assert target.key_files == [str(tmp_path / "ci_key")]
    (jump,) = route.jumps
    assert (jump.hostname, jump.user, jump.port) == ("bastion", "ops", 2200)


def test_set_values_win_over_the_config(tmp_path):
    route = resolve(settings(tmp_path, REMOTE_USER="root", REMOTE_SSH_PORT="22",
                             REMOTE_SSH_KEY="/keys/mine"), "10.0.0.2")
    target = route.target
    assert (target.user, target.port, target.key_files) == ("root", 22, ["/keys/mine"])
    assert target.hostname == "gpu-b.internal"       # not a setting: the config's


def test_defaults_stand_where_no_block_matches(tmp_path):
    target = resolve(settings(tmp_path, REMOTE_IP="10.0.0.9"), "10.0.0.9").target
    assert (target.hostname, target.user, target.port) == ("10.0.0.9", "root", 22)


def test_a_bad_port_in_the_config_is_one_line(tmp_path):
    path = tmp_path / "config"
    path.write_text("Host 10.0.0.2\n    Port twenty\n")
    with pytest.raises(SettingsError) as info:
        resolve(Settings.from_env({"SSH_CONFIG": str(path), "REMOTE_IP": "10.0.0.2"}),
                "10.0.0.2")
    assert "\n" not in str(info.value) and "twenty" in str(info.value)
