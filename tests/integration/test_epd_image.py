"""The EPD case sends a cat photo of at least 8 MP, and EPD_IMAGE names another (issue 8,
item 2). The photo's size is read from the JPEG itself (its SOF marker); the demo cluster's
simulated encoder sizes its embedding from the pixels it is sent, as a real one does.
"""
from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cases.test_epd_sglang import chat_request, read_image
from harness.cli import DEMO_SETTINGS
from harness.errors import SettingsError
from harness.settings import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CASE = "test_epd_sglang"
MODEL_DIR = "Qwen__Qwen2.5-VL-7B-Instruct"
OLD_CASE_PIXELS = 2326 * 3495  # the photo the shell scripts sent


def sof_size(jpeg: bytes) -> tuple[int, int]:
    """(width, height) from a baseline or progressive JPEG's SOF0/SOF2 segment."""
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    at = 2
    while at < len(jpeg):
        marker, length = jpeg[at + 1], struct.unpack(">H", jpeg[at + 2:at + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", jpeg[at + 5:at + 9])
            return width, height
        at += 2 + length
    raise AssertionError("no SOF marker")


class _Ctx:  # what read_image uses of a CaseContext
    def __init__(self, settings: Settings, project: Path) -> None:
        self.settings, self.local_project = settings, project


def sent_image(settings: Settings) -> bytes:
    image, mime = read_image(_Ctx(settings, ROOT))
    url = chat_request(image, mime)["messages"][0]["content"][1]["image_url"]["url"]
    head, _, payload = url.partition(",")
    assert head == "data:image/jpeg;base64"
    return base64.b64decode(payload, validate=True)


def test_the_case_sends_at_least_8_megapixels_by_default():
    width, height = sof_size(sent_image(Settings.from_env({})))
    assert width * height >= 8_000_000, (width, height)
    assert width * height >= OLD_CASE_PIXELS * 0.95


def test_epd_image_names_another_file_and_a_bad_one_is_one_line(tmp_path):
    small = sent_image(Settings.from_env({"EPD_IMAGE": "payloads/assets/cat.jpg"}))
    assert sof_size(small) == (451, 300)
    (tmp_path / "notes.txt").write_text("not a picture")
    for value, words in ((str(tmp_path / "absent.jpg"), "cannot read"),
                         (str(tmp_path / "notes.txt"), "is not a JPEG or PNG")):
        with pytest.raises(SettingsError) as info:
            sent_image(Settings.from_env({"EPD_IMAGE": value}))
        assert str(info.value).startswith("bad value for EPD_IMAGE") and words in str(info.value)
        assert "\n" not in str(info.value)


def run_epd(project: Path, **extra: str) -> tuple[str, dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MOONCAKE_"))}
    env.update(DEMO_SETTINGS)
    env.update({"REMOTE_TEST_DIR": str(project.parent / "remote-host" / "project"),
                "HARNESS_SIM_FAULTS": "", "TIMEOUT_STOP_S": "5",
                "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})
    env.update(extra)
    done = subprocess.run([sys.executable, "-m", "harness", "single", CASE], cwd=project,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    logs = project / "run" / "logs" / CASE
    status = json.loads((logs / "test_results.json").read_text())["status"]
    assert status == "Pass", done.stdout[-4000:]
    answer = json.loads((logs / MODEL_DIR / "curl_response.log").read_text())
    return (logs / MODEL_DIR / "encoder.log").read_text(errors="replace"), answer, done.stdout


def image_tokens(encoder_log: str) -> int:
    found = re.findall(r"encode (\d+)x(\d+): (\d+) image tokens", encoder_log)
    assert len(found) == 1, encoder_log[-2000:]
    return int(found[0][2])


def test_the_encoder_embeds_the_big_photo_and_still_sees_a_cat(project):
    encoder_log, answer, _ = run_epd(project)
    assert "encode 3608x2400:" in encoder_log
    assert image_tokens(encoder_log) > 10_000  # the old case moved about ten thousand
    assert "cat" in answer["choices"][0]["message"]["content"].lower()


def test_epd_image_is_honoured_on_the_cluster(project):
    encoder_log, answer, _ = run_epd(project, EPD_IMAGE="payloads/assets/cat.jpg")
    assert "encode 451x300:" in encoder_log
    assert image_tokens(encoder_log) < 300
    assert "cat" in answer["choices"][0]["message"]["content"].lower()
