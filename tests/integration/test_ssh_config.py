"""The remote host's OpenSSH client config (SPEC §3) and a changed host key, over the real test
sshd on 127.0.0.2 (tests/sshd.py): HostName, User, Port, IdentityFile and ProxyJump of the
matching `Host` block are used, REMOTE_USER/REMOTE_SSH_PORT/REMOTE_SSH_KEY win where set (even
when set to their default), and a re-imaged host is refused naming the known_hosts line."""
from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from harness.settings import Settings
from harness.hosts.ssh import SSHError, SSHHost
from tests.sshd import free_port, keygen

pytestmark = pytest.mark.ssh


@pytest.fixture
def config_settings(sshd, tmp_path):
    """Settings for REMOTE_IP=ci-remote with an SSH_CONFIG of this test's own; only the
    settings named in `env` are set (nothing of the user, port or key unless asked)."""
    config = tmp_path / "ssh_config"

    def build(text: str, **env: str) -> Settings:
        config.write_text(text)
        values = {"REMOTE_IP": "ci-remote", "LOCAL_IP": "127.0.0.1",
                  "SSH_CONFIG": str(config), "SSH_HOST_KEY_POLICY": "accept-new",
                  "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
                  "REMOTE_TEST_DIR": str(tmp_path / "remote_test_dir")}
        values.update({k: str(v) for k, v in env.items()})
        return Settings.from_env(values)
    return build


def block(alias: str, sshd, *, port: int | None = None, user: str | None = None,
          key: Path | None = None, jump: str | None = None) -> str:
    lines = [f"Host {alias}", f"    HostName {sshd.host}", f"    Port {port or sshd.port}",
             f"    User {user or sshd.user}", f"    IdentityFile {key or sshd.client_key}"]
    if jump:
        lines.append(f"    ProxyJump {jump}")
    return "\n".join(lines) + "\n"


def test_host_name_user_port_and_key_come_from_the_config(config_settings, sshd):
    settings = config_settings(block("ci-remote", sshd))
    assert settings.remote_user == "root" and settings.remote_ssh_port == 22  # the defaults
    with SSHHost(settings, settings.remote_ip) as host:
        assert host.run(["id", "-un"]).output.strip() == sshd.user
        assert host.target == f"{sshd.host}:{sshd.port}"
    assert host.address == "ci-remote"          # what servers bind and URLs name is unchanged


def test_set_settings_win_over_the_config_even_at_their_default_value(config_settings, sshd,
                                                                      tmp_path):
    dead = free_port(sshd.host)
    stranger = keygen(tmp_path / "stranger", "not authorized")
    wrong = block("ci-remote", sshd, port=dead, user="nobody", key=stranger)
    # REMOTE_USER=root is the default value, set on purpose: it must win over `User nobody`.
    settings = config_settings(wrong, REMOTE_USER="root", REMOTE_SSH_PORT=sshd.port,
                               REMOTE_SSH_KEY=sshd.client_key)
    with SSHHost(settings, settings.remote_ip) as host:
        assert host.run(["id", "-un"]).output.strip() == "root"
    # ...and a setting left unset takes the config's value: here the dead port.
    settings = config_settings(wrong, REMOTE_USER="root", REMOTE_SSH_KEY=sshd.client_key)
    with pytest.raises(SSHError, match=f"cannot reach {sshd.host}:{dead} over SSH"):
        SSHHost(settings, settings.remote_ip).run(["true"])


def test_proxy_jump_goes_through_the_jump_host(config_settings, sshd):
    text = block("ci-remote", sshd, jump="jumpbox") + block("jumpbox", sshd)
    settings = config_settings(text)
    with SSHHost(settings, settings.remote_ip) as host:
        assert host.run(["echo", "behind"]).output.strip() == "behind"
        # The target's connection rides a channel of the jump host's, not a socket of ours.
        assert isinstance(host._client.get_transport().sock, paramiko.Channel)
        assert host.connects == 1
    # The target itself is reachable directly; a dead jump host still stops the connection.
    dead = free_port(sshd.host)
    settings = config_settings(block("ci-remote", sshd, jump="jumpbox")
                               + block("jumpbox", sshd, port=dead))
    with pytest.raises(SSHError, match=f"cannot reach {sshd.host}:{dead} over SSH"):
        SSHHost(settings, settings.remote_ip).run(["true"])


def test_proxy_command_carries_the_connection(config_settings, sshd, tmp_path):
    """ProxyCommand is honoured, not skipped for a direct connection: the command (run by the
    shell, its %h and %p expanded) is the connection's socket."""
    ran = tmp_path / "proxy-command-ran"
    relay = (f"touch {ran}; exec 3<>/dev/tcp/%h/%p; cat <&3 & exec cat >&3")
    text = block("ci-remote", sshd) + f"    ProxyCommand bash -c '{relay}'\n"
    settings = config_settings(text)
    with SSHHost(settings, settings.remote_ip) as host:
        assert host.run(["echo", "proxied"]).output.strip() == "proxied"
        assert isinstance(host._client.get_transport().sock, paramiko.ProxyCommand)
    assert ran.exists()


@pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed"])
def test_a_changed_host_key_names_the_file_the_line_and_the_setting(config_settings, sshd,
                                                                    tmp_path, hashed):
    other = keygen(tmp_path / "other_host_key", "the host before it was re-imaged")
    name = sshd.known_hosts_name
    if hashed:
        name = paramiko.HostKeys.hash_host(name)
    known = tmp_path / "known_hosts"
    stale = f"{name} {Path(f'{other}.pub').read_text().strip()}\n"
    known.write_text(f"# hosts\nsomewhere.example ssh-ed25519 {'A' * 68}\n{stale}")
    settings = config_settings(block("ci-remote", sshd))
    with pytest.raises(SSHError) as err:
        SSHHost(settings, settings.remote_ip).run(["true"])
    message = str(err.value)
    assert message.startswith(f"[host remote] host key of {sshd.host}:{sshd.port} has CHANGED")
    assert f"does not match line 3 of {known}" in message
    assert "SSH_HOST_KEY_POLICY=ignore to accept any key" in message
    assert f"ssh-keygen -R '{sshd.known_hosts_name}' -f {known}" in message
    assert known.read_text().endswith(stale)          # never a silent accept: file unchanged
