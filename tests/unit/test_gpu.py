"""GPU readings and the host reset's logic: nvidia-smi parsing, the drain wait (fake clock),
whose processes may be killed (fake /proc), the simulated GPU records, and reset_node with fakes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePosixPath

import pytest

from harness.prep import gpu as g
from harness.prep import sim_gpu
from harness.errors import CommandFailed, DockerError, HarnessError, Interrupted
from harness.hosts.local import Completed, LocalHost
from harness.layout import Layout
from harness.hosts.nodes import ContainerBase
from harness.prep.reset import (ProcFacts, ResetFailed, gpu_source_for, parse_facts, reset_node,
                                run_processes)
from harness.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
CID = "3f9c2d1e8b7a" + "0" * 52
OTHER_CID = "aa11bb22cc33" + "1" * 52


# --- fakes -------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.reads = 0
        self.started = time.monotonic()

    def __call__(self) -> float:
        # A wait that keeps reading this clock without sleeping on it never ends: fail, don't
        # hang (a fake-clock wait takes milliseconds of real time).
        self.reads += 1
        assert self.reads < 10_000 and time.monotonic() - self.started < 20, (
            "the wait does not end on the fake clock")
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeSource:
    """Readings from a script; after the script runs out, the last one repeats."""

    def __init__(self, readings, procs=()) -> None:
        self.readings = list(readings)
        self.procs = list(procs)
        self.reads = 0

    def used_mb(self) -> list[int]:
        item = self.readings[min(self.reads, len(self.readings) - 1)]
        self.reads += 1
        if isinstance(item, Exception):
            raise item
        return list(item)

    def processes(self) -> list[g.GpuProcess]:
        return list(self.procs)


class FakeHost:
    """`run` answers from a function; `read_text` from a dict of fake files."""

    def __init__(self, files=None, answer=None, name="gpu-host") -> None:
        self.name = name
        self.files = dict(files or {})
        self.answer = answer or (lambda argv: Completed(list(argv), 0, ""))
        self.calls: list[list[str]] = []

    def run(self, argv, *, env=None, timeout=None, cwd=None, check=True):
        self.calls.append(list(argv))
        return self.answer(list(argv))

    def read_text(self, path):
        if str(path) not in self.files:
            raise FileNotFoundError(path)
        return self.files[str(path)]


class FakeContainerNode(ContainerBase):
    """Enough of a container node for reset_node: restart is recorded (or fails)."""

    def __init__(self, host, fail: Exception | None = None) -> None:
        self.name = "local"
        self.host = host
        self.container_name = "mooncake-ci-test"
        self.layout = Layout.at("/test_run")
        self.host_layout = Layout.at("/srv/project")
        self.fail = fail
        self.resets: list[float] = []

    def reset(self, timeout_s: float) -> None:
        if self.fail:
            raise self.fail
        self.resets.append(timeout_s)

    def restart(self) -> None:
        self.reset(0)

    def container_id(self) -> str:
        return CID


def settings(**env) -> Settings:
    base = {"TIMEOUT_GPU_DRAIN_S": "60", "TIMEOUT_GPU_DRAIN_AFTER_KILL_S": "45"}
    return Settings.from_env({**base, **{k: str(v) for k, v in env.items()}})


# --- nvidia-smi parsing --------------------------------------------------------------------------
def test_parse_used_mb_in_index_order():
    assert g.parse_used_mb("1, 8000\n0, 3\n\n2, 0\n") == [3, 8000, 0]


@pytest.mark.parametrize("output, words", [
    ("", "listed no GPUs"),
    ("\n  \n", "listed no GPUs"),
    ("0, [N/A]\n", "not a number"),
    ("0, 12 MiB\n", "not a number"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
     "unexpected line"),
    ("0, 1, 2\n", "unexpected line"),
    ("x, 12\n", "not a number"),
])
def test_parse_used_mb_refuses_what_it_cannot_read(output, words):
    with pytest.raises(g.GpuReadError, match="cannot read GPU memory") as err:
        g.parse_used_mb(output)
    assert words in str(err.value)


def test_parse_processes():
    assert g.parse_processes("") == []
    assert g.parse_processes("No running processes found\n") == []
    out = "123, 8000\n456, [N/A]\n123, 100\n"
    assert g.parse_processes(out) == [g.GpuProcess(123, 8100), g.GpuProcess(456, None)]
    with pytest.raises(g.GpuReadError, match="pid 'abc'"):
        g.parse_processes("abc, 10\n")
    with pytest.raises(g.GpuReadError, match="used_memory"):
        g.parse_processes("12, lots\n")


def test_nvidia_smi_runs_the_queries_through_the_host():
    answers = {g.QUERY_GPUS[1]: "0, 5\n1, 9000\n", g.QUERY_APPS[1]: "777, 9000\n"}
    host = FakeHost(answer=lambda argv: Completed(argv, 0, answers[argv[1]]))
    smi = g.NvidiaSmi(host)
    assert smi.used_mb() == [5, 9000]
    assert smi.processes() == [g.GpuProcess(777, 9000)]
    assert host.calls == [g.QUERY_GPUS, g.QUERY_APPS]


@pytest.mark.parametrize("answer, words", [
    (CommandFailed(["nvidia-smi"], 127, "No such file"), "nvidia-smi not found on host gpu-host"),
    (Completed(["nvidia-smi"], 127, "bash: nvidia-smi: command not found"), "not found"),
    (CommandFailed(["nvidia-smi"], None, ""), "nvidia-smi timed out"),
    (Completed(["nvidia-smi"], 9, "NVIDIA-SMI has failed because it couldn't communicate"),
     "nvidia-smi exited 9"),
    (Completed(["nvidia-smi"], 0, "garbage"), "unexpected line"),
])
def test_nvidia_smi_failures_are_read_errors(answer, words):
    def run(argv):
        if isinstance(answer, Exception):
            raise answer
        return answer
    with pytest.raises(g.GpuReadError) as err:
        g.NvidiaSmi(FakeHost(answer=run)).used_mb()
    assert words in str(err.value)
    assert isinstance(err.value, HarnessError)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_missing_nvidia_smi_on_a_real_host_is_a_read_error():
    with pytest.raises(g.GpuReadError, match="nvidia-smi not found on host local"):
        g.NvidiaSmi(LocalHost()).used_mb()


# --- the drain wait ------------------------------------------------------------------------------
def test_drain_in_time():
    clock = FakeClock()
    source = FakeSource([[9000, 0], [5000, 0], [1024, 3]])
    drain = g.wait_for_drain(source, timeout_s=60, clock=clock, sleep=clock.sleep)
    assert drain.drained and drain.waited_s == pytest.approx(1.0)
    assert [r.used_mb for r in drain.readings] == [(9000, 0), (5000, 0), (1024, 3)]
    assert clock.sleeps == [0.5, 0.5]


def test_drain_times_out_with_a_last_reading_at_the_deadline():
    clock = FakeClock()
    drain = g.wait_for_drain(FakeSource([[0, 8000]]), timeout_s=1.2, clock=clock,
                             sleep=clock.sleep)
    assert not drain.drained
    assert [r.at_s for r in drain.readings] == [0.0, 0.5, 1.0, 1.2]
    assert drain.describe() == "still used after 1.2s: GPU 1: 8000 MB, 1 other <= 1024 MB"


def test_drain_unreadable_is_raised_not_idle():
    clock = FakeClock()
    source = FakeSource([[9000], g.GpuReadError("cannot read GPU memory: boom")])
    with pytest.raises(g.GpuReadError, match="boom"):
        g.wait_for_drain(source, timeout_s=60, clock=clock, sleep=clock.sleep)


def test_drain_cancelled():
    clock, cancel = FakeClock(), threading.Event()
    cancel.set()
    with pytest.raises(Interrupted):
        g.wait_for_drain(FakeSource([[9000]]), timeout_s=60, clock=clock, sleep=clock.sleep,
                         cancel=cancel)


def test_format_used():
    assert g.format_used([0, 0, 3]) == "3 GPUs <= 1024 MB (max 3)"
    assert g.format_used([8000, 0, 8000, 0]) == ("GPU 0: 8000 MB, GPU 2: 8000 MB, "
                                                 "2 others <= 1024 MB")


# --- whose processes -----------------------------------------------------------------------------
def test_cgroup_processes_keeps_only_the_containers():
    files = {
        "/proc/11/cgroup": f"12:memory:/docker/{CID}\n0::/\n",                    # cgroup v1
        "/proc/12/cgroup": f"0::/system.slice/docker-{CID}.scope\n",             # v2, systemd
        "/proc/13/cgroup": f"0::/system.slice/docker-{OTHER_CID}.scope\n",       # another one
        "/proc/14/cgroup": "0::/user.slice/user-0.slice/session-1.scope\n",      # the host's
    }                                                                            # 15: gone
    host = FakeHost(files)
    assert g.cgroup_processes(host, [11, 12, 13, 14, 15], CID) == [11, 12]
    with pytest.raises(HarnessError, match="refusing"):
        g.cgroup_processes(host, [11], "")


def test_run_processes_by_group_or_output_under_the_run_tree():
    out = ("root\t/real/p/run\n"
           "101\t/srv/p/run/logs/c/decode.log\t/srv/p/run/logs/c/decode.log\t"
           "101 (sglang::sched uler) S 1 555 555 0 -1\n"
           "102\t/dev/null\t/dev/null\t102 (python3) S 1 4242 4242 0 -1\n"
           "103\t/srv/p/run-other/x.log\t/dev/pts/0\t103 (a) b) S 1 103 103 0 -1\n"
           "104\t/dev/null\t/srv/p/run/logs/c/x.log\t104 (python3) S 1 104 104 0 -1\n"
           "garbage line\n")
    root, facts = parse_facts(out)
    assert root == "/real/p/run"
    assert facts[101] == ProcFacts(101, 555, 555, "/srv/p/run/logs/c/decode.log",
                                     "/srv/p/run/logs/c/decode.log")
    assert facts[103].pgid == 103
    host = FakeHost(answer=lambda argv: Completed(argv, 0, out))
    assert run_processes(host, [101, 102, 103, 104, 105], "/srv/p/run", {4242}) == [101, 102,
                                                                                         104]
    assert host.calls[0][:2] == ["bash", "-c"] and host.calls[0][-6:] == [
        "/srv/p/run", "101", "102", "103", "104", "105"]
    # through a symlinked project root: the real path of the run dir counts too
    real = out.replace("/srv/p/run/logs", "/real/p/run/logs")
    host = FakeHost(answer=lambda argv: Completed(argv, 0, real))
    assert run_processes(host, [101, 103], "/srv/p/run") == [101]
    assert run_processes(host, [], "/srv/p/run") == []


def test_run_processes_reads_the_real_proc(tmp_path):
    log_file = tmp_path / "run" / "logs" / "x.log"
    log_file.parent.mkdir(parents=True)
    with open(log_file, "w") as out:
        inside = subprocess.Popen(["sleep", "30"], stdout=out, stderr=out)
    outside = subprocess.Popen(["sleep", "30"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        owned = run_processes(LocalHost(), [inside.pid, outside.pid], tmp_path / "run")
        assert owned == [inside.pid]
        (tmp_path / "link").symlink_to(tmp_path)
        assert run_processes(LocalHost(), [inside.pid], tmp_path / "link" / "run") == [inside.pid]
        assert run_processes(LocalHost(), [outside.pid], tmp_path / "run",
                               {outside.pid}) == [outside.pid]
    finally:
        for proc in (inside, outside):
            proc.kill()
            proc.wait()


# --- simulated GPU records -----------------------------------------------------------------------
def starttime(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()[19])


def write_record(directory: Path, pid: int, start: int, gpus, leak=False, name=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"h-{pid}-{start}.json")
    path.write_text(json.dumps({"pid": pid, "starttime": start, "gpus": list(gpus),
                                "mb_per_gpu": 8000, "leak": leak, "component": "decode"}))
    return path


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_sim_gpu_counts_live_processes_and_leaks(tmp_path, dead_pid):
    me = os.getpid()
    write_record(tmp_path, me, starttime(me), [0, 1])                  # alive
    write_record(tmp_path, dead_pid, 12345, [2])                       # dead, no leak
    write_record(tmp_path, dead_pid, 12346, [6, 7], leak=True)         # dead, leaked
    write_record(tmp_path, me, starttime(me) + 1, [3])                 # PID reused: not mine
    sim = sim_gpu.SimGpu(LocalHost(), tmp_path)
    assert sim.used_mb() == [8000, 8000, 0, 0, 0, 0, 8000, 8000]
    assert sim.processes() == [g.GpuProcess(me, 16000)]


def test_sim_gpu_empty_missing_and_corrupt(tmp_path):
    assert sim_gpu.SimGpu(LocalHost(), tmp_path / "none").used_mb() == [0] * 8
    assert sim_gpu.SimGpu(LocalHost(), tmp_path / "none").processes() == []
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(g.GpuReadError, match="record bad.json"):
        sim_gpu.SimGpu(LocalHost(), tmp_path).used_mb()
    sim = sim_gpu.SimGpu(LocalHost(), tmp_path)
    sim.clear()
    assert sim.used_mb() == [0] * 8


def test_sim_gpu_unreadable_scan_is_a_read_error():
    host = FakeHost(answer=lambda argv: Completed(argv, 1, "Traceback ..."))
    with pytest.raises(g.GpuReadError, match="scan exited 1"):
        sim_gpu.SimGpu(host, "/x").used_mb()
    host = FakeHost(answer=lambda argv: Completed(argv, 0, "nonsense"))
    with pytest.raises(g.GpuReadError, match="cannot read the simulated GPU records"):
        sim_gpu.SimGpu(host, "/x").used_mb()


def test_sim_used_mb_grows_for_high_gpu_ids():
    rec = sim_gpu.SimRecord("f", 1, 1, (9,), 100, True, None)
    assert sim_gpu.sim_used_mb([rec]) == [0] * 9 + [100]


def test_sim_engine_writes_and_removes_its_record(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "sim" / "site"))
    from harness_sim import gpu as engine_gpu
    from harness_sim.sglang_args import parse_server_args
    args = parse_server_args(["--model-path", "m", "--tp-size", "2", "--base-gpu-id", "6"])
    env = {"HARNESS_SIM_GPU_DIR": str(tmp_path / "gpu")}
    assert engine_gpu.hold(args, set(), "decode", {}) is None
    path = engine_gpu.hold(args, set(), "decode", env)
    record = json.loads(path.read_text())
    assert record["gpus"] == [6, 7] and record["pid"] == os.getpid() and not record["leak"]
    assert sim_gpu.SimGpu(LocalHost(), tmp_path / "gpu").used_mb()[6:] == [8000, 8000]
    engine_gpu.release()
    assert not path.exists()
    engine_gpu.release()                                # idempotent
    leaked = engine_gpu.hold(args, {"gpu-leak"}, "decode", env)
    engine_gpu.release()
    assert leaked.exists() and json.loads(leaked.read_text())["leak"] is True
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="bad HARNESS_SIM_GPU_DIR"):
        engine_gpu.hold(args, set(), None, {"HARNESS_SIM_GPU_DIR": str(tmp_path / "file" / "x")})


# --- choosing the source -------------------------------------------------------------------------
def test_gpu_source_for(tmp_path):
    from harness.hosts.nodes import HostNode
    node = HostNode(LocalHost(), tmp_path)
    sim = gpu_source_for(node, settings(HARNESS_SIM="true"))
    assert isinstance(sim, sim_gpu.SimGpu) and sim.directory == str(tmp_path / "run" / "sim-gpu")
    assert isinstance(gpu_source_for(node, settings()), g.NvidiaSmi)
    assert sim_gpu.sim_gpu_env(Layout.at("/test_run")) == {
        "HARNESS_SIM_GPU_DIR": "/test_run/run/sim-gpu"}
    assert sim_gpu.sim_gpu_dir(Layout.at("/p")) == PurePosixPath("/p/run/sim-gpu")


# --- reset_node with fakes -----------------------------------------------------------------------
def kill_host(files=None):
    return FakeHost(files, answer=lambda argv: Completed(argv, 0, ""))


def test_reset_drains_after_the_restart():
    clock, node = FakeClock(), FakeContainerNode(kill_host())
    report = reset_node(node, settings(), FakeSource([[8000], [0]]), clock=clock,
                        sleep=clock.sleep, cancel=threading.Event())
    assert report.passed and node.resets == [10.0]
    assert report.action == "restarted container mooncake-ci-test"
    assert set(report.phases_s) == {"restart", "drain"} and report.second is None
    assert report.first.waited_s == pytest.approx(0.5)


def test_reset_kills_only_the_containers_processes_then_drains():
    host = kill_host({"/proc/11/cgroup": f"0::/docker/{CID}\n",
                      "/proc/22/cgroup": "0::/user.slice\n"})
    procs = [g.GpuProcess(11, 8000), g.GpuProcess(22, 500)]
    source = FakeSource([[8000]] * 122 + [[500]], procs)
    clock = FakeClock()
    report = reset_node(FakeContainerNode(host), settings(), source, clock=clock,
                        sleep=clock.sleep, cancel=threading.Event())
    assert report.passed
    assert report.killed == [procs[0]] and report.left_alone == [procs[1]]
    assert host.calls == [["kill", "-KILL", "11"]]
    assert not report.first.drained and report.first.waited_s == pytest.approx(60)
    assert report.second.drained
    assert report.scope == ("only GPU processes whose cgroup names container mooncake-ci-test "
                            "(3f9c2d1e8b7a)")


def test_reset_fails_when_memory_stays_used():
    host = kill_host({"/proc/11/cgroup": f"0::/docker/{CID}\n"})
    procs = [g.GpuProcess(11, 8000), g.GpuProcess(22, 8000)]
    clock = FakeClock()
    with pytest.raises(ResetFailed) as err:
        reset_node(FakeContainerNode(host), settings(TIMEOUT_GPU_DRAIN_S=1,
                                                     TIMEOUT_GPU_DRAIN_AFTER_KILL_S=1),
                   FakeSource([[0, 16000]], procs), clock=clock, sleep=clock.sleep,
                   cancel=threading.Event())
    exc = err.value
    assert exc.step == "reset" and exc.host == "local"
    assert str(exc) == (
        "[step reset, host local] GPU memory still used after the reset: GPU 1: 16000 MB, "
        "1 other <= 1024 MB (limit 1024 MB); restarted container mooncake-ci-test, waited 1.0s, "
        "killed pid 11 (8000 MB) [only GPU processes whose cgroup names container "
        "mooncake-ci-test (3f9c2d1e8b7a)], "
        "waited 1.0s more; left alone, not this node's: pid 22 (8000 MB)")
    assert "last GPU readings" in exc.details() and "[0, 16000]" in exc.details()
    assert "needs intervention" in exc.details()
    assert exc.report.killed == [procs[0]] and not exc.report.passed


def test_reset_fails_when_gpus_cannot_be_read():
    clock = FakeClock()
    source = FakeSource([g.GpuReadError("cannot read GPU memory: nvidia-smi not found on host "
                                        "local")])
    with pytest.raises(ResetFailed) as err:
        reset_node(FakeContainerNode(kill_host()), settings(), source, clock=clock,
                   sleep=clock.sleep, cancel=threading.Event())
    assert str(err.value) == ("[step reset, host local] GPU memory unreadable (drain): cannot "
                              "read GPU memory: nvidia-smi not found on host local")


def test_reset_restart_failure_is_tagged():
    node = FakeContainerNode(kill_host(), fail=DockerError("cannot restart container x: gone"))
    with pytest.raises(DockerError) as err:
        reset_node(node, settings(), FakeSource([[0]]), cancel=threading.Event())
    assert err.value.step == "reset" and err.value.host == "local"


def test_reset_nothing_to_kill_when_no_process_is_listed():
    clock = FakeClock()
    with pytest.raises(ResetFailed, match=r"killed none \[no process holds GPU memory\]"):
        reset_node(FakeContainerNode(kill_host()), settings(TIMEOUT_GPU_DRAIN_S=1,
                                                            TIMEOUT_GPU_DRAIN_AFTER_KILL_S=1),
                   FakeSource([[4000]]), clock=clock, sleep=clock.sleep,
                   cancel=threading.Event())


def test_sim_site_is_importable_for_the_engine():
    # The engine imports harness_sim.gpu at start-up; a syntax slip there breaks every sim run.
    done = subprocess.run([sys.executable, "-c", "import harness_sim.sglang_main"],
                          env={**os.environ, "PYTHONPATH": str(ROOT / "sim" / "site")},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
