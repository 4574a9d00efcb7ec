"""The offline decision's cache check (SPEC §6) looks where the Hugging Face hub library does:
HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
from __future__ import annotations

import pytest

from harness.hosts.local import LocalHost
from harness.hosts.nodes import HostNode
from harness.servers.server import model_cached, offline_env


def snapshot(hub, model="Org/Model"):
    folder = hub / f"models--{model.replace('/', '--')}" / "snapshots" / "abc"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")


@pytest.mark.parametrize("variable,hub", [("HF_HUB_CACHE", "x"), ("HF_HOME", "x/hub")])
def test_the_cache_is_found_where_the_hub_library_looks(tmp_path, monkeypatch, variable, hub):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    snapshot(tmp_path / hub)
    node = HostNode(LocalHost(), tmp_path / "project")
    assert not model_cached(node, "Org/Model")
    monkeypatch.setenv(variable, str(tmp_path / "x"))
    assert model_cached(node, "Org/Model")
    assert offline_env(node, "Org/Model") == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert offline_env(node, "Org/Model", "Org/Other") == {}
