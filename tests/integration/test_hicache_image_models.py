"""The HiCache case loads the models the image's SGLang test tree names, and goes offline only
when those are cached (issue 8, item 1).

The simulated test tree defaults to `meta-llama/Llama-3.1-8B-Instruct`, as the real image does,
and a simulated server started with HF_HUB_OFFLINE=1 refuses a model that is not in the hub
cache, as a real one does; so a case that pins its own model, or decides offline on a list of
its own, fails here.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.simproc import demo_env

pytestmark = pytest.mark.integration
CASE = "test_hicache_storage_mooncake_backend"
IMAGE_MHA = "meta-llama/Llama-3.1-8B-Instruct"  # sim/site/sglang/test/test_utils.py
IMAGE_MLA = "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct"
OLD_PIN = "Qwen/Qwen3-8B"


def fake_snapshot(hf_home: Path, model: str) -> None:
    snapshot = hf_home / "hub" / ("models--" + model.replace("/", "--")) / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def run_case(project: Path, tmp_path: Path, cached: tuple[str, ...]) -> tuple[str, str]:
    hf_home = tmp_path / "hf"
    for model in cached:
        fake_snapshot(hf_home, model)
    # this worker's own addresses and ports (the pre-flight's are fixed per address)
    env = {k: v for k, v in demo_env(tmp_path / "remote-host" / "project",
                                     relocated=True).items()
           if not k.startswith(("HF_", "SGLANG_")) and k != "TRANSFORMERS_OFFLINE"}
    env["HF_HOME"] = str(hf_home)
    done = subprocess.run([sys.executable, "-m", "harness", "single", CASE], cwd=project,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=400)
    logs = project / "run" / "logs"
    status = json.loads((logs / CASE / "test_results.json").read_text())["status"]
    payload_log = (logs / CASE / f"{CASE}.log").read_text(errors="replace")
    assert status == "Pass", done.stdout[-3000:] + payload_log[-3000:]
    return (logs / "harness.log").read_text(errors="replace"), payload_log


def test_payload_loads_the_image_models_and_goes_offline_on_them(project, tmp_path):
    harness_log, payload_log = run_case(project, tmp_path, (IMAGE_MHA, IMAGE_MLA))
    assert f"--model-path {IMAGE_MHA}" in payload_log
    assert f"--model-path {IMAGE_MLA}" in payload_log
    assert OLD_PIN not in payload_log
    assert f"the payload loads {IMAGE_MLA}, {IMAGE_MHA}; all cached: offline" in harness_log
    assert "hub=offline" in payload_log and "hub=online" not in payload_log


def test_a_cached_model_the_payload_does_not_load_keeps_it_online(project, tmp_path):
    """Our old pin cached, the image's model not: offline would fail every MHA class."""
    harness_log, payload_log = run_case(project, tmp_path, (OLD_PIN, IMAGE_MLA))
    assert "not all cached: online" in harness_log
    assert "hub=online" in payload_log and "hub=offline" not in payload_log
    assert f"--model-path {IMAGE_MHA}" in payload_log
