import pytest

from cases.test_vllm_1p1d_erdma import CONNECTOR_PROXY_SINCE, parse_version
from harness.errors import HarnessError


@pytest.mark.parametrize("text,expected", [
    ("0.17.0", (0, 17, 0)), ("0.16.1rc1", (0, 16, 1)), ("0.9.2+cu128", (0, 9, 2)),
    ("1.0", (1, 0, 0)), ("  0.16.0\n", (0, 16, 0)),
])
def test_versions(text, expected):
    assert parse_version(text) == expected


def test_proxy_choice_boundary():
    assert parse_version("0.16.0") >= CONNECTOR_PROXY_SINCE
    assert parse_version("0.15.9") < CONNECTOR_PROXY_SINCE


@pytest.mark.parametrize("text", ["", "unknown", "v0.17"])
def test_unreadable_version_is_an_error_not_a_guess(text):
    with pytest.raises(HarnessError, match="cannot read the vLLM version"):
        parse_version(text)
