"""The different_tp payload's offline decision (payloads/different_tp/offline_policy.py)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "payloads" / "different_tp"))
policy = importlib.import_module("offline_policy")


def cache(hub: Path, *models: str) -> None:
    for model in models:
        snapshot = hub / ("models--" + model.replace("/", "--")) / "snapshots" / "abc123"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")


def test_offline_only_when_every_needed_model_is_cached(tmp_path):
    cache(tmp_path, *policy.NEEDED_MODELS)
    decided = policy.decide({"HF_HUB_CACHE": str(tmp_path)})
    assert decided.offline
    assert decided.line.startswith("[different_tp] model cache policy: OFFLINE")
    assert "\n" not in decided.line
    assert decided.apply({"PATH": "/bin"}) == {"PATH": "/bin", "HF_HUB_OFFLINE": "1",
                                                "TRANSFORMERS_OFFLINE": "1"}


def test_one_missing_model_means_online_and_clears_inherited_switches(tmp_path):
    cache(tmp_path, policy.MLA_MODEL, policy.MHA_MODEL)
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    decided = policy.decide(env)
    assert not decided.offline
    assert f"not cached in {tmp_path}: {policy.GDN_MODEL}" in decided.line
    assert "cleared inherited HF_HUB_OFFLINE=1" in decided.line
    assert "HF_HUB_OFFLINE" not in decided.apply(env)


def test_a_snapshot_without_config_json_does_not_count(tmp_path):
    cache(tmp_path, *policy.NEEDED_MODELS)
    for config in tmp_path.glob("models--Qwen--*/snapshots/*/config.json"):
        config.unlink()
    assert not policy.decide({"HF_HUB_CACHE": str(tmp_path)}).offline


@pytest.mark.parametrize("name", ["USE_MODELSCOPE", "SGLANG_USE_MODELSCOPE"])
def test_modelscope_skips_the_cache_check(tmp_path, name):
    cache(tmp_path, *policy.NEEDED_MODELS)
    decided = policy.decide({"HF_HUB_CACHE": str(tmp_path), name: "true"})
    assert not decided.offline
    assert f"ModelScope is on ({name}=true)" in decided.line


def test_hub_dir_follows_huggingface_hub(tmp_path):
    assert policy.hub_cache_dir({"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}) == "/a"
    assert policy.hub_cache_dir({"HF_HOME": "/b"}) == "/b/hub"
    assert policy.hub_cache_dir({}).endswith("/.cache/huggingface/hub")
