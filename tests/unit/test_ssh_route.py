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


def write(tmp_path, text: str):
    path = tmp_path / "config"
    path.write_text(text)
    return path


def test_proxy_command_tokens_take_the_final_user_and_port(tmp_path):
    path = write(tmp_path, "Host gpu\n    HostName 10.9.9.9\n    User ci\n"
                           "    ProxyCommand nc -X connect %h %p # %r %%\n")
    route = resolve(Settings.from_env({"SSH_CONFIG": str(path), "REMOTE_USER": "root",
                                       "REMOTE_SSH_PORT": "2200"}), "gpu")
    assert route.proxy_command == "nc -X connect 10.9.9.9 2200 # root %"
    assert route.jumps == []


def test_both_proxy_jump_and_proxy_command_is_one_line(tmp_path):
    path = write(tmp_path, "Host gpu\n    ProxyJump b\n    ProxyCommand nc %h %p\n")
    with pytest.raises(SettingsError, match="both ProxyJump and ProxyCommand apply to gpu"):
        resolve(Settings.from_env({"SSH_CONFIG": str(path)}), "gpu")


@pytest.mark.parametrize("keyword", ["BindAddress 10.0.0.1", "HostKeyAlias other",
                                     "CertificateFile ~/.ssh/c.pub"])
def test_a_keyword_the_harness_cannot_honour_is_named(tmp_path, keyword):
    path = write(tmp_path, f"Match host gpu\n    {keyword}\n")
    with pytest.raises(SettingsError) as info:
        resolve(Settings.from_env({"SSH_CONFIG": str(path)}), "gpu")
    assert keyword.split()[0].lower() in str(info.value) and "\n" not in str(info.value)


def test_include_is_relative_to_ssh_dir_and_the_block_goes_on_after_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh" / "conf.d").mkdir(parents=True)
    (tmp_path / ".ssh" / "conf.d" / "a.conf").write_text("HostName 10.9.9.9\nHost other\n"
                                                         "    Port 2999\n")
    path = write(tmp_path, "Host gpu\n    Include conf.d/*.conf\n    Port 2200\n")
    target = resolve(Settings.from_env({"SSH_CONFIG": str(path)}), "gpu").target
    assert (target.hostname, target.port) == ("10.9.9.9", 2200)


def test_settings_win_over_the_configs_host_key_checking(tmp_path):
    path = write(tmp_path, "Host gpu\n    StrictHostKeyChecking no\n"
                           "    UserKnownHostsFile /k/one /k/two\n")
    route = resolve(Settings.from_env({"SSH_CONFIG": str(path)}), "gpu")
    assert (route.host_key_policy, route.known_hosts) == ("ignore", "/k/one")
    route = resolve(Settings.from_env({"SSH_CONFIG": str(path), "SSH_HOST_KEY_POLICY": "strict",
                                       "SSH_KNOWN_HOSTS": "/mine"}), "gpu")
    assert (route.host_key_policy, route.known_hosts) == ("strict", "/mine")
