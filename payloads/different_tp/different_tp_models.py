"""pytest plugin (`-p different_tp_models`): the default models of SGLang's different-TP test.

SGLang's test_disaggregation_different_tp.py does
`from sglang.test.test_utils import DEFAULT_MODEL_NAME_FOR_TEST, DEFAULT_MODEL_NAME_FOR_TEST_MLA`
when pytest imports it. This plugin sets those two module attributes first, so the image's
test runs on the models the Mooncake CI hosts keep cached, without editing any file inside
the image. pytest imports `-p` plugins before it loads conftest files or collects a test
module, and the override is made right here, at the plugin's import.
"""
from __future__ import annotations

from offline_policy import MHA_MODEL, MLA_MODEL

MODEL_OVERRIDES = {
    "DEFAULT_MODEL_NAME_FOR_TEST_MLA": MLA_MODEL,
    "DEFAULT_MODEL_NAME_FOR_TEST": MHA_MODEL,
}


def _apply_overrides() -> list[str]:
    from sglang.test import test_utils

    lines = []
    for name, value in MODEL_OVERRIDES.items():
        before = getattr(test_utils, name, "<not defined in this image>")
        setattr(test_utils, name, value)
        lines.append(f"[different_tp] sglang.test.test_utils.{name} = {value!r} "
                     f"(image default {before!r})")
    return lines


_OVERRIDE_LINES = _apply_overrides()
for _line in _OVERRIDE_LINES:
    print(_line, flush=True)


def pytest_report_header(config):
    return list(_OVERRIDE_LINES)
