"""Simulated PD pairs move the request's KV through the real Mooncake TransferEngine over TCP.

Prefill on 127.0.0.1, decode on 127.0.0.2, both real processes with the Mooncake this
interpreter has (the CPU build, `mooncake-transfer-engine-non-cuda`: the demo extra installs
it, tests/provision.sh caches it). As the sglang-router does, each request goes to the prefill
and the decode at once, with the same bootstrap fields. A Mooncake that cannot import is played
by a `mooncake` package earlier on PYTHONPATH whose `engine` raises the ImportError the CUDA
build raises on a machine without a driver.
"""
from __future__ import annotations

import re
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_sim_engine import HTTP, READY, STORY, Sim, chat_body, post
from tests.simproc import SIM_SITE, LoggedProcess, free_port, killed_afterwards, wait_for

pytestmark = pytest.mark.integration

PREFILL_HOST, DECODE_HOST = "127.0.0.1", "127.0.0.2"
KV_BYTES = 64 * 57344  # a short prompt: the 64-token floor times Qwen2.5-7B's bf16 KV per token
RECEIVED = re.compile(r"MOONCAKE KV RECEIVED bytes=(\d+) transfer_s=([\d.]+) MiB/s=([\d.]+) "
                      r"from=127\.0\.0\.1:\d+ to=127\.0\.0\.2:\d+ room=(\S+) .*verified=yes")


@pytest.fixture()
def start(tmp_path: Path) -> Iterator:
    with killed_afterwards() as keep:
        def _start(name: str, args: list[str], **env: str) -> Sim:
            return keep(Sim(tmp_path / f"{name}.log", args, env))

        _start.keep = keep  # type: ignore[attr-defined]  (other processes to stop afterwards)
        yield _start


def mooncake_or_fail() -> None:
    """CI installs the CPU build; a missing one is a failure with the fix, never a skip."""
    try:
        import mooncake.engine  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"Mooncake cannot load here ({exc}); "
                    "pip install mooncake-transfer-engine-non-cuda")


def pd_pair(start, **env: str):
    bootstrap = free_port(PREFILL_HOST)
    prefill = start("prefill", ["--model-path", "m", "--disaggregation-mode", "prefill",
                                "--host", PREFILL_HOST, "--port", str(free_port(PREFILL_HOST)),
                                "--disaggregation-bootstrap-port", str(bootstrap)], **env)
    decode = start("decode", ["--model-path", "m", "--disaggregation-mode", "decode",
                              "--host", DECODE_HOST, "--port", str(free_port(DECODE_HOST))], **env)
    decode.url = decode.url.replace("127.0.0.1", DECODE_HOST)
    prefill.wait_for(READY)
    decode.wait_for(READY)
    return prefill, decode, bootstrap


def routed(prefill, decode, bootstrap: int, path: str, body: dict, room: int):
    """Send `body` to both, as the PD router does; the decode's answer."""
    wired = {**body, "bootstrap_host": PREFILL_HOST, "bootstrap_port": bootstrap,
             "bootstrap_room": room}
    to_prefill = threading.Thread(target=post, args=(f"{prefill.url}{path}", wired))
    to_prefill.start()
    try:
        return post(f"{decode.url}{path}", wired, timeout=30)
    finally:
        to_prefill.join(30)


def test_pd_pair_moves_verified_kv_through_mooncake(start) -> None:
    mooncake_or_fail()
    prefill, decode, bootstrap = pd_pair(start, HARNESS_SIM_MOONCAKE="required")
    story = routed(prefill, decode, bootstrap, "/generate", STORY, room=101)
    assert story.status_code == 200, story.text
    assert "Once upon a time" in story.json()["text"]
    paris = routed(prefill, decode, bootstrap, "/v1/chat/completions",
                   chat_body("Where is the capital of France?"), room=102)
    assert paris.status_code == 200 and "Paris" in paris.json()["choices"][0]["message"]["content"]

    log = decode.text()
    assert "Mooncake loaded: mooncake-transfer-engine" in log, log
    received = RECEIVED.findall(log)
    assert [(int(size), room) for size, _, _, room in received] == [(KV_BYTES, "101"),
                                                                    (KV_BYTES, "102")], log
    print("decode's transfers (bytes, seconds, MiB/s):", [r[:3] for r in received])
    assert prefill.text().count(f"MOONCAKE KV SENT bytes={KV_BYTES} ") == 2


