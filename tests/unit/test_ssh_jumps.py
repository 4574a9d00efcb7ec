"""The route's jump hosts and ports (harness.hosts.ssh_config): a ProxyJump chain as `ssh -J`
builds it from the same config, each hop's own jumps first, and a Port that is no TCP port
refused in one line naming the host and the file (SPEC §3, §11)."""
from __future__ import annotations

import pytest

from harness.errors import SettingsError
from harness.hosts.ssh_config import MAX_JUMPS, Hop, resolve
from harness.settings import Settings


def route_for(tmp_path, config: str, address: str = "gpu", **env: str):
    path = tmp_path / "config"
    path.write_text(config)
    return resolve(Settings.from_env({"SSH_CONFIG": str(path), **env}), address)


def key(tmp_path, name: str) -> str:
    path = tmp_path / name
    path.write_text("not read here")
    return str(path)


def test_a_jump_hosts_own_jump_comes_first_with_each_hops_config(tmp_path):
    outer_key = key(tmp_path, "outer_key")
    route = route_for(tmp_path, f"""
Host gpu
    ProxyJump outer
Host outer
    HostName 10.1.1.1
    User hopper
    Port 2022
    IdentityFile {outer_key}
    ProxyJump inner
""")
    assert route.jumps == [Hop("inner", "inner", 22, "root", []),
                           Hop("outer", "10.1.1.1", 2022, "hopper", [outer_key])]
    assert route.target == Hop("gpu", "gpu", 22, "root", [])


def test_a_comma_list_is_taken_in_order_and_the_spec_wins_over_the_jumps_config(tmp_path):
    route = route_for(tmp_path, """
Host gpu
    ProxyJump first, ops@second:2200
Host second
    User ci
    Port 2300
""")
    assert [(j.alias, j.user, j.port) for j in route.jumps] == [("first", "root", 22),
                                                                ("second", "ops", 2200)]


def test_a_jump_host_without_a_user_takes_remote_user(tmp_path):
    route = route_for(tmp_path, "Host gpu\n    ProxyJump bastion\n", REMOTE_USER="deploy")
    assert [(j.alias, j.user) for j in route.jumps] == [("bastion", "deploy")]


def test_proxy_jump_none_means_no_jump(tmp_path):
    route = route_for(tmp_path, "Host gpu\n    ProxyJump none\nHost *\n    ProxyJump b\n")
    assert route.jumps == []


def chain(length: int) -> str:
    """gpu -> j1 -> j2 ... -> j<length>, each jump host reached through the next."""
    blocks = ["Host gpu\n    ProxyJump j1\n"]
    blocks += [f"Host j{n}\n    ProxyJump j{n + 1}\n" for n in range(1, length)]
    return "".join(blocks)


def test_eight_nested_jump_hosts_are_followed(tmp_path):
    route = route_for(tmp_path, chain(MAX_JUMPS))
    assert [j.alias for j in route.jumps] == [f"j{n}" for n in range(MAX_JUMPS, 0, -1)]


def test_a_ninth_nested_jump_host_is_a_loop_named_in_one_line(tmp_path):
    with pytest.raises(SettingsError) as info:
        route_for(tmp_path, chain(MAX_JUMPS + 1))
    assert str(info.value) == (f"ProxyJump chain in SSH_CONFIG {tmp_path / 'config'} is longer "
                               "than 8 hops (a loop?)")


def test_a_jump_host_that_jumps_through_itself_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="a loop"):
        route_for(tmp_path, "Host gpu\n    ProxyJump gpu\n")


def test_remote_ssh_key_serves_jump_hosts_that_have_no_key_of_their_own(tmp_path):
    own = key(tmp_path, "own_key")
    route = route_for(tmp_path, f"Host gpu\n    ProxyJump plain,keyed\n"
                                f"Host keyed\n    IdentityFile {own}\n",
                      REMOTE_SSH_KEY="/keys/mine")
    assert [(j.alias, j.key_files) for j in route.jumps] == [("plain", ["/keys/mine"]),
                                                             ("keyed", [own])]
    assert route.target.key_files == ["/keys/mine"] and route.target.key_from_setting


def test_without_remote_ssh_key_a_jump_host_keeps_the_agent(tmp_path):
    route = route_for(tmp_path, "Host gpu\n    ProxyJump plain\n")
    assert route.jumps[0].key_files == [] and not route.target.key_from_setting


# --- keys ----------------------------------------------------------------------------------
def test_only_identity_files_that_exist_are_tried_with_home_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    key(tmp_path / ".ssh", "id_b")
    key(tmp_path / ".ssh", "id_a")
    route = route_for(tmp_path, "Host gpu\n    IdentityFile ~/.ssh/id_b\n"
                                "    IdentityFile ~/.ssh/missing\n    IdentityFile ~/.ssh/id_a\n")
    assert route.target.key_files == [str(tmp_path / ".ssh" / "id_b"),
                                      str(tmp_path / ".ssh" / "id_a")]
    assert not route.target.key_from_setting


