"""What a person sees when a setting is wrong (SPEC §2: one clear line saying what is wrong and
what is accepted), and how the values people actually type are read."""
from __future__ import annotations

import pytest

from harness import redaction
from harness.errors import SettingsError
from harness.settings import Settings


@pytest.fixture(autouse=True)
def fresh_secrets(monkeypatch):
    """Each test starts with nothing remembered, so none passes thanks to an earlier one."""
    monkeypatch.setattr(redaction, "_known", set())


def message(env: dict[str, str]) -> SettingsError:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    return err.value


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "Yes", "on", "ON", " on "])
def test_true_spellings(raw):
    assert Settings.from_env({"INSTALL_ERDMA": "false", "USE_MODELSCOPE": raw}).use_modelscope


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "NO", "off", "OFF"])
def test_false_spellings(raw):
    assert Settings.from_env({"USE_HUGGINGFACE_MIRROR": raw}).use_huggingface_mirror is False


def test_exact_messages_for_values_that_do_not_parse():
    assert str(message({"HARNESS_SIM": "maybe"})) == (
        "bad value for HARNESS_SIM: 'maybe' (accepted: true, false)")
    assert str(message({"IMAGE_PULL": "sometimes"})) == (
        "bad value for IMAGE_PULL: 'sometimes' (accepted: always, missing, never)")
    assert str(message({"REMOTE_SSH_PORT": "ssh"})) == "bad value for REMOTE_SSH_PORT: 'ssh'"


def test_exact_messages_for_values_out_of_range():
    assert str(message({"REMOTE_SSH_PORT": "0"})) == (
        "bad value for REMOTE_SSH_PORT: 0 (accepted: a TCP port, 1-65535)")
    assert str(message({"TIMEOUT_STOP_S": "0"})) == (
        "bad value for TIMEOUT_STOP_S: 0.0 (accepted: a finite number > 0, in seconds)")
    assert str(message({"HARNESS_SIM_STARTUP_S": "-1"})) == (
        "bad value for HARNESS_SIM_STARTUP_S: -1.0 (accepted: a finite number >= 0, in seconds)")


@pytest.mark.parametrize("name", ["LOCAL_IP", "REMOTE_IP"])
def test_addresses(name):
    assert getattr(Settings.from_env({name: "10.0.0.2"}), name.lower()) == "10.0.0.2"
    assert getattr(Settings.from_env({name: "gpu-host-2.example"}), name.lower())
    for ipv6 in ("::1", "[fe80::1]", "[host]"):
        assert str(message({name: ipv6})) == (
            f"bad value for {name}: {ipv6!r} (IPv6 addresses are not supported; accepted: an "
            "IPv4 address or a host name)")
    assert str(message({name: "a b"})) == (
        f"bad value for {name}: 'a b' (accepted: an IPv4 address or a host name)")


def test_remote_test_dir_refusal_says_what_to_use():
    err = message({"REMOTE_TEST_DIR": "/usr"})
    assert str(err).startswith("bad value for REMOTE_TEST_DIR: '/usr' (")
    assert err.hint == "use a directory of its own, e.g. /tmp/Mooncake_tone/mooncake_ci_test"


def test_an_empty_variable_means_the_default():
    s = Settings.from_env({"CONTAINER_NAME": "", "REMOTE_SSH_PORT": "", "IMAGE_PULL": ""})
    assert s.container_name == "mooncake-ci-test" and s.remote_ssh_port == 22
    assert s.image_pull.value == "always"


def test_without_a_mapping_the_process_environment_is_read(monkeypatch):
    monkeypatch.setenv("CONTAINER_NAME", "from-the-env")
    monkeypatch.setenv("GH_TOKEN", "ghp_FromProcessEnvironment123")
    s = Settings.from_env()
    assert s.container_name == "from-the-env"
    assert s.github_token == "ghp_FromProcessEnvironment123"


def test_a_token_read_from_the_environment_is_masked_from_then_on():
    secret = "ghp_RememberedBySettings55555"
    Settings.from_env({"GITHUB_TOKEN": secret})
    assert redaction.scrub(f"echo {secret}!") == "echo ***!"


def test_credentials_in_a_wheel_url_are_masked_from_then_on():
    Settings.from_env({"MOONCAKE_WHEEL": "https://ci:s3cr3t-pw@h.example/w.whl"})
    assert redaction.scrub("s3cr3t-pw") == "***"