def test_decode_fails_naming_mooncake_when_no_prefill_sends(start) -> None:
    """A decode whose prefill never got the request: the transfer fails, and the answer says
    so (the prefill waits 5 s for the room, as long as the router may lag)."""
    mooncake_or_fail()
    _, decode, bootstrap = pd_pair(start, HARNESS_SIM_MOONCAKE="required")
    alone = post(f"{decode.url}/generate", {**STORY, "bootstrap_host": PREFILL_HOST,
                                            "bootstrap_port": bootstrap, "bootstrap_room": 7},
                 timeout=30)
    assert alone.status_code == 500 and alone.json()["object"] == "error"
    message = alone.json()["message"]
    assert "Mooncake" in message and "no request for bootstrap_room 7" in message, message


@pytest.fixture()
def broken_mooncake(tmp_path: Path) -> str:
    """PYTHONPATH on which `import mooncake.engine` fails as the CUDA build does without one."""
    package = tmp_path / "broken" / "mooncake"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "engine.py").write_text(
        "raise ImportError('libcuda.so.1: cannot open shared object file: No such file or "
        "directory')\n")
    return f"{SIM_SITE}:{package.parent}"


def test_required_mooncake_that_cannot_load_fails_the_request_naming_it(
        start, broken_mooncake: str) -> None:
    prefill, decode, bootstrap = pd_pair(start, HARNESS_SIM_MOONCAKE="required",
                                         PYTHONPATH=broken_mooncake)
    answer = routed(prefill, decode, bootstrap, "/generate", STORY, room=5)
    assert answer.status_code == 500 and answer.json()["object"] == "error", answer.text
    message = answer.json()["message"]
    assert "Mooncake is required" in message and "libcuda.so.1" in message, message
    assert "pip install mooncake-transfer-engine-non-cuda" in message
    assert "Traceback" not in decode.text()


def test_auto_without_mooncake_hands_over_in_process_and_says_so(start, broken_mooncake) -> None:
    prefill, decode, bootstrap = pd_pair(start, HARNESS_SIM_MOONCAKE="auto",
                                         PYTHONPATH=broken_mooncake)
    answer = routed(prefill, decode, bootstrap, "/generate", STORY, room=6)
    assert answer.status_code == 200 and "Once upon a time" in answer.json()["text"]
    for server in (prefill, decode):
        line = next(x for x in server.text().splitlines() if "Mooncake NOT loaded" in x)
        assert "libcuda.so.1" in line and "KV handoffs stay in-process" in line
        assert "to move real bytes: pip install mooncake-transfer-engine-non-cuda" in line
    assert "MOONCAKE KV RECEIVED" not in decode.text()


def test_off_moves_nothing(start) -> None:
    prefill, decode, bootstrap = pd_pair(start, HARNESS_SIM_MOONCAKE="off")
    answer = routed(prefill, decode, bootstrap, "/generate", STORY, room=8)
    assert answer.status_code == 200
    assert "Mooncake off (HARNESS_SIM_MOONCAKE=off)" in decode.text()
    assert "MOONCAKE KV" not in decode.text() + prefill.text()


def test_bad_mode_exits_2(start) -> None:
    server = start("bad", ["--model-path", "m", "--port", str(free_port())],
                   HARNESS_SIM_MOONCAKE="sometimes")
    assert server.wait_exit() == 2
    assert "bad HARNESS_SIM_MOONCAKE 'sometimes'" in server.text()