def test_remote_ssh_key_has_home_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    route = route_for(tmp_path, "", REMOTE_SSH_KEY="~/keys/ci")
    assert route.target.key_files == [str(tmp_path / "keys" / "ci")]


def test_an_empty_remote_ssh_key_given_in_code_leaves_the_configs_keys(tmp_path):
    ci_key = key(tmp_path, "ci_key")
    path = tmp_path / "config"
    path.write_text(f"Host gpu\n    IdentityFile {ci_key}\n")
    settings = Settings.from_env({"SSH_CONFIG": str(path)}, remote_ssh_key="")
    target = resolve(settings, "gpu").target
    assert (target.key_files, target.key_from_setting) == ([ci_key], False)


# --- the rest of the route --------------------------------------------------------------------
def test_the_route_names_the_config_it_read_and_expands_known_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    route = route_for(tmp_path, "Host gpu\n    UserKnownHostsFile ~/kh\n")
    assert route.config_file == str(tmp_path / "config")
    assert route.known_hosts == str(tmp_path / "kh")
    assert route.host_key_policy == "accept-new"


def test_without_a_config_file_the_settings_alone_make_the_route(tmp_path):
    settings = Settings.from_env({"SSH_CONFIG": str(tmp_path / "absent"), "REMOTE_USER": "ci",
                                  "REMOTE_SSH_PORT": "2200"})
    route = resolve(settings, "10.0.0.9")
    assert route.target == Hop("10.0.0.9", "10.0.0.9", 2200, "ci", [])
    assert (route.jumps, route.config_file, route.proxy_command) == ([], "", "")


def test_proxy_jump_and_proxy_command_together_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(SettingsError) as info:
        route_for(tmp_path, "Host gpu\n    ProxyJump b\n    ProxyCommand nc %h %p\n")
    assert str(info.value) == (f"SSH_CONFIG {tmp_path / 'config'}: both ProxyJump and "
                               "ProxyCommand apply to gpu; keep one of them for this host")


# --- ports -------------------------------------------------------------------------------------
@pytest.mark.parametrize("port", ["1", "65535", "2222"])
def test_a_config_port_in_range_is_taken(tmp_path, port):
    route = route_for(tmp_path, f"Host gpu\n    Port {port}\n")
    assert route.target.port == int(port)


@pytest.mark.parametrize("port", ["1", "65535"])
def test_a_jump_port_in_range_is_taken(tmp_path, port):
    route = route_for(tmp_path, f"Host gpu\n    ProxyJump b:{port}\n")
    assert route.jumps[0].port == int(port)


@pytest.mark.parametrize("port", ["0", "65536", "-1", "22x", "2.5"])
def test_a_config_port_out_of_range_is_one_line_naming_host_and_file(tmp_path, port):
    with pytest.raises(SettingsError) as info:
        route_for(tmp_path, f"Host gpu\n    Port {port}\n")
    assert str(info.value) == (f"bad Port {port!r} for gpu in SSH_CONFIG {tmp_path / 'config'} "
                               "(accepted: a TCP port, 1-65535)")


@pytest.mark.parametrize("spec, config", [("b:0", ""), ("b:65536", ""),
                                          ("b", "Host b\n    Port 70000\n")])
def test_a_bad_jump_port_names_the_jump_host(tmp_path, spec, config):
    with pytest.raises(SettingsError) as info:
        route_for(tmp_path, f"Host gpu\n    ProxyJump {spec}\n{config}")
    bad = spec.partition(":")[2] or "70000"
    assert str(info.value) == (f"bad Port {bad!r} for b in SSH_CONFIG {tmp_path / 'config'} "
                               "(accepted: a TCP port, 1-65535)")


def test_remote_ssh_port_wins_over_a_bad_config_port(tmp_path):
    route = route_for(tmp_path, "Host gpu\n    Port twenty\n", REMOTE_SSH_PORT="2200")
    assert route.target.port == 2200


def test_a_keyword_the_harness_cannot_honour_names_the_host_and_the_file(tmp_path):
    with pytest.raises(SettingsError) as info:
        route_for(tmp_path, "Host gpu\n    HostKeyAlias other\n")
    assert str(info.value) == (f"SSH_CONFIG {tmp_path / 'config'}: hostkeyalias applies to gpu, "
                               "and the harness cannot honour it (it connects with paramiko)")


def test_a_bad_strict_host_key_checking_names_the_host_and_the_file(tmp_path):
    with pytest.raises(SettingsError) as info:
        route_for(tmp_path, "Host gpu\n    StrictHostKeyChecking maybe\n")
    assert str(info.value) == (
        f"bad StrictHostKeyChecking 'maybe' for gpu in SSH_CONFIG {tmp_path / 'config'} "
        "(accepted: yes, ask, accept-new, no, off)")
