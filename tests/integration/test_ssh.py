"""The remote host over a real sshd on 127.0.0.2 (tests/sshd.py): exec, files, project sync,
host-key policies, login and reach failures, a dropped connection, and a remote server's whole
life (spawn, ready over HTTP, log copied back, stop)."""
from __future__ import annotations

import os
import stat
import threading
import uuid
import time
from pathlib import Path

import pytest

from harness.errors import CommandFailed, HarnessError
from harness.results.steps import Skipped
from harness.hosts.nodes import HostNode, local_group_alive
from harness.servers.server import Server, http_session, sglang_ready, start_all
from harness.hosts.ssh import SSHError, SSHHost
from tests.sshd import Sshd, free_port, keygen

pytestmark = pytest.mark.ssh


@pytest.fixture
def settings(remote_settings):
    return remote_settings()


@pytest.fixture
def host(settings):
    remote = SSHHost(settings, settings.remote_ip)
    yield remote
    remote.close()


def processes_with(marker: str) -> list[int]:
    """PIDs on this machine (the remote host too) whose command line holds `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


# --- commands ----------------------------------------------------------------------------------
def test_exec_output_exit_status_env_cwd_and_one_connection(host, tmp_path):
    done = host.run(["bash", "-c", 'echo "out $A"; echo err >&2; pwd'], env={"A": "x y;$z"},
                    cwd=tmp_path)
    # stdout and stderr come through separate pipes of sshd: their order is not kept
    assert done.ok and sorted(done.output.splitlines()) == sorted(["out x y;$z", "err",
                                                                    str(tmp_path)])
    assert host.run(["bash", "-c", "exit 3"], check=False).exit_code == 3
    with pytest.raises(CommandFailed) as err:
        host.run(["bash", "-c", "echo boom; exit 7"])
    assert err.value.exit_code == 7 and err.value.host == "remote"
    assert "boom" in err.value.details()
    assert host.run(["no-such-command-xyz"], check=False).exit_code == 127
    host.write_text(tmp_path / "f.txt", "x")
    assert host.exists(tmp_path / "f.txt")
    assert host.connects == 1          # one connection for every command and file operation


def test_exec_timeout_reports_and_kills_the_remote_command(host):
    marker = "31.4159"
    started = time.monotonic()
    with pytest.raises(CommandFailed) as err:
        host.run(["sleep", marker], timeout=0.5)
    assert err.value.exit_code is None and "timed out" in str(err.value)
    assert time.monotonic() - started < 4
    deadline = time.monotonic() + 3
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_with(marker)
    assert host.run(["true"]).ok        # the connection is still good


# --- files -------------------------------------------------------------------------------------
def test_files_put_get_and_trees(host, tmp_path):
    remote = tmp_path / "remote"
    host.mkdir(remote / "a" / "b")
    host.mkdir(remote / "a" / "b")                       # there already: fine
    host.write_text(remote / "a" / "log.txt", "line1\nline2\n")
    assert host.read_text(remote / "a" / "log.txt") == "line1\nline2\n"
    assert host.read_tail(remote / "a" / "log.txt", 6) == "line2\n"
    assert host.read_tail(remote / "nope") == ""
    text, offset = host.read_from(remote / "a" / "log.txt", 0)
    assert (text, offset) == ("line1\nline2\n", 12)
    assert host.read_from(remote / "a" / "log.txt", offset) == ("", 12)
    assert host.read_from(remote / "nope", 5) == ("", 5)
    with pytest.raises(FileNotFoundError):
        host.read_text(remote / "nope")
    assert not list(remote.glob("a/.*.tmp"))                # atomic write left no temp file

    local = tmp_path / "local.bin"
    local.write_bytes(bytes(range(256)) * 1000)
    host.put(local, remote / "up" / "x.bin")
    host.get(remote / "up" / "x.bin", tmp_path / "down" / "x.bin")
    assert (tmp_path / "down" / "x.bin").read_bytes() == local.read_bytes()

    out = tmp_path / "copied"
    (out / "a").mkdir(parents=True)
    (out / "a" / "local_only.log").write_text("kept")
    copied = host.get_tree(remote / "a", out / "a")
    assert sorted(p.name for p in copied) == ["log.txt"]
    assert (out / "a" / "log.txt").read_text() == "line1\nline2\n"
    assert (out / "a" / "local_only.log").read_text() == "kept"
    assert host.get_tree(remote / "missing", out / "m") == []

    host.empty_dir(remote / "a")
    assert host.exists(remote / "a") and not host.exists(remote / "a" / "b")
    host.remove(remote)
    host.remove(remote)                                    # nothing there: fine
    assert not host.exists(remote)


def test_write_into_an_unwritable_place_is_one_clear_line(host, tmp_path):
    (tmp_path / "file").write_text("a file, not a dir")
    with pytest.raises(SSHError) as err:
        host.write_text(tmp_path / "file" / "sub" / "x.txt", "x")
    assert "cannot create directory" in str(err.value) and err.value.host == "remote"


def test_sync_project_wipes_first_and_leaves_out_what_it_must(host, settings, tmp_path):
    tree = tmp_path / "project"
    for rel in ("harness/x.py", "sim/site/a.py", "run/whls/mooncake_transfer_engine-0.1.whl",
                "run/.shrc", "run/logs/case/a.log", "run/pids/case/s.pid", ".git/config",
                ".venv/bin/python", ".nox/s/x", "harness/__pycache__/x.cpython-311.pyc",
                "stray.pyc", ".pytest_cache/v", "cases/c.py"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(rel)
    remote = settings.remote_test_dir
    host.mkdir(f"{remote}/old")
    host.write_text(f"{remote}/old/junk.txt", "from a previous run")

    host.sync_project(tree, remote, {"run/.shrc": "export BASE_DIR=/remote\n"})

    found = host.run(["find", ".", "-type", "f"], cwd=remote).output.split()
    # nothing of the local run/ (the wheel goes by its own step): only the rewritten .shrc
    assert sorted(found) == ["./cases/c.py", "./harness/x.py", "./run/.shrc", "./sim/site/a.py"]
    assert host.read_text(f"{remote}/run/.shrc") == "export BASE_DIR=/remote\n"
    assert not host.run(["bash", "-c", "ls /proc/self/cwd/../*.tar"], cwd=remote,
                        check=False).ok                    # the upload was cleaned away


def test_sync_refuses_what_the_remote_host_resolves_to_a_home_or_system_dir(host, settings,
                                                                           tmp_path):
    """The rule of the settings again, where the wipe happens: symlinks resolved on the remote
    host and its user's $HOME known there."""
    tree = tmp_path / "project"
    (tree / "harness").mkdir(parents=True)
    (tree / "harness" / "x.py").write_text("x")
    home = host.run(["bash", "-c", "cd ~ && pwd -P"]).output.strip()
    links = tmp_path / "links"
    links.mkdir()
    (links / "to-usr-lib").symlink_to("/usr/lib")
    (links / "to-home").symlink_to(home)
    for target in (links / "to-usr-lib", links / "to-home", links / "to-home" / ".ssh"):
        with pytest.raises(HarnessError, match="refusing to wipe"):
            host.sync_project(tree, str(target))
    assert os.path.isdir("/usr/lib") and os.path.isdir(home)


