"""Whether SGLang's different-TP test may run with the Hugging Face hub offline.

Offline (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1) only when every model the test needs has
a snapshot in the local HF cache and ModelScope is off; otherwise online, with any inherited
offline switches cleared, because one missing model would make the whole test fail offline.
Pure functions of the environment and the file system, so they are easy to test.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The models SGLang's test_disaggregation_different_tp.py needs once the harness's plugin has
# set its defaults: DEFAULT_MODEL_NAME_FOR_TEST_MLA, DEFAULT_MODEL_NAME_FOR_TEST and the
# image's own DEFAULT_HYBRID_GDN_SMALL_MODEL_NAME_FOR_TEST.
MLA_MODEL = "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct"
MHA_MODEL = "meta-llama/Llama-3.2-3B-Instruct"
GDN_MODEL = "Qwen/Qwen3.5-4B"
NEEDED_MODELS = (MLA_MODEL, MHA_MODEL, GDN_MODEL)

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
MODELSCOPE_VARS = ("USE_MODELSCOPE", "SGLANG_USE_MODELSCOPE")
TAG = "[different_tp]"


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir(environ: Mapping[str, str]) -> str:
    """Where huggingface_hub keeps models.

    HF_HUB_CACHE (or the older HUGGINGFACE_HUB_CACHE), else HF_HOME/hub, else
    ~/.cache/huggingface/hub.
    """
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if environ.get(name):
            return environ[name]
    if environ.get("HF_HOME"):
        return os.path.join(environ["HF_HOME"], "hub")
    return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def is_cached(model: str, hub_dir: str) -> bool:
    """True when `model` (org/name) has a snapshot with a config.json in `hub_dir`."""
    folder = "models--" + model.replace("/", "--")
    return bool(glob.glob(os.path.join(glob.escape(hub_dir), folder, "snapshots", "*",
                                       "config.json")))


@dataclass(frozen=True)
class Policy:
    offline: bool
    line: str  # the one line that says what was chosen and why

    def apply(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with the offline switches set (offline) or removed (online)."""
        env = dict(env)
        for name in OFFLINE_VARS:
            if self.offline:
                env[name] = "1"
            else:
                env.pop(name, None)
        return env


def decide(environ: Mapping[str, str], models: Sequence[str] = NEEDED_MODELS) -> Policy:
    inherited = [f"{n}={environ[n]}" for n in OFFLINE_VARS if environ.get(n)]
    cleared = f"; cleared inherited {' '.join(inherited)}" if inherited else ""
    modelscope = [f"{n}={environ[n]}" for n in MODELSCOPE_VARS if _true(environ.get(n))]
    if modelscope:
        return Policy(False, f"{TAG} model cache policy: ONLINE -- ModelScope is on "
                             f"({' '.join(modelscope)}), so the HF cache check is skipped{cleared}")
    hub_dir = hub_cache_dir(environ)
    missing = [m for m in models if not is_cached(m, hub_dir)]
    if not missing:
        return Policy(True, f"{TAG} model cache policy: OFFLINE (HF_HUB_OFFLINE=1 "
                            f"TRANSFORMERS_OFFLINE=1) -- all {len(models)} models are cached in "
                            f"{hub_dir}: {', '.join(models)}")
    cached = [m for m in models if m not in missing]
    return Policy(False, f"{TAG} model cache policy: ONLINE -- not cached in {hub_dir}: "
                         f"{', '.join(missing)} (cached: {', '.join(cached) or 'none'}){cleared}")
