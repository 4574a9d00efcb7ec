"""Per-host preparation steps (SPEC §5) with small fakes: no engine, no container."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import docker.errors
import pytest

from harness.prep import per_host as prep

from harness.prep import wheel
from harness.errors import CommandFailed, DockerError, SettingsError
from harness.hosts.local import Completed, LocalHost
from harness.layout import CONTAINER_ROOT, Layout
from harness.hosts.nodes import HostNode, Node
from harness.settings import ImagePull, Settings
from harness.results.steps import Skipped
from harness.shrc import read_shrc

WHEEL = "mooncake_transfer_engine-0.3.13-cp311-cp311-manylinux_2_35_x86_64.whl"


def settings(**env: str) -> Settings:
    return Settings.from_env(dict(env))


# --- run dir and the wheel-skip rule -----------------------------------------------------------
def make_tree(tmp_path: Path) -> tuple[LocalHost, Layout]:
    return LocalHost(), Layout.at(tmp_path)


def test_first_run_dir_writes_shrc_and_does_not_skip(tmp_path):
    host, layout = make_tree(tmp_path)
    assert prep.prepare_run_dir(settings(ARTIFACT_ID="42", GITHUB_TOKEN="s3cret"), host,
                                layout) is False
    for sub in ("run", "run/logs", "run/pids", "run/whls"):
        assert (tmp_path / sub).is_dir()
    values = read_shrc(tmp_path / "run/.shrc")
    assert values["ARTIFACT_ID"] == "42"
    assert values["BASE_DIR"] == str(tmp_path)
    assert values["TEST_RESULT_DIR"] == str(tmp_path / "run/logs")
    assert "s3cret" not in (tmp_path / "run/.shrc").read_text()


def fetched(tmp_path: Path, content: bytes = b"zip", **env: str) -> Path:
    """A wheel in run/whls as a successful fetch for `env`'s source leaves it (with its stamp)."""
    path = tmp_path / "run/whls" / WHEEL
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    wheel.write_stamp(path.parent, settings(**env), path)
    return path


def test_same_artifact_with_its_stamped_wheel_skips_the_download(tmp_path):
    host, layout = make_tree(tmp_path)
    prep.prepare_run_dir(settings(ARTIFACT_ID="42"), host, layout)
    fetched(tmp_path, ARTIFACT_ID="42", GIT_REPO="o/r")
    assert prep.prepare_run_dir(settings(ARTIFACT_ID="42", GIT_REPO="o/r"), host, layout)
    # a different artifact, repository or API: download again
    assert not prep.prepare_run_dir(settings(ARTIFACT_ID="43", GIT_REPO="o/r"), host, layout)
    assert not prep.prepare_run_dir(settings(ARTIFACT_ID="42", GIT_REPO="o/x"), host, layout)
    assert not prep.prepare_run_dir(settings(ARTIFACT_ID="42", GIT_REPO="o/r",
                                             GITHUB_API_URL="http://127.0.0.1:9"), host, layout)


def test_shrc_alone_is_not_trusted(tmp_path):
    """The issue's case: a run with ARTIFACT_ID=43 failed before its fetch, so .shrc records 43
    beside the wheel of 42; the next run with 43 must download it, not take 42's wheel."""
    host, layout = make_tree(tmp_path)
    fetched(tmp_path, ARTIFACT_ID="42", GIT_REPO="o/r")
    prep.prepare_run_dir(settings(ARTIFACT_ID="43", GIT_REPO="o/r"), host, layout)
    assert read_shrc(tmp_path / "run/.shrc")["ARTIFACT_ID"] == "43"
    assert prep.prepare_run_dir(settings(ARTIFACT_ID="43", GIT_REPO="o/r"), host, layout) is False


