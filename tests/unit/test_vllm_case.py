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


def test_the_version_is_the_printed_line_whatever_vllm_logs_around_it():
    """Importing vLLM logs to stderr, which the node's exec mixes in (after the print, too)."""
    from harness.run.engines import version_line
    output = ("INFO 12-07 10:00:00 [__init__.py:216] Automatically detected platform cuda.\n"
              "vllm.__version__=0.17.0\n"
              "WARNING 12-07 10:00:01 [interface.py:12] torch.compile is slow on first use\n")
    assert parse_version(version_line(output)) == Version("0.17.0")
    with pytest.raises(HarnessError, match="cannot read the vLLM version from ''"):
        parse_version(version_line("INFO only logs\n"))


def test_moe_runs_its_pytest_with_long_tracebacks(monkeypatch):
    """As the old script did: a failing MMLU check shows the whole traceback in the case log."""
    import contextlib
    from pathlib import Path
    from types import SimpleNamespace

    import cases.test_moe_mooncake as moe
    seen = []
    monkeypatch.setattr(moe, "run_payload", lambda ctx, argv, **kw: seen.append(argv))
    monkeypatch.setattr(moe, "offline_env", lambda node, model: {})
    node = SimpleNamespace(layout=SimpleNamespace(payloads=Path("/p")))

    class Ctx:
        local = node
        sglang_workspace = staticmethod(lambda node: "/sgl-workspace")
        sim_env = staticmethod(lambda node: {})
        pythonpath = staticmethod(lambda node, *extra: list(extra))

        step = staticmethod(lambda name: contextlib.nullcontext())

    moe.run(Ctx())
    (argv,) = seen
    assert argv[:3] == ["python3", "-m", "pytest"] and "--tb=long" in argv


def test_an_unreadable_version_quotes_at_most_80_characters_and_says_why():
    read = "vllm: command not found " * 10
    with pytest.raises(HarnessError) as info:
        parse_version(f"\n{read}\n")
    assert info.value.message == (f"cannot read the vLLM version from {read.strip()[:80]!r} "
                                  "(not a PEP 440 version)")
    assert info.value.__suppress_context__  # one line: no packaging traceback behind it
