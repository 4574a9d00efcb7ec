"""The three single-host pytest payloads, run on the simulator exactly as payloads/README.md says.

No container: the project directory stands where the container has /test_run, the payloads
run with HARNESS_SIM=true, PYTHONPATH starting with sim/site and SGLANG_WORKSPACE=sim/workspace,
and the simulated servers, the real sglang-router and the real Mooncake master/metadata server
run as processes on 127.0.0.1. Each payload runs in its own session with a bounded wall-clock
time; afterwards no process that inherited the run's marker variable may be left alive.

Needs a Python with sglang-router and mooncake-transfer-engine (tests/image/requirements.txt):
this interpreter, or the one named by HARNESS_SIM_PYTHON. Without one the tests skip, or fail
where real components are required (HARNESS_REQUIRE_REAL=1).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SIM_SITE = ROOT / "sim" / "site"
SIM_WORKSPACE = ROOT / "sim" / "workspace"
PAYLOADS = ROOT / "payloads"
RUN_TIMEOUT_S = 180
MARKER = "HARNESS_PAYLOAD_TEST_RUN"
CRASH_LINE = "injected fault payload:crash"
MLA, MHA, GDN = ("deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
                 "Qwen/Qwen3.5-4B")


@pytest.fixture(scope="module")
def sim_python() -> str:
    """A Python that has what the simulated container has: sglang-router and Mooncake."""
    python = os.environ.get("HARNESS_SIM_PYTHON") or sys.executable
    probe = subprocess.run(
        [python, "-c", "import sglang_router, mooncake.http_metadata_server, mooncake.cli"],
        check=False, capture_output=True, text=True, timeout=60)
    master = Path(python).parent / "mooncake_master"
    if probe.returncode != 0 or not (master.exists() or shutil.which("mooncake_master")):
        what = (f"{python} lacks sglang-router/mooncake-transfer-engine (or mooncake_master); "
                "install tests/image/requirements.txt there or set HARNESS_SIM_PYTHON")
        if os.environ.get("HARNESS_REQUIRE_REAL", "") not in ("", "0", "false"):
            pytest.fail(what)
        pytest.skip(what)
    return python


def _env(python: str, pythonpath: list[Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HARNESS_SIM", "HF_", "SGLANG_", "MOONCAKE_", "MC_"))
           and k not in ("PYTHONPATH", "USE_MODELSCOPE", "TRANSFORMERS_OFFLINE")}
    env.update({
        "PATH": os.pathsep.join([str(Path(python).parent), env.get("PATH", "/usr/bin:/bin")]),
        "HARNESS_SIM": "true",
        "SGLANG_WORKSPACE": str(SIM_WORKSPACE),
        "PYTHONPATH": os.pathsep.join(str(p) for p in [SIM_SITE, *pythonpath]),
        "HARNESS_SIM_STARTUP_S": "0.1",
        # as the harness does: the real mooncake_master where it runs, else the stand-in
        "HARNESS_MOONCAKE_MASTER": str(SIM_SITE.parent / "bin" / "mooncake_master"),
        "PYTHONUNBUFFERED": "1",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        MARKER: uuid.uuid4().hex,
    })
    env.update(extra)
    return env


def _marked_pids(marker_value: str) -> list[int]:
    needle = f"{MARKER}={marker_value}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def run_payload(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run a payload in its own session; bounded; afterwards nothing it started may live.

    Output goes to a file, not a pipe, so a leaked process holding the output open cannot
    keep the test waiting.
    """
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(argv, cwd=str(cwd), env=env, stdout=output,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        leaked = _stop_leftovers(env[MARKER])
        output.seek(0)
        text = output.read().decode(errors="replace")
    if timed_out:
        pytest.fail(f"payload ran past {RUN_TIMEOUT_S} s: {argv}\n{text[-4000:]}")
    if leaked:
        pytest.fail("processes left running after the payload (now killed):\n"
                    + "\n".join(leaked) + f"\n{text[-3000:]}")
    return proc.returncode, text


def _stop_leftovers(marker_value: str) -> list[str]:
    """Processes the payload started that outlive it, described; each is SIGKILLed by PID."""
    deadline = time.monotonic() + 5  # a stop signalled at teardown may still be finishing
    left = _marked_pids(marker_value)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _marked_pids(marker_value)
    described = []
    for pid in left:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
        described.append(f"{pid}: {cmdline.decode(errors='replace')}")
    return described


def hicache_command(python: str) -> tuple[list[str], Path, list[Path]]:
    return ([python, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-s", "--tb=long",
             "test_hicache_storage_mooncake_backend.py"],
            PAYLOADS / "hicache",
            [SIM_WORKSPACE / "sglang" / "test" / "registered" / "hicache"])


def moe_command(python: str) -> tuple[list[str], Path, list[Path]]:
    return ([python, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-s", "--tb=long",
             "test_moe_mooncake.py"],
            PAYLOADS / "moe",
            [SIM_WORKSPACE / "sglang"])


def different_tp_command(python: str) -> tuple[list[str], Path, list[Path]]:
    return [python, str(PAYLOADS / "different_tp" / "run.py")], ROOT, []


def fake_hf_snapshot(hub: Path, model: str) -> None:
    snapshot = hub / ("models--" + model.replace("/", "--")) / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def cached_hub(tmp_path: Path) -> Path:
    """A HuggingFace hub cache holding all three of the different_tp models."""
    hub = tmp_path / "hub"
    for model in (MLA, MHA, GDN):
        fake_hf_snapshot(hub, model)
    return hub


def test_hicache_payload_passes(sim_python, tmp_path):
    argv, cwd, path = hicache_command(sim_python)
    rc, out = run_payload(argv, cwd, _env(sim_python, path,
                                          HARNESS_PAYLOAD_LOG_DIR=str(tmp_path / "logs")))
    assert rc == 0, out[-6000:]
    assert re.search(r"\b4 passed\b", out), out[-3000:]
    # One Mooncake master + metadata server per class, each answering, each stopped.
    assert out.count("[mooncake] ready:") == 3, out[-3000:]
    assert out.count("[mooncake] stopped master") == 3
    assert out.count("[mooncake] stopped metadata_server") == 3
    for flags in ("--hicache-storage-backend mooncake", "--mem-fraction-static 0.8",
                  "--tp-size 2", "--hicache-mem-layout page_first_direct",
                  "--hicache-io-backend direct", "--hicache-ratio 1.5", f"--model-path {MLA}"):
        assert flags in out, flags
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert "TestMooncakeBackendMLAModel.master.log" in logs, logs
    assert "TestMooncakeBackendAccuracy.metadata_server.log" in logs, logs
    assert_real_masters(sorted((tmp_path / "logs").glob("*.master.log")), count=3)


# What the real mooncake_master (glog) writes when it listens; the stand-in says SIMULATED.
REAL_MASTER_LINE = re.compile(r"master\.cpp:\d+\] Master service started on port \d+")


def assert_real_masters(logs: list[Path], count: int) -> None:
    """Each master log is the real mooncake_master's: a silent fallback to the simulator's
    stand-in (sim/bin/mooncake_master when the real binary cannot run) fails here."""
    assert len(logs) == count, [p.name for p in logs]
    for log in logs:
        text = log.read_text(errors="replace")
        assert "SIMULATED mooncake_master" not in text, f"{log.name}: the stand-in ran\n{text}"
        assert REAL_MASTER_LINE.search(text), f"{log.name}: no real master start line\n{text}"


def test_hicache_page_first_is_skipped_in_ci(sim_python):
    argv, cwd, path = hicache_command(sim_python)
    rc, out = run_payload(argv, cwd, _env(sim_python, path, SGLANG_IS_IN_CI="true"))
    assert rc == 0, out[-6000:]
    assert re.search(r"\b3 passed, 1 skipped\b", out), out[-3000:]
    assert out.count("[mooncake] ready:") == 2


def test_moe_payload_passes(sim_python):
    argv, cwd, path = moe_command(sim_python)
    rc, out = run_payload(argv, cwd, _env(sim_python, path,
                                          SGLANG_CI_RDMA_ALL_DEVICES="erdma_0,erdma_1"))
    assert rc == 0, out[-6000:]
    assert re.search(r"\b1 passed\b", out), out[-3000:]
    assert (f"--model-path {MLA} --trust-remote-code --tp 2 --elastic-ep-backend mooncake "
            "--mooncake-ib-device erdma_0,erdma_1 --mem-fraction-static 0.8") in out


def test_different_tp_payload_passes_online(sim_python, tmp_path):
    argv, cwd, path = different_tp_command(sim_python)
    hub = tmp_path / "hub"
    fake_hf_snapshot(hub, MLA)  # one of three cached: not enough for offline
    rc, out = run_payload(argv, cwd, _env(sim_python, path, HF_HUB_CACHE=str(hub),
                                          HF_HUB_OFFLINE="1"))
    assert rc == 0, out[-6000:]
    first = out.splitlines()[0]
    assert first.startswith("[different_tp] model cache policy: ONLINE"), first
    assert f"not cached in {hub}: {MHA}, {GDN}" in first and "cleared inherited" in first, first
    assert re.search(r"\b3 passed\b", out), out[-3000:]
    # The plugin's models reached the image's test; the image defaults did not.
    assert f"--model-path {MLA} --trust-remote-code --disaggregation-mode prefill" in out
    assert f"--model-path {MHA} --trust-remote-code --disaggregation-mode decode" in out
    assert "--model-path lmsys/sglang-ci-dsv3-test" not in out
    assert "sglang_router.launch_router --pd-disaggregation --mini-lb" in out


def test_different_tp_payload_offline_when_all_cached(sim_python, tmp_path):
    argv, cwd, path = different_tp_command(sim_python)
    hub = cached_hub(tmp_path)
    rc, out = run_payload(argv + ["-k", "PrefillLargerTP"], cwd,
                          _env(sim_python, path, HF_HUB_CACHE=str(hub)))
    assert rc == 0, out[-6000:]
    first = out.splitlines()[0]
    assert first.startswith("[different_tp] model cache policy: OFFLINE (HF_HUB_OFFLINE=1 "
                            "TRANSFORMERS_OFFLINE=1)"), first
    assert re.search(r"\b1 passed, 2 deselected\b", out), out[-3000:]


def test_different_tp_modelscope_is_online(sim_python, tmp_path):
    argv, cwd, path = different_tp_command(sim_python)
    hub = cached_hub(tmp_path)
    rc, out = run_payload(argv + ["-k", "DecodeLargerTP"], cwd,
                          _env(sim_python, path, HF_HUB_CACHE=str(hub), USE_MODELSCOPE="true"))
    assert rc == 0, out[-6000:]
    assert out.splitlines()[0].startswith(
        "[different_tp] model cache policy: ONLINE -- ModelScope is on (USE_MODELSCOPE=true)")


@pytest.mark.parametrize("command", [hicache_command, different_tp_command, moe_command],
                         ids=["hicache", "different_tp", "moe"])
def test_payload_crash_fault_fails_the_payload(sim_python, command):
    argv, cwd, path = command(sim_python)
    rc, out = run_payload(argv, cwd, _env(sim_python, path, HARNESS_SIM_FAULTS="payload:crash"))
    assert rc != 0, out[-3000:]
    assert CRASH_LINE in out, out[-3000:]
    assert "[mooncake] started" not in out  # it failed before starting anything


def test_other_components_faults_do_not_touch_payload_servers(sim_python):
    argv, cwd, path = moe_command(sim_python)
    rc, out = run_payload(argv, cwd, _env(sim_python, path,
                                          HARNESS_SIM_FAULTS="decode:crash,prefill:wrong-answer"))
    assert rc == 0, out[-6000:]


def test_different_tp_without_the_test_file_says_why(sim_python, tmp_path):
    argv, cwd, path = different_tp_command(sim_python)
    rc, out = run_payload(argv, cwd, _env(sim_python, path, SGLANG_WORKSPACE=str(tmp_path),
                                          HF_HUB_CACHE=str(tmp_path / "hub")))
    assert rc == 2, out
    lines = out.splitlines()
    assert lines[0].startswith("[different_tp] model cache policy: ONLINE")
    assert "test_disaggregation_different_tp.py is not in this image" in lines[1]
