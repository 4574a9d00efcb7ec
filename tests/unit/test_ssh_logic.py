"""SSHHost and the remote container node (docker CLI) logic without a server: command lines,
the sync filter and tarball, host-key recording, and the one-line errors for each connect
failure (fake clients)."""
from __future__ import annotations

import shlex
import socket
import stat
import tarfile

import paramiko
import pytest

from harness.errors import CommandFailed, DockerError, HarnessError
from harness.hosts.local import Completed
from harness.containers.node import ContainerNode, remote_container_node
from harness.containers.docker_cli import daemon_error
from harness.settings import Settings
from harness.hosts.ssh import SSHError, SSHHost, remote_command
from harness.hosts.ssh_keys import AcceptNewPolicy, UnknownHostKey, known_hosts_name
from harness.hosts.sync_tree import build_tarball, sync_excluded
from harness.wipe import check_wipeable, wipe_refusal


def settings(**env) -> Settings:
    base = {"REMOTE_IP": "127.0.0.2", "REMOTE_SSH_PORT": "2222", "REMOTE_USER": "ci",
            "SSH_KNOWN_HOSTS": "/nonexistent/known_hosts", "REMOTE_CONTAINER_NAME": "rc",
            "SSH_CONFIG": "/nonexistent/ssh_config",
            "REMOTE_TEST_DIR": "/srv/mooncake/ci"}
    return Settings.from_env({**base, **{k: str(v) for k, v in env.items()}})


# --- command lines -----------------------------------------------------------------------------
def test_remote_command_quotes_every_value():
    line = remote_command(["echo", "a b", "$HOME"], env={"X": "1 2"}, cwd="/tmp/my dir",
                          timeout=2.5)
    assert line == ("cd '/tmp/my dir' && timeout -k 5 2.5 env 'X=1 2' echo 'a b' '$HOME'")
    assert shlex.split(line.split("&& ", 1)[1])[-2:] == ["a b", "$HOME"]
    assert remote_command(["true"]) == "true"


# --- what goes to the remote host --------------------------------------------------------------
@pytest.mark.parametrize("path, excluded", [
    (".git/config", True), ("run/logs/c/x.log", True), ("run/pids/c/s.pid", True),
    (".venv/bin/python", True), (".nox/tests", True), ("harness/__pycache__/x.pyc", True),
    ("a.pyc", True), (".pytest_cache/v", True), ("run/logs", True),
    # all of run/: the wheel step rewrites run/whls while the remote host is synced
    ("run", True), ("run/whls/mooncake_transfer_engine-1.whl", True), ("run/.shrc", True),
    ("harness/hosts/ssh.py", False), ("runx/a", False), ("sim/site/sglang/x.py", False),
    ("cases/run/x.py", False),
])
def test_sync_filter(path, excluded):
    assert sync_excluded(path) is excluded


@pytest.mark.parametrize("path", [
    "/", "/tmp", "/root/", "relative/dir", "", "~", "~/.ssh", "/usr", "/usr/lib", "/usr/local/x",
    "/etc", "/etc/ssh/x", "/bin", "/lib", "/var", "/var/lib/docker", "/boot", "/boot/efi/x",
    "/root", "/root/.ssh", "/root/.cache/huggingface", "/home", "/home/ci", "/home/ci/.ssh",
    "/home/ci/.ssh/keys", "/proc/1", "/sys/fs/x", "/dev/shm/x", "//usr/lib", "/tmp/../usr/lib",
    "/run/user/0",
])
def test_wipe_refuses_system_home_shallow_or_relative_dirs(path):
    with pytest.raises(HarnessError, match="refusing to wipe"):
        check_wipeable(path)
    assert wipe_refusal(path)


@pytest.mark.parametrize("path", ["/tmp/Mooncake_tone/mooncake_ci_test/", "/srv/mooncake/ci",
                                  "/home/ci/mooncake_ci", "/root/mooncake_ci", "/var/tmp/ci/x",
                                  "/data/ci"])
def test_wipe_accepts_dirs_of_their_own(path):
    assert wipe_refusal(path) is None
    assert check_wipeable(path) == path.rstrip("/")


def test_wipe_knows_the_users_home_wherever_it_lives():
    assert wipe_refusal("/data/u", home="/data/u")            # the home itself
    assert wipe_refusal("/data/u/.config/x", home="/data/u")  # its dot-dirs
    assert wipe_refusal("/data", home="/data/u/")              # above it (and top-level)
    assert wipe_refusal("/data/u/ci", home="/data/u") is None