@pytest.mark.parametrize("fault,needle", [
    ("corrupt", "arrived corrupted (first wrong byte at offset {half})"),
    ("refuse", "transfer_sync_write of {size} bytes"),
])
def test_transfer_faults_fail_the_request_naming_mooncake(start, fault: str, needle: str) -> None:
    mooncake_or_fail()
    prefill, decode, bootstrap = pd_pair(start, HARNESS_SIM_MOONCAKE="required",
                                         HARNESS_SIM_FAULTS=f"mooncake:{fault}")
    answer = routed(prefill, decode, bootstrap, "/generate", STORY, room=9)
    assert answer.status_code == 500 and answer.json()["object"] == "error", answer.text
    message = answer.json()["message"]
    assert "Mooncake" in message and needle.format(half=KV_BYTES // 2, size=KV_BYTES) in message
    assert f"FAULT PLAYED mooncake:{fault}" in prefill.text()


@pytest.fixture()
def mooncake_services(start, tmp_path: Path) -> dict[str, str]:
    """The real mooncake_master and HTTP metadata server, on free ports, as the payload starts
    them; the environment a HiCache server gets."""
    mooncake_or_fail()
    master = shutil.which("mooncake_master", path=str(Path(sys.executable).parent))
    assert master, "no mooncake_master next to this interpreter (the demo extra installs it)"
    rpc, metrics, metadata = (free_port(PREFILL_HOST) for _ in range(3))
    start.keep(LoggedProcess(tmp_path / "master.log", [
        master, f"--rpc_address={PREFILL_HOST}", f"--rpc_port={rpc}",
        f"--metrics_host={PREFILL_HOST}", f"--metrics_port={metrics}"], {}, tmp_path))
    start.keep(LoggedProcess(tmp_path / "metadata.log", [
        sys.executable, "-m", "mooncake.http_metadata_server", "--host", PREFILL_HOST,
        "--port", str(metadata)], {}, tmp_path))

    def answers(port: int) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex((PREFILL_HOST, port)) == 0
    assert wait_for(lambda: answers(rpc) and answers(metadata), 30), "master/metadata not up"
    return {"MOONCAKE_MASTER": f"{PREFILL_HOST}:{rpc}", "MOONCAKE_PROTOCOL": "tcp",
            "MOONCAKE_DEVICE": "", "MC_MS_AUTO_DISC": "0",
            "MOONCAKE_TE_META_DATA_SERVER": f"http://{PREFILL_HOST}:{metadata}/metadata",
            "MOONCAKE_GLOBAL_SEGMENT_SIZE": str(4 << 30)}


def test_hicache_pages_go_through_the_mooncake_store(start, mooncake_services) -> None:
    port = free_port()
    server = start("hicache", ["--model-path", "m", "--host", PREFILL_HOST, "--port", str(port),
                               "--hicache-storage-backend", "mooncake", "--hicache-ratio", "2"],
                   HARNESS_SIM_MOONCAKE="required", **mooncake_services)
    server.wait_for(READY, timeout=30)
    info = HTTP.get(f"{server.url}/server_info", timeout=5).json()
    assert info["hicache_store"] == "mooncake", server.text()
    prompt = {"text": " ".join(f"word{i}" for i in range(300)), "sampling_params": {}}
    first = post(f"{server.url}/generate", prompt)
    assert first.status_code == 200 and first.json()["meta_info"]["cached_tokens"] == 0
    assert HTTP.post(f"{server.url}/flush_cache", timeout=5).status_code == 200
    again = post(f"{server.url}/generate", prompt)
    assert again.status_code == 200, again.text
    assert again.json()["meta_info"]["cached_tokens"] == 4 * 64  # 4 whole pages of 64 words
    log = server.text()
    assert "Mooncake store joined" in log
    assert "MOONCAKE HICACHE pages_read=0 pages_written=4" in log
    assert "MOONCAKE HICACHE pages_read=4 pages_written=0" in log
