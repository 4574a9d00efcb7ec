import pytest

from harness.errors import SettingsError
from harness.settings import ImagePull, Settings, help_text, read_shrc, write_shrc


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
