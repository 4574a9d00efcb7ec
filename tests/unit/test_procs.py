"""The marker sweep and the PID-file trust check, on real processes of this machine.

Each test marks its processes with an owner of its own (a tmp dir), so nothing else is touched.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest

from harness.hosts import procs
from harness.hosts.local import LocalHost
from harness.hosts.nodes import HostNode, read_pid_file

ROOT = Path(__file__).resolve().parents[2]


def start(owner: Path | None = None, run: str = "", case: str = "", script: str = "sleep 60"
          ) -> subprocess.Popen:
    """A process in its own session, marked as `owner`/`run`/`case` (unmarked without owner)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    if owner:
        env.update(procs.marker(str(owner), run or None, case or None))
    return subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def gone(proc: subprocess.Popen, timeout_s: float = 5.0) -> bool:
    try:
        proc.wait(timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture
def started():
    kept: list[subprocess.Popen] = []

    def keep(*args, **kw) -> subprocess.Popen:
        kept.append(start(*args, **kw))
        return kept[-1]
    yield keep
    for proc in kept:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def node_for(owner: Path, run_id: str | None = None) -> HostNode:
    node = HostNode(LocalHost(), owner)
    node.run_id = run_id
    return node


def test_sweep_stops_exactly_the_scope_it_is_given(tmp_path, started):
    owner, other_owner = tmp_path / "checkout", tmp_path / "other-checkout"
    this_case = started(owner, "r1", "c1")
    other_case = started(owner, "r1", "c2")
    earlier_run = started(owner, "r0", "c1")
    other_checkout = started(other_owner, "r1", "c1")
    unmarked = started()
    node = node_for(owner, "r1")

    found = node.sweep(case="c1", run_id="r1", timeout_s=5)
    assert [entry.split()[0] for entry in found] == [str(this_case.pid)]
    assert "sleep 60" in found[0] or "bash" in found[0]
    assert gone(this_case)
    assert all(p.poll() is None for p in (other_case, earlier_run, other_checkout, unmarked))

    found = node.sweep(other_than="r1", timeout_s=5)     # a run's start: earlier runs only
    assert [entry.split()[0] for entry in found] == [str(earlier_run.pid)]
    assert gone(earlier_run) and other_case.poll() is None

    assert node.sweep(timeout_s=5)                        # invoke clean: every run of the owner
    assert gone(other_case)
    assert other_checkout.poll() is None and unmarked.poll() is None
    assert node.sweep(timeout_s=5) == []


def test_sweep_reaches_children_in_new_sessions_and_kills_what_ignores_term(tmp_path, started):
    owner = tmp_path / "checkout"
    pid_file = tmp_path / "escaped.pid"
    # The parent starts a child in a session of its own (as the HiCache payload starts the
    # Mooncake master), and the child ignores TERM.
    parent = started(owner, "r1", "c1",
                     f"setsid bash -c 'trap \"\" TERM; echo $$ > {pid_file}; "
                     f"while :; do sleep 0.1; done' & sleep 60")
    deadline = time.monotonic() + 5
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child = int(pid_file.read_text())
    assert os.getsid(child) != os.getsid(parent.pid)

    started_at = time.monotonic()
    found = node_for(owner, "r1").sweep(run_id="r1", timeout_s=0.5)
    assert time.monotonic() - started_at < 5
    assert gone(parent)
    assert any(entry.startswith(f"{child} ") and entry.endswith("(killed)") for entry in found)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text()


def test_the_sweep_never_stops_itself_or_the_harness(tmp_path):
    """A harness that carries the marker itself (started by a marked process) sweeps the others
    and lives on."""
    owner = tmp_path / "checkout"
    code = ("import sys; from harness.hosts.local import LocalHost;"
            " from harness.hosts.nodes import HostNode;"
            f"print(HostNode(LocalHost(), {str(owner)!r}).sweep(timeout_s=2))")
    env = {**os.environ, **procs.marker(str(owner), "r1", "c1"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_spawned_processes_carry_the_marker_and_record_their_start_time(tmp_path):
    node = node_for(tmp_path, "r7")
    log = PurePosixPath(tmp_path / "run/logs/c1/srv.log")
    proc = node.spawn("srv", ["sleep", "60"], case="c1", log=log)
    try:
        environ = Path(f"/proc/{proc.pgid}/environ").read_bytes().split(b"\0")
        assert f"HARNESS_OWNER={tmp_path}".encode() in environ
        assert b"HARNESS_RUN_ID=r7" in environ and b"HARNESS_CASE=c1" in environ
        stat = Path(f"/proc/{proc.pgid}/stat").read_text().rpartition(") ")[2].split()
        recorded = read_pid_file((tmp_path / "run/pids/c1/srv.pid").read_text())
        assert recorded == (proc.pgid, stat[19]) and proc.start == stat[19]
    finally:
        assert node.stop(proc, 5) is False
    assert not node.alive(proc.pgid)


@pytest.mark.parametrize("content,marked", [("{pid} 1", False), ("{pid}", False),
                                            ("{pid} 1", True)],
                         ids=["wrong-start-time", "old-format", "marked-but-wrong-start-time"])
def test_a_pid_file_naming_an_unrelated_process_is_not_signalled(tmp_path, started, content,
                                                                  marked, caplog):
    # What got the recorded number after a reboot: unmarked, or a process of another run of
    # this checkout (its start time tells it apart).
    unrelated = started(tmp_path, "r0", "c2") if marked else started()
    pid_file = tmp_path / "run/pids/c1/srv.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(content.format(pid=unrelated.pid) + "\n")
    node = node_for(tmp_path, "r1")
    assert node.stop_all("c1", 2) == []
    time.sleep(0.2)
    assert unrelated.poll() is None
    assert not pid_file.exists()
    assert "stale PID file" in caplog.text


def test_a_pid_file_of_this_run_is_trusted(tmp_path):
    node = node_for(tmp_path, "r1")
    proc = node.spawn("srv", ["sleep", "60"], case="c1",
                      log=PurePosixPath(tmp_path / "run/logs/c1/srv.log"))
    assert node.stop_all("c1", 5) == ["srv"]
    assert not node.alive(proc.pgid)


def test_pid_file_and_sweep_report_parsing():
    assert read_pid_file("123 456\n") == (123, "456")
    assert read_pid_file("123") == (123, "")
    assert read_pid_file("") is None and read_pid_file("12 x") is None
    assert read_pid_file("1 2 3") is None
    out = "stopping 10 python3 -m x\nstopping 11 \nkilled 10 python3 -m x\nnoise\n"
    assert procs.parse_sweep(out) == ["10 python3 -m x (killed)", "11"]
