"""How the settings are read and which values are refused before anything starts
(Settings.from_env, Settings.validate): the exact line a person sees, and the edges of every
range (SPEC §2, §3)."""
from __future__ import annotations

import pytest

from harness import redaction
from harness.errors import SettingsError
from harness.settings import ImagePull, Settings, SimMooncake


@pytest.fixture(autouse=True)
def fresh_secrets(monkeypatch):
    """Each test starts with nothing remembered, so none passes thanks to an earlier one."""
    monkeypatch.setattr(redaction, "_known", set())


def refusal(env: dict[str, str], **overrides) -> str:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env, **overrides)
    return str(err.value)


# --- the simulator's faults ------------------------------------------------------------------
def test_faults_without_the_simulator_are_refused_in_one_exact_line():
    assert refusal({"HARNESS_SIM_FAULTS": "decode:crash"}) == (
        "HARNESS_SIM_FAULTS is set but HARNESS_SIM is not true: faults are played by the "
        "simulator only")


def test_blank_faults_are_no_faults():
    settings = Settings.from_env({"HARNESS_SIM_FAULTS": "  "})
    assert settings.sim_faults.strip() == "" and not settings.harness_sim


def test_a_mooncake_fault_needs_mooncake_in_the_simulator():
    assert refusal({"HARNESS_SIM": "true", "HARNESS_SIM_FAULTS": "decode:crash, mooncake:refuse",
                    "HARNESS_SIM_MOONCAKE": "off"}) == (
        "HARNESS_SIM_FAULTS has a mooncake fault but HARNESS_SIM_MOONCAKE is off: nothing would "
        "move to break")


@pytest.mark.parametrize("mooncake", ["auto", "required"])
def test_a_mooncake_fault_with_mooncake_on_is_accepted(mooncake):
    settings = Settings.from_env({"HARNESS_SIM": "true", "HARNESS_SIM_FAULTS": "mooncake:refuse",
                                  "HARNESS_SIM_MOONCAKE": mooncake})
    assert settings.effective_sim_mooncake is SimMooncake.REQUIRED


def test_other_faults_with_mooncake_off_are_accepted():
    settings = Settings.from_env({"HARNESS_SIM": "true", "HARNESS_SIM_FAULTS": "decode:crash",
                                  "HARNESS_SIM_MOONCAKE": "off"})
    assert settings.effective_sim_mooncake is SimMooncake.OFF


# --- numbers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_progress_every_must_be_finite_and_positive(value):
    assert refusal({"PROGRESS_EVERY_S": value}) == (
        f"bad value for PROGRESS_EVERY_S: {float(value)!r} (accepted: a finite number > 0, "
        "in seconds)")


def test_a_small_progress_interval_is_accepted():
    assert Settings.from_env({"PROGRESS_EVERY_S": "0.01"}).progress_every_s == 0.01


@pytest.mark.parametrize("value", ["nan", "-inf", "inf"])
def test_sim_startup_must_be_finite(value):
    assert refusal({"HARNESS_SIM_STARTUP_S": value}) == (
        f"bad value for HARNESS_SIM_STARTUP_S: {float(value)!r} (accepted: a finite number "
        ">= 0, in seconds)")


@pytest.mark.parametrize("value", ["0", "-1", "4194305"])
def test_kv_bytes_per_token_out_of_range_is_one_exact_line(value):
    assert refusal({"HARNESS_SIM_KV_BYTES_PER_TOKEN": value}) == (
        f"bad value for HARNESS_SIM_KV_BYTES_PER_TOKEN: {value} (accepted: 1 to 4194304 bytes)")


@pytest.mark.parametrize("value", ["1", "4194304"])
def test_kv_bytes_per_token_edges_are_accepted(value):
    settings = Settings.from_env({"HARNESS_SIM_KV_BYTES_PER_TOKEN": value})
    assert settings.sim_kv_bytes_per_token == int(value)


def test_a_bad_value_given_in_code_is_refused_like_one_from_the_environment():
    assert refusal({}, remote_ssh_port=70000) == (
        "bad value for REMOTE_SSH_PORT: 70000 (accepted: a TCP port, 1-65535)")