def test_a_changed_or_unstamped_wheel_is_fetched_again(tmp_path):
    host, layout = make_tree(tmp_path)
    same = settings(ARTIFACT_ID="42", GIT_REPO="o/r")
    path = fetched(tmp_path, ARTIFACT_ID="42", GIT_REPO="o/r")
    path.write_bytes(b"zip, but another build")          # the hash no longer matches
    assert prep.prepare_run_dir(same, host, layout) is False
    path = fetched(tmp_path, ARTIFACT_ID="42", GIT_REPO="o/r")
    (path.parent / wheel.STAMP_NAME).unlink()              # a wheel nobody vouches for
    assert prep.prepare_run_dir(same, host, layout) is False
    fetched(tmp_path, ARTIFACT_ID="42", GIT_REPO="o/r")
    (path.parent / wheel.STAMP_NAME).write_text("{not json")
    assert prep.prepare_run_dir(same, host, layout) is False
    fetched(tmp_path, ARTIFACT_ID="42", GIT_REPO="o/r")
    (path.parent / "mooncake_other-1-py3-none-any.whl").write_bytes(b"2")  # two wheels
    assert prep.prepare_run_dir(same, host, layout) is False


def test_no_skip_without_artifact_or_with_a_wheel_source(tmp_path):
    host, layout = make_tree(tmp_path)
    fetched(tmp_path, ARTIFACT_ID="42")
    assert prep.prepare_run_dir(settings(ARTIFACT_ID="42"), host, layout) is True
    assert prep.prepare_run_dir(settings(), host, layout) is False   # empty ARTIFACT_ID
    assert prep.prepare_run_dir(settings(ARTIFACT_ID="42", MOONCAKE_WHEEL="/w.whl"), host,
                                layout) is False
    fetched(tmp_path, MOONCAKE_WHEEL=str(tmp_path / "run/whls" / WHEEL))
    assert prep.prepare_run_dir(settings(ARTIFACT_ID="42"), host, layout) is False


def test_malformed_shrc_is_a_settings_error_with_hint(tmp_path):
    host, layout = make_tree(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run/.shrc").write_text("export OK=1\nrm -rf /\n")
    with pytest.raises(SettingsError) as info:
        prep.prepare_run_dir(settings(ARTIFACT_ID="42"), host, layout)
    assert info.value.step == "run-dir" and info.value.host == "local"
    assert ".shrc" in str(info.value) and "delete" in info.value.hint
    assert (tmp_path / "run/.shrc").read_text().startswith("export OK=1")  # left for people


# --- image pull policy -------------------------------------------------------------------------
class FakeImages:
    def __init__(self, client):
        self.client = client

    def get(self, name):
        if name not in self.client.present:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return name


class FakeAPI:
    def __init__(self, client):
        self.client = client

    def pull(self, image, stream=False, decode=False):
        self.client.pulls.append(image)
        if self.client.pull_raises:
            raise self.client.pull_raises
        yield {"status": "Pulling from x"}
        if self.client.pull_error:
            yield {"error": self.client.pull_error,
                   "errorDetail": {"message": self.client.pull_error}}
            return
        self.client.present.add(image)
        yield {"status": "Downloaded newer image"}


class FakeClient:
    def __init__(self, present=(), pull_error=None, pull_raises=None):
        self.present = set(present)
        self.pulls: list[str] = []
        self.pull_error = pull_error
        self.pull_raises = pull_raises
        self.images = FakeImages(self)
        self.api = FakeAPI(self)


def test_pull_always_pulls_even_when_present():
    client = FakeClient(present={"img:1"})
    prep.pull_image(client, "img:1", ImagePull.ALWAYS)
    assert client.pulls == ["img:1"]


def test_pull_always_error_in_stream_names_image_and_answer():
    client = FakeClient(pull_error="manifest for img:1 not found: manifest unknown")
    with pytest.raises(DockerError) as info:
        prep.pull_image(client, "img:1", "always", host="remote")
    text = str(info.value)
    assert "img:1" in text and "manifest unknown" in text
    assert info.value.step == "pull-image" and info.value.host == "remote"


def test_pull_always_engine_error():
    error = docker.errors.APIError("500", explanation="Get https://127.0.0.1:1/v2/: connection "
                                                      "refused")
    client = FakeClient(pull_raises=error)
    with pytest.raises(DockerError, match=r"cannot pull image 127.0.0.1:1/nope:latest: .*refused"):
        prep.pull_image(client, "127.0.0.1:1/nope:latest", ImagePull.ALWAYS)


def test_pull_missing():
    client = FakeClient(present={"img:1"})
    prep.pull_image(client, "img:1", ImagePull.MISSING)
    assert client.pulls == []
    prep.pull_image(client, "img:2", ImagePull.MISSING)
    assert client.pulls == ["img:2"]


def test_pull_never():
    client = FakeClient(present={"img:1"})
    prep.pull_image(client, "img:1", ImagePull.NEVER)
    with pytest.raises(DockerError, match="img:2 is not present and IMAGE_PULL=never") as info:
        prep.pull_image(client, "img:2", ImagePull.NEVER)
    assert client.pulls == []
    assert "IMAGE_PULL=missing" in info.value.hint


def test_pull_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        prep.pull_image(FakeClient(), "img:1", "sometimes")


# --- eRDMA -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, codename, warns", [
    ('NAME="Ubuntu"\nVERSION_CODENAME=noble\nUBUNTU_CODENAME=noble\n', "noble", False),
    ('UBUNTU_CODENAME="jammy"\n', "jammy", False),
    ("UBUNTU_CODENAME=focal\n", "jammy", True),
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n', "jammy", True),
    ("", "jammy", True),
])
def test_erdma_codename(text, codename, warns):
    chosen, warning = prep.erdma_codename(text)
    assert chosen == codename
    assert (warning is not None) is warns
    if warns:
        assert "jammy" in warning


