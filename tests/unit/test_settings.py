import pytest

from harness.errors import SettingsError
from harness.settings import ImagePull, Settings, help_text
from harness.shrc import read_shrc, write_shrc


def test_defaults_match_the_spec():
    s = Settings.from_env({})
    assert s.container_name == "mooncake-ci-test"
    assert s.model_cache == "/root/.cache"
    assert s.registry_addr_sglang == "lmsysorg/sglang:latest"
    assert s.registry_addr_vllm == "vllm/vllm-openai:latest"
    assert s.use_huggingface_mirror is True and s.use_modelscope is False
    assert s.remote_test_dir == "/tmp/Mooncake_tone/mooncake_ci_test"
    assert s.image_pull is ImagePull.ALWAYS
    assert s.container_privileged is True and s.container_memlock == -1
    assert s.rdma_devices == ["/dev/infiniband/uverbs0", "/dev/infiniband/uverbs1",
                              "/dev/infiniband/rdma_cm"]
    assert s.timeout_server_ready_s == 240 and s.timeout_stop_s == 10
    assert s.timeout_gpu_drain_s == 60 and s.timeout_gpu_drain_after_kill_s == 45
    assert s.remote_container == "mooncake-ci-test"


def test_values_are_typed_and_parsed():
    s = Settings.from_env({"USE_MODELSCOPE": "TRUE", "CONTAINER_MEMLOCK": "8388608",
                           "IMAGE_PULL": "missing", "RDMA_DEVICES": "/dev/a, /dev/b",
                           "TIMEOUT_STOP_S": "2.5", "REMOTE_CONTAINER_NAME": "other"})
    assert s.use_modelscope is True
    assert s.container_memlock == 8388608
    assert s.image_pull is ImagePull.MISSING
    assert s.rdma_devices == ["/dev/a", "/dev/b"]
    assert s.timeout_stop_s == 2.5
    assert s.remote_container == "other"


@pytest.mark.parametrize("name,value,accepted", [
    ("IMAGE_PULL", "sometimes", "always, missing, never"),
    ("HARNESS_SIM", "maybe", "true, false"),
    ("REMOTE_SSH_PORT", "twenty-two", ""),
])
def test_bad_values_name_the_setting(name, value, accepted):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value) and value in str(err.value)
    assert accepted in str(err.value)


def test_gh_token_is_an_alias_and_never_exported():
    s = Settings.from_env({"GH_TOKEN": "sekret"})
    assert s.github_token == "sekret"
    assert all("sekret" not in value for _, value in s.env_items())
    assert "GITHUB_TOKEN" not in dict(s.env_items())


def test_unknown_sim_fault_is_refused():
    with pytest.raises(SettingsError, match="decode:explode"):
        Settings.from_env({"HARNESS_SIM": "true", "HARNESS_SIM_FAULTS": "decode:explode"})
    ok = Settings.from_env({"HARNESS_SIM": "true", "HARNESS_SIM_FAULTS": "payload:crash"})
    assert ok.sim_faults == "payload:crash"


def test_shrc_round_trip_without_secrets(tmp_path):
    s = Settings.from_env({"ARTIFACT_ID": "42", "GITHUB_TOKEN": "sekret",
                           "HUGGINGFACE_MIRROR": "https://m.example/a b"})
    path = tmp_path / "run" / ".shrc"
    write_shrc(path, s, {"BASE_DIR": "/x"})
    text = path.read_text()
    assert "sekret" not in text
    values = read_shrc(path)
    assert values["ARTIFACT_ID"] == "42"
    assert values["HUGGINGFACE_MIRROR"] == "https://m.example/a b"
    assert values["BASE_DIR"] == "/x"
    assert values["USE_HUGGINGFACE_MIRROR"] == "true"


def test_malformed_shrc_names_the_line(tmp_path):
    path = tmp_path / ".shrc"
    path.write_text("export A=1\nrm -rf /\n")
    with pytest.raises(SettingsError, match=r"\.shrc:2"):
        read_shrc(path)


def test_help_lists_every_setting():
    text = help_text()
    for name in ("CONTAINER_NAME", "MOONCAKE_WHEEL", "TIMEOUT_GPU_DRAIN_AFTER_KILL_S",
                 "HARNESS_SIM_FAULTS", "SSH_HOST_KEY_POLICY"):
        assert name in text


# --- ranges: a value that would misbehave later is one line now -------------------------------
TIMEOUT_NAMES = ["TIMEOUT_SERVER_READY_S", "TIMEOUT_HEALTH_S", "TIMEOUT_ROUTER_S",
                 "TIMEOUT_PROXY_S", "TIMEOUT_STOP_S", "TIMEOUT_GPU_DRAIN_S",
                 "TIMEOUT_GPU_DRAIN_AFTER_KILL_S", "TIMEOUT_PREFLIGHT_S", "TIMEOUT_CASE_S"]