def test_tarball_leaves_out_caches_and_run_and_takes_extra_files(tmp_path):
    root = tmp_path / "p"
    for rel in ("harness/a.py", "harness/__pycache__/a.pyc", ".git/HEAD", "run/logs/x",
                "run/.shrc", "run/whls/m.whl"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    out = tmp_path / "t.tar"
    build_tarball(root, out, {"run/.shrc": "export BASE_DIR=/r\n", "new/dir/f.txt": b"x"})
    with tarfile.open(out) as tar:
        names = sorted(tar.getnames())
        assert tar.extractfile("run/.shrc").read() == b"export BASE_DIR=/r\n"
    assert names == ["harness", "harness/a.py", "new", "new/dir", "new/dir/f.txt", "run",
                     "run/.shrc"]


def test_a_file_vanishing_while_packing_is_one_harness_error(tmp_path, monkeypatch):
    """The race of the issue: an entry listed, then removed before tar reads it."""
    root = tmp_path / "p"
    (root / "harness").mkdir(parents=True)
    (root / "harness" / "a.py").write_text("a")
    doomed = root / "harness" / "vanishing.py"
    doomed.write_text("b")
    real = tarfile.TarFile.gettarinfo

    def racing(self, name=None, arcname=None, fileobj=None):
        if str(name) == str(doomed):
            doomed.unlink()                       # gone between listdir and lstat
        return real(self, name, arcname, fileobj)
    monkeypatch.setattr(tarfile.TarFile, "gettarinfo", racing)
    with pytest.raises(HarnessError, match="cannot pack the project tree .*vanishing.py"):
        build_tarball(root, tmp_path / "t.tar")


# --- host keys ---------------------------------------------------------------------------------
def test_known_hosts_names():
    assert known_hosts_name("10.1.2.3", 22) == "10.1.2.3"
    assert known_hosts_name("127.0.0.2", 2222) == "[127.0.0.2]:2222"


class FakeClient:
    """Stands in for paramiko.SSHClient: connect raises what the test says."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.raises = raises
        self.host_keys = paramiko.HostKeys()
        self.policy = None
        self.closed = False
        self.kwargs = None

    def get_host_keys(self):
        return self.host_keys

    def set_missing_host_key_policy(self, policy):
        self.policy = policy

    def connect(self, **kwargs):
        self.kwargs = kwargs
        if self.raises is not None:
            raise self.raises

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def rsa_keys():
    return paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)


def test_accept_new_records_an_unknown_key(tmp_path, rsa_keys):
    path = tmp_path / "new" / "known_hosts"
    client = FakeClient()
    AcceptNewPolicy(path).missing_host_key(client, "[127.0.0.2]:2222", rsa_keys[0])
    assert path.read_text() == f"[127.0.0.2]:2222 ssh-rsa {rsa_keys[0].get_base64()}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert client.host_keys.lookup("[127.0.0.2]:2222")["ssh-rsa"] == rsa_keys[0]


def connect_error(exc: BaseException, **env) -> SSHError:
    client = FakeClient(exc)
    host = SSHHost(settings(**env), "127.0.0.2", client_factory=lambda: client)
    with pytest.raises(SSHError) as err:
        host.run(["true"])
    assert client.closed and host.connects == 1
    assert err.value.host == "remote" and "\n" not in str(err.value)
    return err.value


def test_connect_failures_are_one_line_each(rsa_keys, tmp_path):
    refused = paramiko.ssh_exception.NoValidConnectionsError(
        {("127.0.0.2", 2222): ConnectionRefusedError(111, "Connection refused")})
    assert str(connect_error(refused)) == \
        "[host remote] cannot reach 127.0.0.2:2222 over SSH (Connection refused)"
    assert str(connect_error(socket.timeout("timed out"))) == \
        "[host remote] cannot reach 127.0.0.2:2222 over SSH (connection timed out)"
    assert str(connect_error(paramiko.AuthenticationException("no"))) == (
        "[host remote] SSH login as ci@127.0.0.2:2222 refused (wrong user or key; "
        "REMOTE_USER/REMOTE_SSH_KEY)")
    known = tmp_path / "kh"
    assert str(connect_error(UnknownHostKey("x"), SSH_HOST_KEY_POLICY="strict",
                             SSH_KNOWN_HOSTS=known)) == (
        f"[host remote] host key of 127.0.0.2:2222 is not in {known} "
        f"(SSH_HOST_KEY_POLICY=strict); add it with ssh-keyscan -p 2222 127.0.0.2 >> {known} "
        "or use accept-new")
    changed = connect_error(paramiko.BadHostKeyException("127.0.0.2", *rsa_keys),
                            SSH_KNOWN_HOSTS=known)
    assert str(changed).startswith("[host remote] host key of 127.0.0.2:2222 has CHANGED")
    assert str(changed).endswith(f"if the host was really reinstalled, remove that line "
                                 f"with ssh-keygen -R '[127.0.0.2]:2222' -f {known}, or set "
                                 "SSH_HOST_KEY_POLICY=ignore to accept any key")
    assert "handshake" in str(connect_error(paramiko.SSHException("Error reading banner")))


def test_missing_key_file_is_named(tmp_path):
    host = SSHHost(settings(REMOTE_SSH_KEY=tmp_path / "nope"), "127.0.0.2",
                   client_factory=FakeClient)
    with pytest.raises(SSHError, match=f"REMOTE_SSH_KEY {tmp_path}/nope does not exist"):
        host.run(["true"])


def test_policies_and_key_options(tmp_path):
    key = tmp_path / "id"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(key))
    made = []

    def factory():
        made.append(FakeClient(paramiko.AuthenticationException("x")))
        return made[-1]
    for policy, kind in (("strict", paramiko.RejectPolicy), ("accept-new", AcceptNewPolicy),
                         ("ignore", paramiko.AutoAddPolicy)):
        host = SSHHost(settings(SSH_HOST_KEY_POLICY=policy, REMOTE_SSH_KEY=key), "127.0.0.2",
                       client_factory=factory)
        with pytest.raises(SSHError):
            host.exists("/x")
        assert isinstance(made[-1].policy, kind)
    kwargs = made[-1].kwargs
    assert kwargs["key_filename"] == str(key) and kwargs["allow_agent"] is False
    assert kwargs["port"] == 2222 and kwargs["username"] == "ci" and kwargs["timeout"] == 15


def test_unusable_key_file_is_named(tmp_path):
    key = tmp_path / "id"
    key.write_text("this is not a key\n")
    host = SSHHost(settings(REMOTE_SSH_KEY=key), "127.0.0.2", client_factory=FakeClient)
    with pytest.raises(SSHError, match=f"cannot use REMOTE_SSH_KEY {key} as a private key"):
        host.run(["true"])


def test_nothing_connects_before_first_use():
    made = []
    host = SSHHost(settings(), "127.0.0.2", client_factory=lambda: made.append(1))
    host.close()
    host.close()
    assert made == [] and host.connects == 0


# --- the remote container node over a fake host ------------------------------------------------
class FakeHost:
    name, address = "remote", "127.0.0.2"

    def __init__(self, *answers: tuple[int, str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[str], float | None]] = []

    def run(self, argv, *, timeout=None, check=True, env=None, cwd=None):
        self.calls.append((list(argv), timeout))
        code, output = self.answers.pop(0) if self.answers else (0, "")
        if code is None:
            raise CommandFailed(argv, None, output, host=self.name)
        return Completed(list(argv), code, output)

    def exists(self, path):
        return path == "/dev/zero"


def node(*answers) -> ContainerNode:
    return remote_container_node(settings(RDMA_DEVICES="/dev/zero,/dev/nope",
                                        CONTAINER_GPUS="none"), FakeHost(*answers))


def test_daemon_error_words():
    assert daemon_error("Error response from daemon: No such container: rc\n")
    assert daemon_error("Cannot connect to the Docker daemon at unix:///x.sock. Is the docker "
                        "daemon running?")
    assert daemon_error("pytest output\n1 failed\n") is None


def test_engine_down_is_a_docker_error():
    down = node((1, "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                    "Is the docker daemon running?\n"))
    with pytest.raises(DockerError) as err:
        down.ping()
    assert str(err.value).startswith("[host remote] Docker engine on 127.0.0.2 not reachable")
    with pytest.raises(DockerError, match="no docker CLI on 127.0.0.2"):
        node((127, "bash: docker: command not found")).ping()


def test_start_runs_the_spec_argv_and_checks_it_runs():
    fake = node((0, ""), (0, "abc123\n"), (0, "running\n"))
    fake.start("img:1", "run-1")
    rm, run, inspect = (argv for argv, _ in fake.host.calls)
    assert rm == ["docker", "rm", "-f", "rc"]
    assert run[:6] == ["docker", "run", "--detach", "--name", "rc", "--init"]
    assert "--device=/dev/zero:/dev/zero:rwm" in run and "/dev/nope" not in " ".join(run)
    assert "-v" in run and "/srv/mooncake/ci:/test_run" in run
    assert run[-4:] == ["--entrypoint=bash", "img:1", "-c", "hostname; exec sleep infinity"]
    assert inspect[:3] == ["docker", "container", "inspect"]


def test_failed_start_removes_what_was_created():
    fake = node((0, ""), (125, "docker: Error response from daemon: could not select device "
                               "driver \"\" with capabilities: [[gpu]].\n"), (0, ""))
    with pytest.raises(DockerError) as err:
        fake.start("img:1", "run-1")
    assert "CONTAINER_GPUS=none" in err.value.hint
    assert fake.host.calls[-1][0] == ["docker", "rm", "-f", "rc"]


def test_exec_codes_timeouts_and_a_missing_container():
    ok = node((0, "hi\n"))
    assert ok.exec(["echo", "hi"], timeout=5).output == "hi\n"
    argv, timeout = ok.host.calls[0]
    assert argv == ["docker", "exec", "rc", "timeout", "-k", "5", "5", "echo", "hi"]
    assert timeout == 40
    with pytest.raises(CommandFailed) as err:
        node((124, "")).exec(["sleep", "9"], timeout=1)
    assert err.value.exit_code is None
    with pytest.raises(CommandFailed) as err:
        node((3, "Error: not a daemon line\n")).exec(["false"])
    assert err.value.exit_code == 3 and err.value.host == "remote"
    with pytest.raises(DockerError, match="cannot exec in container rc on 127.0.0.2"):
        node((1, "Error response from daemon: No such container: rc\n")).exec(["true"])