def test_erdma_source_line():
    assert prep.erdma_source_line("http://m.example/erdma/", "noble") == (
        "deb [signed-by=/etc/apt/trusted.gpg.d/erdma.gpg] http://m.example/erdma/apt/ubuntu "
        "noble/erdma main")


class FakeNode(Node):
    """Records argv; answers by the first matching substring rule (exit code, output)."""

    def __init__(self, rules=None, name="local", root=CONTAINER_ROOT):
        self.name = name
        self.host = LocalHost(name)
        self.layout = Layout.at(root)
        self.host_layout = Layout.at("/srv/project")
        self.rules = rules or {}
        self.calls: list[list[str]] = []

    def _run(self, argv, *, timeout, check):
        self.calls.append(argv)
        joined = " ".join(argv)
        code, out = 0, ""
        for needle, answer in self.rules.items():
            if needle in joined:
                code, out = answer
                break
        done = Completed(argv, code, out)
        if check and not done.ok:
            raise CommandFailed(argv, code, out, host=self.name)
        return done

    def joined(self) -> list[str]:
        return [" ".join(c) for c in self.calls]


def test_install_erdma_commands_in_order():
    node = FakeNode({"/etc/os-release": (0, "UBUNTU_CODENAME=noble\n")})
    prep.install_erdma(node, settings(ERDMA_REPO_URL="http://mirror.test/erdma"))
    calls = node.joined()
    assert calls[0] == "cat /etc/os-release"
    assert "curl -fsSL http://mirror.test/erdma/GPGKEY | gpg" in calls[1]
    assert "--dearmor -o /etc/apt/trusted.gpg.d/erdma.gpg" in calls[1]
    assert "set -o pipefail" in calls[1]
    assert ("'deb [signed-by=/etc/apt/trusted.gpg.d/erdma.gpg] http://mirror.test/erdma/apt/"
            "ubuntu noble/erdma main' > /etc/apt/sources.list.d/erdma.list") in calls[2]
    assert "apt-get update" in calls[3] and "DEBIAN_FRONTEND=noninteractive" in calls[3]
    assert ("apt-get install -y libibverbs1 ibverbs-providers ibverbs-utils librdmacm1"
            in calls[4])
    assert calls[5] == "ibv_devinfo"
    assert len(calls) == 6


def test_install_erdma_unknown_release_uses_jammy(caplog):
    node = FakeNode({"/etc/os-release": (1, "")})
    with caplog.at_level("WARNING"):
        prep.install_erdma(node, settings())
    assert any("jammy/erdma main" in c for c in node.joined())
    assert "using jammy" in caplog.text


