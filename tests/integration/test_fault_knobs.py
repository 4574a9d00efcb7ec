"""Every fault knob acts or is refused (issue 7, item 6), through the real CLI on the demo cluster.

For each (component, fault) pair that harness/simknobs.py accepts, one run of the case it aims
at must end differently from the same run without the knob (a knob that does nothing is a test
that cannot fail). `gpu-leak` shows where a real leak would: the host reset after the case
fails. Every refused pair is one line on stderr and exit status 2, before anything starts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness import simknobs
from harness.hosts.local import LocalHost
from harness.hosts.nodes import HostNode
from harness.prep.reset import ResetFailed, gpu_source_for, reset_node
from harness.settings import Settings
from tests.conftest import copy_project
from tests.simproc import demo_env

pytestmark = pytest.mark.integration

PD, EPD, MOE, VLLM = "test_1p1d_erdma", "test_epd_sglang", "test_moe_mooncake", "VLLM"
SHORT = {"TIMEOUT_SERVER_READY_S": "3", "TIMEOUT_HEALTH_S": "3", "TIMEOUT_ROUTER_S": "4",
         "TIMEOUT_PROXY_S": "3", "TIMEOUT_CASE_S": "6", "TIMEOUT_STOP_S": "5",
         "TIMEOUT_GPU_DRAIN_S": "1", "TIMEOUT_GPU_DRAIN_AFTER_KILL_S": "1",
         "HARNESS_SIM_STARTUP_S": "0.2"}
OWN_PROXY, CONNECTOR_PROXY = "0.15.1", "0.17.0"
# What each fault does to the case it aims at: a word of the reason the case fails with.
# (A hang is reported when its wait runs out; the reason names what was awaited.)
REASON = {"crash": "status 1", "hang": "", "die-after-ready": "", "http-500": "",
          "wrong-answer": ""}
ANSWER_CHECK = "does not match"     # the case's own answer check
PAYLOAD_FAILED = "payload exited with status"


def target(component: str, fault: str) -> tuple[str, str, str]:
    """(case or group, vLLM version, a phrase the reason must hold) for an acting pair."""
    if component == "payload":
        phrase = "still running after" if fault == "hang" else PAYLOAD_FAILED
        return MOE, CONNECTOR_PROXY, phrase
    if component == "mooncake":  # the PD decode's check of the KV it received
        return PD, CONNECTOR_PROXY, "Mooncake"
    if component == "proxy":
        return VLLM, CONNECTOR_PROXY, ANSWER_CHECK if fault == "wrong-answer" else ""
    if component == "encoder" or fault == "wrong-answer":
        # 1p1d checks no answer text; EPD's cat check is where a wrong answer shows
        return EPD, CONNECTOR_PROXY, ANSWER_CHECK if fault == "wrong-answer" else ""
    return PD, CONNECTOR_PROXY, REASON[fault]


ROWS = [(c, f, *target(c, f)) for c, f in simknobs.acting_pairs() if f != "gpu-leak"]
ROWS += [("proxy", f, VLLM, OWN_PROXY, "") for f in simknobs.OWN_PROXY_ACTING]
# (component, what to run, the host its server runs on)
LEAKS = [("prefill", PD, "local"), ("decode", PD, "remote"), ("encoder", EPD, "local"),
         ("payload", MOE, "local"), ("prefill", VLLM, "remote"), ("decode", VLLM, "local")]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("faults") / "project")


def run(project, what: str, faults: str, vllm_version: str = CONNECTOR_PROXY, **extra: str):
    env = demo_env(project.parent / "remote-host" / "project", relocated=True, **SHORT,
                   HARNESS_SIM_FAULTS=faults, HARNESS_SIM_VLLM_VERSION=vllm_version, **extra)
    argv = ["group", what] if what == VLLM else ["single", what]
    return subprocess.run([sys.executable, "-m", "harness", *argv], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=240)


def case_of(what: str) -> str:
    return "test_vllm_1p1d_erdma" if what == VLLM else what


def summary(project, what: str) -> dict:
    return json.loads((project / f"run/logs/{case_of(what)}/case_summary.json").read_text())


@pytest.mark.parametrize("what,version", [(PD, CONNECTOR_PROXY), (EPD, CONNECTOR_PROXY),
                                          (MOE, CONNECTOR_PROXY), (VLLM, CONNECTOR_PROXY),
                                          (VLLM, OWN_PROXY)])
def test_without_a_fault_the_target_cases_pass(project, what, version):
    done = run(project, what, "", version)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = summary(project, what)
    assert result["status"] == "Pass"
    models = list(result["models"])
    drains = [step for step in result["steps_s"] if step.endswith(": gpu drain")]
    assert drains == [f"{model}: gpu drain" for model in models[:-1]]  # between models only


@pytest.mark.parametrize("component,fault,what,version,phrase", ROWS,
                         ids=[f"{c}:{f}@{w}-{v}" for c, f, w, v, _ in ROWS])
def test_an_acting_fault_fails_the_case_it_aims_at(project, component, fault, what, version,
                                                   phrase):
    # mooncake:corrupt fails the pre-flight first (test_preflight_run); here the case's own
    # check of the KV it received is what must catch it
    extra = {"PREFLIGHT": "false"} if (component, fault) == ("mooncake", "corrupt") else {}
    done = run(project, what, f"{component}:{fault}", version, **extra)
    result = summary(project, what)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert result["status"] == "Fail", result
    assert phrase in result["reason"], result["reason"]
    logs = "".join(p.read_text(errors="replace")
                   for p in (project / "run/logs" / case_of(what)).rglob("*.log"))
    assert f"FAULT PLAYED {component}:{fault} at " in logs  # the fault says when it acted
    if what in (PD, VLLM):  # two models: the GPUs drain after the failed first one, too
        first = next(iter(result["models"]))
        assert f"{first}: gpu drain" in result["steps_s"], result["steps_s"]


@pytest.mark.parametrize("component,what,host", LEAKS, ids=[f"{c}@{w}" for c, w, _ in LEAKS])
def test_a_gpu_leak_fails_the_host_reset_after_the_case(project, component, what, host):
    done = run(project, what, f"{component}:gpu-leak")
    if what in (PD, VLLM):  # two models: the drain before the second one sees the leak
        assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
        result = summary(project, what)
        first = next(iter(result["models"]))
        assert result["step"] == f"{first}: gpu drain" and result["host"] == host, result
        assert f"after the servers of {first} stopped" in result["reason"], result["reason"]
        # the host's failure, not the model's: the model passed, the next one is not run
        assert result["outcome"] == "environment unhealthy", result
        assert list(result["models"].values()) == ["Pass", "Fail: not run (environment "
                                                   "unhealthy)"], result["models"]
    else:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    settings = Settings.from_env({"HARNESS_SIM": "true", "HARNESS_RUNTIME": "host", **SHORT})
    root = project if host == "local" else project.parent / "remote-host" / "project"
    node = HostNode(LocalHost(host, "127.0.0.1"), root)
    with pytest.raises(ResetFailed, match="GPU memory still used"):
        reset_node(node, settings, gpu_source_for(node, settings))
    # the same run without the leak leaves a host the reset passes
    assert run(project, what, "").returncode == 0
    assert reset_node(node, settings, gpu_source_for(node, settings)).passed


REFUSED = [(f"{c}:{f}", CONNECTOR_PROXY) for c, f in simknobs.refused_pairs()]
REFUSED += [(f"proxy:{f}", OWN_PROXY) for f in simknobs.ACTING["proxy"]
            if f not in simknobs.OWN_PROXY_ACTING]


@pytest.mark.parametrize("item,version", REFUSED, ids=[f"{i}@{v}" for i, v in REFUSED])
def test_a_refused_fault_is_one_line_and_exit_2(project, item, version):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MOONCAKE_"))}
    env.update({"HARNESS_SIM_FAULTS": item, "HARNESS_SIM_VLLM_VERSION": version,
                "REMOTE_TEST_DIR": str(project.parent / "remote-host" / "project")})
    done = subprocess.run([sys.executable, "-m", "harness", "demo"], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"'{item}' is refused" in lines[0]
    results = json.loads((project / "run/logs/test_1p1d_erdma/test_results.json").read_text())
    assert results["status"] == "Fail"