def test_log_reads_survive_bytes_that_are_not_utf8(host, tmp_path):
    log = tmp_path / "server.log"
    log.write_bytes(b"start \xff\xfe \xc3\x28 end\nready\n")
    assert host.read_tail(log) == "start \ufffd\ufffd \ufffd( end\nready\n"
    text, offset = host.read_from(log, 0)
    assert text.endswith("ready\n") and offset == log.stat().st_size
    assert "\ufffd" in host.read_text(log)


def test_a_command_without_a_timeout_gets_the_default_deadline(settings):
    host = SSHHost(settings, settings.remote_ip, default_timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(CommandFailed, match="timed out") as err:
            host.run(["sleep", "30"])
        assert time.monotonic() - started < 10
        assert err.value.exit_code is None
        # a status 124 of the command's own, well within the default, is its own
        assert host.run(["bash", "-c", "exit 124"], check=False).exit_code == 124
    finally:
        host.close()


# --- host keys, login, reach -------------------------------------------------------------------
def test_strict_refuses_an_unknown_host_key_with_the_hint(remote_settings, sshd, tmp_path):
    known = tmp_path / "strict_known_hosts"
    known.write_text("")
    host = SSHHost(remote_settings(SSH_HOST_KEY_POLICY="strict", SSH_KNOWN_HOSTS=known),
                   sshd.host)
    with pytest.raises(SSHError) as err:
        host.run(["true"])
    assert str(err.value) == (
        f"[host remote] host key of 127.0.0.2:{sshd.port} is not in {known} "
        f"(SSH_HOST_KEY_POLICY=strict); add it with ssh-keyscan -p {sshd.port} 127.0.0.2 >> "
        f"{known} or use accept-new")
    assert known.read_text() == ""
    known.write_text(f"{sshd.known_hosts_name} {sshd.host_key}\n")
    assert host.run(["true"]).ok            # known now: strict lets it through
    host.close()


def test_accept_new_records_the_key_then_refuses_a_changed_one(remote_settings, sshd, tmp_path):
    known = tmp_path / "dir" / "known_hosts"           # neither the file nor its dir exists
    settings = remote_settings(SSH_KNOWN_HOSTS=known)
    with SSHHost(settings, sshd.host) as host:
        assert host.run(["true"]).ok
    assert known.read_text().split()[:2] == [sshd.known_hosts_name, "ssh-ed25519"]
    assert known.read_text().split()[2] == sshd.host_key.split()[1]
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    with SSHHost(settings, sshd.host) as host:         # known now: no second line
        assert host.run(["true"]).ok
    assert len(known.read_text().splitlines()) == 1

    other = keygen(tmp_path / "other_host_key", "another host")
    known.write_text(f"{sshd.known_hosts_name} {Path(f'{other}.pub').read_text().strip()}\n")
    with pytest.raises(SSHError) as err:
        SSHHost(settings, sshd.host).run(["true"])
    message = str(err.value)
    assert message.startswith(f"[host remote] host key of 127.0.0.2:{sshd.port} has CHANGED")
    assert "SSH_HOST_KEY_POLICY=accept-new" in message
    assert f"ssh-keygen -R '[127.0.0.2]:{sshd.port}' -f {known}" in message
    assert "\n" not in message
    assert "another host" in known.read_text()          # the file is left as it was


def test_ignore_takes_any_key_and_records_nothing(remote_settings, sshd, tmp_path):
    other = keygen(tmp_path / "other_host_key", "another host")
    known = tmp_path / "known_hosts"
    line = f"{sshd.known_hosts_name} {Path(f'{other}.pub').read_text().strip()}\n"
    known.write_text(line)
    with SSHHost(remote_settings(SSH_HOST_KEY_POLICY="ignore", SSH_KNOWN_HOSTS=known),
                 sshd.host) as host:
        assert host.run(["true"]).ok
    assert known.read_text() == line


def test_wrong_key_or_user_is_refused_login(remote_settings, sshd, tmp_path):
    wrong = keygen(tmp_path / "wrong_key", "not authorized")
    for env, user in (({"REMOTE_SSH_KEY": wrong}, "root"),
                      ({"REMOTE_USER": "no-such-user"}, "no-such-user")):
        with pytest.raises(SSHError) as err:
            SSHHost(remote_settings(**env), sshd.host).run(["true"])
        assert str(err.value) == (
            f"[host remote] SSH login as {user}@127.0.0.2:{sshd.port} refused "
            "(wrong user or key; REMOTE_USER/REMOTE_SSH_KEY)")


def test_unreachable_port_is_reported_quickly(remote_settings, sshd):
    port = free_port("127.0.0.2")
    host = SSHHost(remote_settings(REMOTE_SSH_PORT=port), "127.0.0.2")
    started = time.monotonic()
    with pytest.raises(SSHError) as err:
        host.run(["true"])
    assert time.monotonic() - started < 3
    assert str(err.value) == (f"[host remote] cannot reach 127.0.0.2:{port} over SSH "
                              "(Connection refused)")
    assert "REMOTE_SSH_PORT" in err.value.details()


def test_connection_dropped_mid_command_names_the_host(remote_settings, tmp_path):
    with Sshd(tmp_path / "own_sshd") as own:
        host = SSHHost(remote_settings(own), own.host)
        assert host.run(["true"]).ok
        stopper = threading.Timer(0.5, own.stop)
        stopper.start()
        started = time.monotonic()
        try:
            with pytest.raises(SSHError) as err:
                host.run(["sleep", "30.2718"])
        finally:
            stopper.join()
            host.close()
    assert time.monotonic() - started < 5
    assert str(err.value).startswith(f"[host remote] SSH connection to 127.0.0.2:{own.port} "
                                     "lost during `sleep 30.2718`")
    assert not processes_with("30.2718")
    with pytest.raises(SSHError, match="cannot reach"):   # and later uses say why, too
        host.run(["true"])


# --- a remote server's whole life --------------------------------------------------------------
def remote_sim_server(node, name: str, case: str, log_name: str) -> Server:
    port = free_port("127.0.0.2")
    server = Server(name, node,
                    ["python3", "-m", "sglang.launch_server", "--model-path", "sim-model",
                     "--host", "127.0.0.2", "--port", str(port)],
                    case, node.layout.model_logs(case, "Org/Model") / log_name,
                    sglang_ready(30, 30), address="127.0.0.2", port=port,
                    env={"HARNESS_SIM": "true", "HARNESS_SIM_STARTUP_S": "0.3"},
                    pythonpath=[str(node.layout.sim_site)])
    return server


def test_remote_host_node_spawns_waits_copies_logs_and_stops(host, settings, project, tmp_path):
    remote_root = settings.remote_test_dir
    host.sync_project(project, remote_root)
    node = HostNode(host, remote_root, "remote")
    case = "test_remote_sim"
    # two servers waited for at once: threads share the one connection (exec + SFTP)
    servers = [remote_sim_server(node, "decode", case, "sglang_server_remote.log"),
               remote_sim_server(node, "prefill", case, "sglang_server_prefill.log")]
    try:
        started = time.monotonic()
        start_all(servers)
        assert time.monotonic() - started < 10
        pgids = [server.proc.pgid for server in servers]
        assert all(node.alive(pgid) for pgid in pgids)
        answer = http_session().post(f"http://127.0.0.2:{servers[0].port}/generate",
                                     json={"text": "Let me tell you a short story "}, timeout=10)
        assert answer.status_code == 200 and answer.json()["text"]
        local_logs = tmp_path / "local_run" / "logs" / case
        copied = host.get_tree(node.layout.case_logs(case), local_logs)
        assert [p.relative_to(local_logs).as_posix() for p in copied] == [
            "Org__Model/sglang_server_prefill.log", "Org__Model/sglang_server_remote.log"]
        assert all("fired up and ready to roll" in p.read_text() for p in copied)
    finally:
        for server in servers:
            server.stop(5)
    assert not any(node.alive(pgid) or local_group_alive(pgid) for pgid in pgids)
    assert not host.exists(node.layout.pid_file(case, "decode"))
    assert node.stop_all(None, 5) == []                   # nothing left behind
    assert host.connects == 1
    host.remove(remote_root)


def test_harness_errors_stay_harness_errors():
    assert issubclass(SSHError, HarnessError)


# --- the remote container node: the docker CLI over the same connection -------------------------
TEST_OFF = {"CONTAINER_PRIVILEGED": "false", "CONTAINER_MEMLOCK": "0", "CONTAINER_GPUS": "none",
            "CONTAINER_SHM_SIZE": "1g", "IMAGE_PULL": "never", "INSTALL_ERDMA": "false"}


@pytest.fixture
def remote_node(remote_settings, docker_client, test_image, tmp_path, project):
    """The remote container node, its container named mh-test-remote-<random>; removed (any
    state) afterwards."""
    from harness.containers.node import remote_container_node
    suffix = uuid.uuid4().hex[:10]
    settings = remote_settings(REMOTE_CONTAINER_NAME=f"mh-test-remote-{suffix}",
                               CONTAINER_NAME=f"mh-test-local-{suffix}",
                               MODEL_CACHE=tmp_path / "cache",
                               RDMA_DEVICES="/dev/zero,/dev/mh-test-no-such-device",
                               REGISTRY_ADDR_SGLANG=test_image, **TEST_OFF)
    host = SSHHost(settings, settings.remote_ip)
    host.sync_project(project, settings.remote_test_dir)
    node = remote_container_node(settings, host)
    node.run_id = f"mh-test-{suffix}"
    try:
        yield node
    finally:
        host.close()
        for container in docker_client.containers.list(all=True):
            if container.name == node.container_name or \
                    container.labels.get("mooncake-harness.run-id") == node.run_id:
                container.remove(force=True)


@pytest.mark.docker
def test_remote_container_start_exec_serve_reset_remove(remote_node, docker_client, test_image):
    node, host = remote_node, remote_node.host
    assert node.ping()
    assert isinstance(node.pull(test_image, "never"), Skipped)  # present: nothing to pull
    with pytest.raises(HarnessError, match="no-such-tag is not present and IMAGE_PULL=never"):
        node.pull("mooncake-harness-test:no-such-tag", "never")
    # a leftover stuck in `created` under this name is replaced
    docker_client.containers.create(test_image, name=node.container_name, entrypoint=["true"])
    node.start(test_image, node.run_id)
    assert node.running()
    attrs = docker_client.containers.get(node.container_name).attrs
    assert attrs["Config"]["Labels"]["mooncake-harness.run-id"] == node.run_id
    assert attrs["HostConfig"]["Init"] is True and attrs["HostConfig"]["NetworkMode"] == "host"
    assert f"{node.settings.remote_test_dir}:/test_run" in attrs["HostConfig"]["Binds"]
    assert [d["PathOnHost"] for d in attrs["HostConfig"]["Devices"]] == ["/dev/zero"]

    assert node.exec(["bash", "-c", "ulimit -s; ls /test_run/sim/site"]).output.split()[0] \
        == "65536"
    with pytest.raises(CommandFailed) as err:
        node.exec(["bash", "-c", "echo nope; exit 3"])
    assert err.value.exit_code == 3 and err.value.host == "remote"
    with pytest.raises(CommandFailed, match="timed out"):
        node.exec(["sleep", "30"], timeout=0.5)

    port = free_port("127.0.0.2")
    server = Server("decode", node,
                    ["python3", "-m", "sglang.launch_server", "--model-path", "sim-model",
                     "--host", "127.0.0.2", "--port", str(port)],
                    "c1", node.layout.case_logs("c1") / "sglang_server_remote.log",
                    sglang_ready(30, 30), address="127.0.0.2", port=port,
                    env={"HARNESS_SIM": "true", "HARNESS_SIM_STARTUP_S": "0.3"},
                    pythonpath=[str(node.layout.sim_site)])
    try:
        server.start()
        server.wait_ready()
        pgid = server.proc.pgid
        assert http_session().get(f"http://127.0.0.2:{port}/health", timeout=5).status_code == 200
        remote_log = f"{node.settings.remote_test_dir}/run/logs/c1/sglang_server_remote.log"
        assert "ready to roll" in host.read_text(remote_log)
    finally:
        server.stop(5)
    assert not node.alive(pgid)

    sleeper = node.spawn("sleeper", ["sleep", "300"], case="c2",
                         log=node.layout.case_logs("c2") / "sleeper.log")
    node.reset(timeout_s=5)
    assert node.running() and not node.alive(sleeper.pgid)
    assert not host.exists(node.on_host(sleeper.pid_file))

    node.stop_container()
    assert not node.running()
    node.remove()
    assert node.status() is None
    assert host.connects == 1


@pytest.mark.docker
def test_remote_container_refused_start_leaves_nothing(remote_node, docker_client, test_image):
    import shutil
    if shutil.which("nvidia-container-runtime") or shutil.which("nvidia-ctk"):
        pytest.skip("this host has the NVIDIA container runtime")
    node = remote_node
    node.settings = node.settings.replace(container_gpus="all")
    with pytest.raises(HarnessError) as err:
        node.start(test_image, node.run_id)
    assert "CONTAINER_GPUS=none" in err.value.hint and "\n" not in str(err.value)
    assert err.value.host == "remote"
    assert node.status() is None            # the `created` container was removed
    assert node.remove_leftovers(node.run_id) == []


@pytest.mark.docker
def test_remote_engine_not_answering_is_one_line(remote_node, test_image):
    from harness.errors import DockerError
    from harness.containers.node import remote_container_node
    node = remote_container_node(remote_node.settings, remote_node.host, docker_cli=(
        "docker", "--host", "unix:///nonexistent/docker.sock"))
    for call in (node.ping, lambda: node.start(test_image, "mh-test-x")):
        with pytest.raises(DockerError) as err:
            call()
        assert str(err.value).startswith(
            "[host remote] Docker engine on 127.0.0.2 not reachable (")
        assert "\n" not in str(err.value)