def test_install_erdma_failures_name_step_and_host():
    node = FakeNode({"ibv_devinfo": (255, "Failed to get IB devices list"),
                     "os-release": (0, "UBUNTU_CODENAME=jammy")}, name="remote")
    with pytest.raises(CommandFailed) as info:
        prep.install_erdma(node, settings())
    assert info.value.step == "install-erdma" and info.value.host == "remote"
    assert "INSTALL_ERDMA=false" in info.value.hint
    node = FakeNode({"apt-get update": (100, "E: could not resolve mirror")})
    with pytest.raises(CommandFailed, match=r"\[step install-erdma, host local\]"):
        prep.install_erdma(node, settings())
    assert not any("ibv_devinfo" in c for c in node.joined())


def test_install_erdma_skipped():
    """The step decides its own skip, once; the run's step recorder tells it."""
    node = FakeNode()
    assert prep.install_erdma(node, settings(INSTALL_ERDMA="false")) == \
        Skipped("INSTALL_ERDMA=false")
    assert "HARNESS_RUNTIME=host" in prep.install_erdma(node, settings(HARNESS_RUNTIME="host")).why
    assert node.calls == []


# --- Python packages ---------------------------------------------------------------------------
def test_pip_install_vllm_group():
    node = FakeNode()
    prep.install_python_packages(node, settings(), "VLLM", WHEEL)
    calls = node.joined()
    wheel = f"/test_run/run/whls/{WHEEL}"
    assert len(calls) == 2
    assert f"python3 -m pip install --force-reinstall --no-deps {wheel}" in calls[0]
    assert calls[1].endswith(f"python3 -m pip install {wheel}")


def test_pip_install_sglang_router_present():
    node = FakeNode()
    prep.install_python_packages(node, settings(), "SGLANG", WHEEL)
    assert node.joined()[-1] == "python3 -c import sglang_router"
    assert len(node.calls) == 3


def test_pip_install_sglang_router_missing():
    node = FakeNode({"import sglang_router": (1, "ModuleNotFoundError")})
    prep.install_python_packages(node, settings(ROUTER_PIP_INDEX_URL="http://idx.test/simple"),
                                 "SGLANG", WHEEL)
    assert node.joined()[-1].endswith(
        "python3 -m pip install --index-url http://idx.test/simple sglang-router")
    assert len(node.calls) == 4


def test_pip_install_failure_names_step():
    node = FakeNode({"--no-deps": (1, "ERROR: not a valid wheel")}, name="remote")
    with pytest.raises(CommandFailed) as info:
        prep.install_python_packages(node, settings(), "SGLANG", WHEEL)
    assert info.value.step == "pip-install" and info.value.host == "remote"
    assert "not a valid wheel" in info.value.details()


def test_pip_install_on_a_host_node(tmp_path):
    """HARNESS_RUNTIME=host: the same calls go to the host's Python through a HostNode."""
    record = tmp_path / "calls.txt"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/bash\necho "$*" >> {record}\n'
                           '[ "$1" = -c ] && exit 1\nexit 0\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    node = HostNode(LocalHost(), tmp_path)
    prep.install_python_packages(node, settings(HARNESS_RUNTIME="host"), "SGLANG",
                                 f"/elsewhere/{WHEEL}", python=str(fake_python))
    lines = record.read_text().splitlines()
    wheel = os.path.join(tmp_path, "run/whls", WHEEL)
    assert lines == [
        f"-m pip install --force-reinstall --no-deps {wheel}",
        f"-m pip install {wheel}",
        "-c import sglang_router",
        "-m pip install --index-url https://mirrors.aliyun.com/pypi/simple/ sglang-router",
    ]


def test_start_container_names_step():
    class Refusing:
        name = "local"
        container_name = "mh-x"

        def start(self, image, run_id):
            raise DockerError("cannot start container mh-x from img: refused", host="local")

    with pytest.raises(DockerError) as info:
        prep.start_container(Refusing(), "img", "r1")
    assert info.value.step == "start-container"
