"""SIMULATOR -- not SGLang. What a real server does with the Hugging Face hub switched off.

A real SGLang or vLLM server started with HF_HUB_OFFLINE=1 loads a model id only from the
local hub cache; a model that is not there fails the start (huggingface_hub's offline error).
The simulator does the same check, so a harness that goes offline on the wrong list of models
fails here as it would on a GPU host.
"""
from __future__ import annotations

import glob
import os
from typing import Mapping

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_dir(environ: Mapping[str, str]) -> str:
    """huggingface_hub's cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if environ.get("HF_HUB_CACHE"):
        return environ["HF_HUB_CACHE"]
    home = environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache",
                                                  "huggingface")
    return os.path.join(home, "hub")


def offline(environ: Mapping[str, str]) -> bool:
    return any(_true(environ.get(name)) for name in OFFLINE_VARS)


def offline_refusal(model: str, environ: Mapping[str, str]) -> str | None:
    """Why `model` cannot load with the hub offline, or None (online, a local folder, cached)."""
    if not offline(environ) or not model or os.path.isdir(model):
        return None
    cache = hub_dir(environ)
    folder = "models--" + model.replace("/", "--")
    if glob.glob(os.path.join(glob.escape(cache), folder, "snapshots", "*", "config.json")):
        return None
    return (f"cannot load {model} with HF_HUB_OFFLINE=1: no snapshot of it in {cache} "
            "(huggingface_hub.errors.OfflineModeIsEnabled / LocalEntryNotFoundError)")