# --- addresses and the directory each run wipes --------------------------------------------------
def test_the_refused_address_is_named_by_its_own_setting():
    assert refusal({"LOCAL_IP": "10.0.0.1", "REMOTE_IP": "bad host"}).startswith(
        "bad value for REMOTE_IP: 'bad host'")
    assert refusal({"LOCAL_IP": "bad host", "REMOTE_IP": "10.0.0.1"}).startswith(
        "bad value for LOCAL_IP: 'bad host'")


def test_the_remote_test_dir_refusal_says_why_and_that_it_is_wiped():
    from harness.wipe import wipe_refusal
    why = wipe_refusal("/usr")
    assert why
    assert refusal({"REMOTE_TEST_DIR": "/usr"}) == (
        f"bad value for REMOTE_TEST_DIR: '/usr' ({why}); each run wipes it on the remote host")


# --- reading the environment ----------------------------------------------------------------
def test_github_token_wins_over_gh_token_when_both_are_set():
    settings = Settings.from_env({"GITHUB_TOKEN": "ghp_FirstName0000000",
                                  "GH_TOKEN": "ghp_SecondName000000"})
    assert settings.github_token == "ghp_FirstName0000000"


def test_an_empty_github_token_lets_gh_token_in():
    settings = Settings.from_env({"GITHUB_TOKEN": "", "GH_TOKEN": "ghp_SecondName000000"})
    assert settings.github_token == "ghp_SecondName000000"
    assert settings.given("GITHUB_TOKEN")


def test_only_secret_values_are_remembered_as_secrets():
    Settings.from_env({"CONTAINER_NAME": "plain-container", "GITHUB_TOKEN": "ghp_Kept0000000000"})
    assert redaction.known_secrets() == ["ghp_Kept0000000000"]


def test_url_credentials_of_any_setting_are_remembered():
    Settings.from_env({"ROUTER_PIP_INDEX_URL": "https://ci:idx-pa55@pypi.example/simple/"})
    assert redaction.known_secrets() == ["idx-pa55"]


def test_an_override_wins_over_the_environment_and_counts_as_given():
    settings = Settings.from_env({"CONTAINER_NAME": "from-env", "REMOTE_USER": "ci"},
                                 container_name="from-code")
    assert settings.container_name == "from-code"
    assert settings.given("CONTAINER_NAME") and settings.given("remote_user")
    assert not settings.given("REMOTE_SSH_PORT")


@pytest.mark.parametrize("raw, pull", [("Never", ImagePull.NEVER),
                                       (" missing ", ImagePull.MISSING)])
def test_choices_are_read_whatever_their_case_and_spaces(raw, pull):
    assert Settings.from_env({"IMAGE_PULL": raw}).image_pull is pull


def test_a_list_setting_drops_blank_items_and_spaces():
    settings = Settings.from_env({"RDMA_DEVICES": " /dev/a, ,/dev/b ,"})
    assert settings.rdma_devices == ["/dev/a", "/dev/b"]


@pytest.mark.parametrize("env, expected", [
    ({"TIMEOUT_CASE_S": "soon"}, "bad value for TIMEOUT_CASE_S: 'soon'"),
    ({"HARNESS_SIM_KV_BYTES_PER_TOKEN": "1.5"},
     "bad value for HARNESS_SIM_KV_BYTES_PER_TOKEN: '1.5'"),
    ({"USE_MODELSCOPE": "2"}, "bad value for USE_MODELSCOPE: '2' (accepted: true, false)"),
    ({"HARNESS_RUNTIME": "podman"}, "bad value for HARNESS_RUNTIME: 'podman' (accepted: docker, "
                                    "host)"),
])
def test_a_value_that_does_not_parse_is_one_exact_line(env, expected):
    assert refusal(env) == expected


# --- the Mooncake pre-flight ------------------------------------------------------------------
@pytest.mark.parametrize("value", ["4095", "4294967297", "0"])
def test_preflight_max_bytes_out_of_range_is_one_exact_line(value):
    assert refusal({"PREFLIGHT_MAX_BYTES": value}) == (
        f"bad value for PREFLIGHT_MAX_BYTES: {value} (accepted: 4096 to 4294967296 bytes)")


@pytest.mark.parametrize("value", ["4096", "4294967296"])
def test_preflight_max_bytes_edges_are_accepted(value):
    assert Settings.from_env({"PREFLIGHT_MAX_BYTES": value}).preflight_max_bytes == int(value)
