import pytest
from packaging.version import Version

from harness.vllm_version import parse_version, uses_connector_proxy
from harness import simknobs
from harness.errors import HarnessError


@pytest.mark.parametrize("text,expected", [
    ("0.17.0", "0.17.0"), ("0.16.1rc1", "0.16.1rc1"), ("0.9.2+cu128", "0.9.2+cu128"),
    ("1.0", "1.0"), ("  0.16.0\n", "0.16.0"), ("0.16.0.dev5+g1a2b3c", "0.16.0.dev5+g1a2b3c"),
])
def test_versions(text, expected):
    assert parse_version(text) == Version(expected)


@pytest.mark.parametrize("text,own_proxy", [
    ("0.16.0", False), ("0.16.0.post1", False), ("0.16.1rc1", False), ("0.17.0", False),
    ("0.15.9", True), ("0.16.0rc1", True), ("0.16.0.dev5", True), ("0.16.0a1", True),
    ("0.9.2+cu128", True),
])
def test_proxy_choice_is_pep_440(text, own_proxy):
    """Pre-releases and dev builds of 0.16.0 are older than 0.16.0: the project's own proxy,
    as the old scripts decided with packaging.version."""
    assert uses_connector_proxy(parse_version(text)) is not own_proxy
    # the simulator's fault table follows the same rule (only launcher faults on own proxy)
    acting = simknobs.check_faults("proxy:http-500", text) if not own_proxy else None
    if own_proxy:
        with pytest.raises(HarnessError, match="own proxy"):
            simknobs.check_faults("proxy:http-500", text)
    else:
        assert acting == [("proxy", "http-500")]


@pytest.mark.parametrize("text", ["", "unknown", "0.17.0-banana", "17.x"])
def test_unreadable_version_is_an_error_naming_what_was_read(text):
    with pytest.raises(HarnessError) as info:
        parse_version(text)
    assert str(info.value).startswith(f"cannot read the vLLM version from {text.strip()!r}")