@pytest.mark.parametrize("name", TIMEOUT_NAMES)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "-0.0"])
def test_every_timeout_must_be_finite_and_positive(name, value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    line = str(err.value)
    assert "\n" not in line and name in line
    assert "accepted: a finite number > 0" in line


def test_every_timeout_setting_is_checked():
    """A new TIMEOUT_* setting is covered without editing the check (or this list)."""
    from dataclasses import fields
    declared = sorted(f.metadata["env"] for f in fields(Settings)
                      if f.metadata["env"].startswith("TIMEOUT_"))
    assert declared == sorted(TIMEOUT_NAMES)


def test_small_positive_timeouts_are_fine():
    s = Settings.from_env({"TIMEOUT_STOP_S": "0.05", "TIMEOUT_CASE_S": "1e-3"})
    assert s.timeout_stop_s == 0.05 and s.timeout_case_s == 0.001


@pytest.mark.parametrize("value, ok", [("0", True), ("0.5", True), ("-0.1", False),
                                       ("nan", False), ("inf", False)])
def test_sim_startup_is_finite_and_not_negative(value, ok):
    if ok:
        assert Settings.from_env({"HARNESS_SIM_STARTUP_S": value}).sim_startup_s == float(value)
    else:
        with pytest.raises(SettingsError, match="HARNESS_SIM_STARTUP_S.*finite number >= 0"):
            Settings.from_env({"HARNESS_SIM_STARTUP_S": value})


@pytest.mark.parametrize("value, ok", [("1", True), ("22", True), ("65535", True),
                                       ("0", False), ("65536", False), ("99999", False),
                                       ("-22", False)])
def test_ssh_port_range(value, ok):
    if ok:
        assert Settings.from_env({"REMOTE_SSH_PORT": value}).remote_ssh_port == int(value)
    else:
        with pytest.raises(SettingsError, match=r"REMOTE_SSH_PORT: .*1-65535"):
            Settings.from_env({"REMOTE_SSH_PORT": value})


@pytest.mark.parametrize("value", ["/", "/usr", "/usr/lib", "/etc", "/bin", "/lib", "/var",
                                   "/boot", "/root", "/home", "/home/ci", "~", "~/.ssh",
                                   "/root/.ssh", "/proc/self", "/sys/x", "/dev/x", "relative"])
def test_remote_test_dir_may_not_be_a_system_or_home_dir(value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"REMOTE_TEST_DIR": value})
    assert f"REMOTE_TEST_DIR: {value!r}" in str(err.value) and "\n" not in str(err.value)


def test_remote_test_dir_of_its_own_is_fine():
    assert Settings.from_env({"REMOTE_TEST_DIR": "/srv/ci/mooncake"}).remote_test_dir == \
        "/srv/ci/mooncake"


@pytest.mark.parametrize("name", ["LOCAL_IP", "REMOTE_IP"])
@pytest.mark.parametrize("value", ["::1", "[::1]", "fe80::1%eth0", "2001:db8::2"])
def test_ipv6_is_refused_with_one_line(name, value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value) and "IPv6 addresses are not supported" in str(err.value)


@pytest.mark.parametrize("value", ["10.0.0.5", "127.0.0.2", "gpu-host-1.example"])
def test_ipv4_and_host_names_are_fine(value):
    assert Settings.from_env({"REMOTE_IP": value}).remote_ip == value


def test_help_says_ipv6_is_refused():
    assert "IPv6 is refused" in help_text()


# --- secrets ---------------------------------------------------------------------------------
def test_repr_never_shows_the_token_or_url_credentials():
    s = Settings.from_env({"GITHUB_TOKEN": "ghp_reprSECRET123",
                           "MOONCAKE_WHEEL": "https://ci:hunter22@h.example/w.whl?token=abc123"})
    shown = repr(s) + str(s)
    assert "ghp_reprSECRET123" not in shown
    assert "hunter22" not in shown and "abc123" not in shown
    assert "h.example/w.whl" in shown and "container_name='mooncake-ci-test'" in shown


def test_shrc_masks_credentials_inside_urls(tmp_path):
    s = Settings.from_env({
        "MOONCAKE_WHEEL": "https://ci:hunter22@h.example/w.whl?X-Amz-Signature=s1g&v=2",
        "ROUTER_PIP_INDEX_URL": "https://u:pw99xy@pypi.example/simple/"})
    path = tmp_path / ".shrc"
    write_shrc(path, s, {})
    text = path.read_text()
    assert "hunter22" not in text and "s1g" not in text and "pw99xy" not in text
    values = read_shrc(path)
    assert values["MOONCAKE_WHEEL"] == "https://h.example/w.whl?X-Amz-Signature=***&v=2"
    assert values["ROUTER_PIP_INDEX_URL"] == "https://pypi.example/simple/"


def test_faults_without_the_simulator_are_refused():
    """Nothing plays a fault on real engines: the knob would be a test that cannot fail."""
    with pytest.raises(SettingsError, match="HARNESS_SIM is not true"):
        Settings.from_env({"HARNESS_SIM_FAULTS": "decode:crash"})
    assert Settings.from_env({"HARNESS_SIM_FAULTS": "decode:crash", "HARNESS_SIM": "true"})


def test_readme_lists_every_setting():
    """The README's settings table is what people read: a setting added without a row there
    (or a row left for a setting that is gone) fails here."""
    import re
    from dataclasses import fields
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z_]+)", readme, re.M))
    assert rows == {f.metadata["env"] for f in fields(Settings)}
