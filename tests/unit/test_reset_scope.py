"""The reset's kill scope with HARNESS_RUNTIME=host, on real processes of this host: a GPU
process is killed only when it is provably this run's (a recorded process group or session, or
output under the run tree); everything else is left alone and named. (The container scope, by
cgroup, is in test_gpu.py.)"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.prep import gpu as g
from harness.prep import reset as reset_mod
from harness.errors import CommandFailed
from harness.hosts.local import Completed, LocalHost
from harness.hosts.nodes import HostNode
from harness.prep.reset import (ProcFacts, ResetReport, _kill_owned, is_run_process, kill_scope,
                                parse_facts, recorded_groups, run_processes)
from tests.simproc import wait_for


@pytest.fixture
def started():
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def sleeper(started, *, stdout=subprocess.DEVNULL, new_session=True) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "60"], stdout=stdout, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=new_session)
    started.append(proc)
    return proc


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# --- parsing the facts script ------------------------------------------------------------------
def stat(pid: int, comm: str, pgid: int, sid: int) -> str:
    return f"{pid} ({comm}) S 1 {pgid} {sid} 0 -1 4194560"


def test_parse_facts_reads_group_session_and_both_outputs():
    out = (f"root\t/real/run\n"
           f"7\t/r/run/logs/a b.log\t/dev/null\t{stat(7, 'x', 70, 700)}\n")
    root, facts = parse_facts(out)
    assert root == "/real/run"
    assert facts == {7: ProcFacts(7, 70, 700, "/r/run/logs/a b.log", "/dev/null")}


def test_parse_facts_skips_what_does_not_parse_and_goes_on():
    out = "\n".join([
        "garbage",
        f"x8\t/a\t/b\t{stat(8, 'x', 8, 8)}",           # pid not a number
        "9\t/a\t/b",                                    # too few fields
        "10\t/a\t/b\t10 (x) S 1 ten 10 0",             # pgid not a number
        "11\t/a\t/b\t11 (x) S 1 11 sid 0",             # sid not a number
        "12\t/a\t/b\t12 (x) S 1",                       # stat cut short
        "15\t/a\t/b\t15 (x) S 1 150 151",               # just long enough
        "13\t/a\t/b\t" + stat(13, "tab\there", 130, 131),  # a comm may hold a tab...
        f"14\t/o\t/e\t{stat(14, 'a) (b', 140, 141)}",  # ...or ") "
    ])
    root, facts = parse_facts(out)
    assert root is None
    assert sorted(facts) == [13, 14, 15]
    assert (facts[13].pgid, facts[13].sid) == (130, 131)
    assert facts[14] == ProcFacts(14, 140, 141, "/o", "/e")


# --- deciding ------------------------------------------------------------------------------------
def facts(pgid=5, sid=6, out="/dev/null", err="/dev/null") -> ProcFacts:
    return ProcFacts(99, pgid, sid, out, err)


def test_a_recorded_group_or_session_is_this_runs():
    assert is_run_process(facts(pgid=5, sid=6), ["/p/run"], {5})
    assert is_run_process(facts(pgid=5, sid=6), ["/p/run"], {6})
    assert not is_run_process(facts(pgid=5, sid=6), ["/p/run"], {7})
    assert not is_run_process(facts(pgid=5, sid=6), ["/p/run"])


def test_output_under_the_run_tree_is_this_runs_and_only_under_it():
    assert is_run_process(facts(out="/p/run/logs/c/x.log"), ["/p/run"])
    assert is_run_process(facts(err="/p/run/logs/c/x.log"), ["/p/run/"])
    assert is_run_process(facts(out="/real/run/x.log"), ["/p/run", "/real/run"])
    assert not is_run_process(facts(out="/p/run-old/x.log"), ["/p/run"])   # a sibling dir
    assert not is_run_process(facts(out="/p/run"), ["/p/run"])
    assert not is_run_process(facts(out="/x/y.log"), ["", "/p/run"])       # "" is not "/"


def test_run_processes_on_real_processes(tmp_path, started):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    with open(run / "logs" / "with space.log", "w") as log:
        by_output = sleeper(started, stdout=log)
    by_group = sleeper(started)
    # a process in a group of its own inside a recorded session (job control of a shell)
    shell = subprocess.Popen(["bash", "-c", "set -m; sleep 60 & echo $!; wait"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             start_new_session=True)
    started.append(shell)
    in_session = int(shell.stdout.readline())
    try:
        stranger = sleeper(started)
        pids = [by_output.pid, by_group.pid, in_session, stranger.pid, 2 ** 22 + 7]
        owned = run_processes(LocalHost(), pids, run, {by_group.pid, shell.pid})
        assert owned == [by_output.pid, by_group.pid, in_session]
        assert run_processes(LocalHost(), [stranger.pid], run) == []
        assert run_processes(LocalHost(), [], run) == []
    finally:  # its own group: killing the shell leaves it running
        os.killpg(in_session, signal.SIGKILL)


def test_recorded_groups_reads_every_pid_file_of_the_run(tmp_path):
    node = HostNode(LocalHost(), tmp_path)
    pids = tmp_path / "run" / "pids"
    (pids / "case_a").mkdir(parents=True)
    (pids / "case_b").mkdir(parents=True)
    (pids / "case_a" / "decode.pid").write_text("4242 987654\n")
    (pids / "case_a" / "prefill.pid").write_text("4343\n")          # an older file: pid only
    (pids / "case_b" / "router.pid").write_text("not a pid\n")
    (pids / "case_b" / "encoder.pid").write_text("4444 1\n")
    assert recorded_groups(node) == {4242, 4343, 4444}
    assert recorded_groups(HostNode(LocalHost(), tmp_path / "elsewhere")) == set()


# --- the scope and the kill ----------------------------------------------------------------------
class Gpu:
    """A GPU source listing real processes as GPU holders."""

    def __init__(self, pids):
        self.pids = pids

    def used_mb(self):
        return [8000]

    def processes(self):
        return [g.GpuProcess(pid, 8000) for pid in self.pids]


def test_host_scope_says_what_it_may_kill(tmp_path, started):
    node = HostNode(LocalHost(), tmp_path)
    (tmp_path / "run").mkdir()
    ours = sleeper(started)
    scope = kill_scope(node, {ours.pid})
    assert scope.what == (f"only this run's processes: recorded process groups or output "
                          f"under {tmp_path / 'run'}")
    assert scope.owned([ours.pid, os.getpid()]) == [ours.pid]


def test_the_reset_kills_its_own_gpu_processes_and_leaves_the_others(tmp_path, started, caplog):
    node = HostNode(LocalHost(), tmp_path)
    (tmp_path / "run" / "logs").mkdir(parents=True)
    with open(tmp_path / "run" / "logs" / "engine.log", "w") as log:
        ours = sleeper(started, stdout=log)
    by_group = sleeper(started)
    theirs = sleeper(started)
    report = ResetReport("local")
    with caplog.at_level(logging.INFO, logger="harness.prep.reset"):
        _kill_owned(node, Gpu([ours.pid, by_group.pid, theirs.pid]), {by_group.pid}, report)
    assert [p.pid for p in report.killed] == [ours.pid, by_group.pid]
    assert [p.pid for p in report.left_alone] == [theirs.pid]
    assert report.scope.startswith("only this run's processes")
    assert wait_for(lambda: not alive(ours.pid) and not alive(by_group.pid), 10)
    time.sleep(0.2)
    assert alive(theirs.pid)
    messages = [r.getMessage() for r in caplog.records]
    assert (f"local: GPU process pid {theirs.pid} (8000 MB) is not this node's "
            f"[{report.scope}]; leaving it untouched") in messages
    assert (f"local: killing GPU processes [{report.scope}]: pid {ours.pid} (8000 MB), "
            f"pid {by_group.pid} (8000 MB)") in messages
    assert not [m for m in messages if "kill said" in m]    # a kill that worked says nothing


def test_a_kill_that_fails_is_logged_not_raised(tmp_path, started, caplog, monkeypatch):
    node = HostNode(LocalHost(), tmp_path)
    ours = sleeper(started)
    os.kill(ours.pid, signal.SIGKILL)
    ours.wait(10)          # gone, and reaped: `kill` will say "No such process"
    monkeypatch.setattr("harness.prep.reset.run_processes", lambda host, pids, *a: list(pids))
    report = ResetReport("local")
    with caplog.at_level(logging.INFO, logger="harness.prep.reset"):
        _kill_owned(node, Gpu([ours.pid]), set(), report)
    assert [p.pid for p in report.killed] == [ours.pid]
    said = [r.getMessage() for r in caplog.records if "kill said" in r.getMessage()]
    assert said and said[0].startswith("local: kill said: ") and "No such process" in said[0]


def test_nothing_listed_means_nothing_killed(tmp_path):
    report = ResetReport("local")
    _kill_owned(HostNode(LocalHost(), tmp_path), Gpu([]), {1}, report)
    assert report.scope == "no process holds GPU memory"
    assert report.killed == [] and report.left_alone == []


def test_kill_processes_reports_pids_already_gone():
    gone = subprocess.Popen(["true"])
    gone.wait()
    done = g.kill_processes(LocalHost(), [gone.pid])
    assert done is not None and not done.ok
    assert g.kill_processes(LocalHost(), []) is None


def test_cgroup_check_refuses_a_short_container_id():
    with pytest.raises(Exception, match="refusing"):
        g.cgroup_processes(LocalHost(), [os.getpid()], "abcdef01234")     # 11 characters
    assert g.cgroup_processes(LocalHost(), [os.getpid()], "abcdef012345") == []  # 12: checked


# --- reading the facts through a host: bounded, and a failed read owns nothing -----------------
class RecordingHost(LocalHost):
    """This machine, keeping each command's timeout; `fail_with` makes every command exit with
    that status after `partial` output (an SSH link that broke half-way), as a host does: a
    CommandFailed when the caller asked for a check, else the failed result."""

    def __init__(self, fail_with: int | None = None, partial: str = "") -> None:
        super().__init__()
        self.fail_with, self.partial = fail_with, partial
        self.timeouts: list[float | None] = []

    def run(self, argv, *, env=None, timeout=None, cwd=None, check=True):
        self.timeouts.append(timeout)
        if self.fail_with is None:
            return super().run(argv, env=env, timeout=timeout, cwd=cwd, check=check)
        if check:
            raise CommandFailed(argv, self.fail_with, self.partial, host=self.name)
        return Completed(list(argv), self.fail_with, self.partial)


def test_reading_the_facts_is_bounded_in_time(tmp_path, started):
    """On a remote host a hung `bash` must not hang the reset: the read has a time limit."""
    host = RecordingHost()
    ours = sleeper(started)
    assert run_processes(host, [ours.pid], tmp_path / "run", {ours.pid}) == [ours.pid]
    assert host.timeouts == [g.SMI_TIMEOUT_S]


def test_a_facts_read_that_fails_owns_nothing_and_does_not_raise(tmp_path):
    """The connection broke after the first line: what did come is not enough to own a PID,
    and the reset goes on to its second drain wait (which says what was left) instead of
    failing here."""
    host = RecordingHost(fail_with=255, partial=f"root\t{tmp_path / 'run'}\n")
    assert run_processes(host, [os.getpid()], tmp_path / "run", set()) == []
    assert host.timeouts == [g.SMI_TIMEOUT_S]


@pytest.mark.parametrize("run_dir", ["/ci/run-X", "/ci/run-X/", "/ci/XX/run", "/ci/run_//"])
def test_any_run_dir_owns_its_own_tree_and_no_sibling(run_dir):
    base = run_dir.rstrip("/")
    assert is_run_process(facts(out=f"{base}/logs/c/x.log"), [run_dir])
    assert is_run_process(facts(err=f"{base}/x.log"), [run_dir])
    assert not is_run_process(facts(out=f"{base}X/x.log"), [run_dir])
    assert not is_run_process(facts(out=f"{base[:-1]}/x.log"), [run_dir])


def test_a_pid_file_gone_before_it_is_read_is_skipped(tmp_path, monkeypatch):
    """A server stopping meanwhile removes its PID file between the listing and the read:
    the other files still count."""
    node = HostNode(LocalHost(), tmp_path)
    pids = tmp_path / "run" / "pids" / "case_a"
    pids.mkdir(parents=True)
    (pids / "decode.pid").write_text("4242 987654\n")
    (pids / "prefill.pid").write_text("4343\n")
    real = reset_mod._find_pid_files
    monkeypatch.setattr(reset_mod, "_find_pid_files",
                        lambda host, root: [str(pids / "router.pid"), *real(host, root)])
    assert recorded_groups(node) == {4242, 4343}


def test_what_a_failed_kill_said_is_logged_cut_short(tmp_path, caplog, monkeypatch):
    """The kill's own words, at most 300 characters of them: a long answer stays one line."""
    node = HostNode(LocalHost(), tmp_path)
    said = "kill: (4242) - Operation not permitted " + "x" * 1000
    monkeypatch.setattr("harness.prep.reset.run_processes", lambda host, pids, *a: list(pids))
    monkeypatch.setattr(g, "kill_processes", lambda host, pids: Completed(["kill"], 1, said))
    with caplog.at_level(logging.INFO, logger="harness.prep.reset"):
        _kill_owned(node, Gpu([4242]), set(), ResetReport("local"))
    told = [r.getMessage() for r in caplog.records if "kill said" in r.getMessage()]
    assert told == [f"local: kill said: {said[:300]}"]


def test_the_kill_is_bounded_in_time_and_kills(started):
    """A kill through a hung SSH link must not hang the reset: it has a time limit too."""
    host = RecordingHost()
    victim = sleeper(started)
    done = g.kill_processes(host, [victim.pid])
    assert done is not None and done.ok
    assert wait_for(lambda: victim.poll() is not None, 10)
    assert host.timeouts == [g.SMI_TIMEOUT_S]
