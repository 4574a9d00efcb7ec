"""Reading what Mooncake moved from the simulated servers' logs (harness/results/transfers.py),
and the sim's own pure pieces: which Mooncake, the KV bytes, the knobs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.results import transfers
from harness.settings import Settings, SimMooncake

SIM_SITE = Path(__file__).resolve().parents[2] / "sim" / "site"
if str(SIM_SITE) not in sys.path:
    sys.path.append(str(SIM_SITE))

from harness_sim import kv_transfer, mooncake  # noqa: E402

DECODE_LOG = """\
[harness-sim] Mooncake loaded: mooncake-transfer-engine-non-cuda 0.3.13.post1 at /v/mooncake \
(HARNESS_SIM_MOONCAKE=auto); TransferEngine session 127.0.0.2:15117 (P2PHANDSHAKE, tcp)
[harness-sim] MOONCAKE KV RECEIVED bytes=3670016 transfer_s=0.002000 MiB/s=1750.0 \
from=127.0.0.1:1 to=127.0.0.2:2 room=1 handoff_s=0.03 verified=yes
[harness-sim] MOONCAKE KV RECEIVED bytes=1048576 transfer_s=0.001000 MiB/s=1000.0 \
from=127.0.0.1:1 to=127.0.0.2:2 room=2 handoff_s=0.03 verified=no (first wrong byte 5)
[harness-sim] MOONCAKE KV FAILED: Mooncake KV transfer of room 2: arrived corrupted
[harness-sim] MOONCAKE KV RECEIVED bytes=3670016 transfer_s=0.006000 MiB/s=583.3 \
from=127.0.0.1:1 to=127.0.0.2:2 room=3 handoff_s=0.03 verified=yes
"""
PREFILL_LOG = ("[harness-sim] MOONCAKE KV SENT bytes=3670016 transfer_s=0.002 MiB/s=1750.0 "
               "from=127.0.0.1:1 to=127.0.0.2:2 room=1\n")


def test_figures_sum_the_decodes_verified_transfers_only() -> None:
    found = transfers.figures([DECODE_LOG, PREFILL_LOG])
    assert (found["transfers"], found["bytes"], found["failures"]) == (2, 2 * 3670016, 1)
    assert found["MiB_per_s"] == round(7 / 0.008, 1)  # 7 MiB in 8 ms
    assert found["first_failure"].startswith("Mooncake KV transfer of room 2")
    assert found["mooncake"] == ["Mooncake loaded: mooncake-transfer-engine-non-cuda "
                                 "0.3.13.post1 at /v/mooncake (HARNESS_SIM_MOONCAKE=auto)"]


def test_summarise_is_none_for_a_case_without_mooncake(tmp_path: Path) -> None:
    (tmp_path / "server.log").write_text("INFO: ready\n")
    assert transfers.summarise("c", tmp_path) is None
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "decode.log").write_text(DECODE_LOG)
    assert transfers.summarise("c", tmp_path)["transfers"] == 2


@pytest.mark.parametrize("env,wheel,faults,want", [
    ({}, "", "", SimMooncake.AUTO),
    ({}, "/w/mooncake_transfer_engine_non_cuda-1.whl", "", SimMooncake.REQUIRED),
    ({}, "", "mooncake:corrupt", SimMooncake.REQUIRED),
    ({"HARNESS_SIM_MOONCAKE": "off"}, "/w/x.whl", "", SimMooncake.OFF),
    ({"HARNESS_SIM_MOONCAKE": "required"}, "", "", SimMooncake.REQUIRED),
])
def test_the_mode_the_engines_get(env: dict, wheel: str, faults: str, want: SimMooncake) -> None:
    settings = Settings.from_env({"HARNESS_SIM": "true", "MOONCAKE_WHEEL": wheel,
                                  "HARNESS_SIM_FAULTS": faults, **env})
    assert settings.effective_sim_mooncake is want


def test_a_mooncake_fault_with_mooncake_off_is_refused() -> None:
    from harness.errors import SettingsError
    with pytest.raises(SettingsError, match="HARNESS_SIM_MOONCAKE is off"):
        Settings.from_env({"HARNESS_SIM": "true", "HARNESS_SIM_FAULTS": "mooncake:refuse",
                           "HARNESS_SIM_MOONCAKE": "off"})


def test_sim_mode_knob() -> None:
    assert mooncake.mode_of({}) == "auto"
    assert mooncake.mode_of({"HARNESS_SIM_MOONCAKE": " Required "}) == "required"
    with pytest.raises(ValueError, match="bad HARNESS_SIM_MOONCAKE 'yes'"):
        mooncake.mode_of({"HARNESS_SIM_MOONCAKE": "yes"})


def test_a_mooncake_that_cannot_load_says_why_and_the_fix() -> None:
    cuda = mooncake.Mooncake("auto", package="mooncake-transfer-engine", version="0.3.13",
                             error="ImportError: libcudart.so.12: cannot open shared object")
    line = cuda.describe()
    assert "Mooncake NOT loaded" in line and "libcudart.so.12" in line
    assert "KV handoffs stay in-process" in line
    assert ("pip uninstall -y mooncake-transfer-engine && "
            "pip install mooncake-transfer-engine-non-cuda") in line
    missing = mooncake.Mooncake("required", error="ModuleNotFoundError: No module named 'x'")
    assert "every request that hands KV over fails" in missing.describe()
    assert missing.install_line == "pip install mooncake-transfer-engine-non-cuda"


def test_kv_bytes_are_the_requests_own() -> None:
    one = kv_transfer.kv_bytes("7", "What is 2 + 3?", 1 << 16)
    assert one == kv_transfer.kv_bytes("7", "What is 2 + 3?", 1 << 16) and len(one) == 1 << 16
    assert one != kv_transfer.kv_bytes("8", "What is 2 + 3?", 1 << 16)
    assert one != kv_transfer.kv_bytes("7", "What is 2 + 4?", 1 << 16)
    assert kv_transfer.first_difference(one, one) is None
    broken = one[:70000 - 4464] + b"x" + one[70000 - 4463:]
    assert kv_transfer.first_difference(broken, one) == 70000 - 4464


def test_kv_size_and_its_knob() -> None:
    assert kv_transfer.kv_size("a b c", 57344) == 64 * 57344  # the 64-token floor
    assert kv_transfer.kv_size(" ".join(["w"] * 100), 10) == 1000
    assert kv_transfer.bytes_per_token({}) == 57344
    for bad in ("0", "-1", "1.5", "lots"):
        with pytest.raises(ValueError, match="HARNESS_SIM_KV_BYTES_PER_TOKEN"):
            kv_transfer.bytes_per_token({"HARNESS_SIM_KV_BYTES_PER_TOKEN": bad})


def test_hicache_segment_size_knob() -> None:
    from harness_sim import hicache
    assert hicache._size(str(4 * 1024**3)) == 4 * 1024**3
    assert hicache._size("8gb") == 8 << 30 and hicache._size("512MB") == 512 << 20
    assert hicache._size("") == hicache._size("lots") == hicache.SEGMENT_CAP


class FakeStore:
    """A dict with MooncakeDistributedStore's put/get/is_exist shape (pure logic only)."""

    def __init__(self) -> None:
        self.pages: dict[str, bytes] = {}

    def is_exist(self, key: str) -> int:
        return int(key in self.pages)

    def get(self, key: str) -> bytes:
        return self.pages[key]

    def put(self, key: str, data: bytes) -> int:
        self.pages[key] = data
        return 0


def test_hicache_pages_come_back_checked() -> None:
    from harness_sim import hicache
    from harness_sim.kv_transfer import TransferError
    store = FakeStore()
    pages = hicache.PageStore(store, "m", set())
    prompt = " ".join(f"w{i}" for i in range(200))  # 3 whole pages, 8 words left over
    assert pages.visit(prompt) == 0 and len(store.pages) == 3
    assert pages.visit(prompt) == 3 * hicache.PAGE_TOKENS
    key = next(iter(store.pages))
    store.pages[key] = b"x" + store.pages[key][1:]
    with pytest.raises(TransferError, match="Mooncake store page .* differ"):
        pages.visit(prompt)
    corrupting = hicache.PageStore(FakeStore(), "m", {"corrupt"})
    corrupting.visit(prompt)
    with pytest.raises(TransferError):
        corrupting.visit(prompt)


def test_figures_count_hicache_pages_and_the_store() -> None:
    log = ("[harness-sim] Mooncake store joined: master 127.0.0.1:5, metadata http://m, "
           "protocol tcp, segment 256 MiB (HiCache pages go through it)\n"
           "[harness-sim] MOONCAKE HICACHE pages_read=0 pages_written=12 bytes=3145728 "
           "seconds=0.020000 MiB/s=150.0 store=127.0.0.1:5 verified=yes\n"
           "[harness-sim] MOONCAKE HICACHE pages_read=12 pages_written=0 bytes=3145728 "
           "seconds=0.010000 MiB/s=300.0 store=127.0.0.1:5 verified=yes\n")
    found = transfers.figures([log])
    assert (found["transfers"], found["bytes"], found["MiB_per_s"]) == (2, 6 << 20, 200.0)
    assert found["mooncake"][0].startswith("Mooncake store joined: master 127.0.0.1:5")


def test_a_mooncake_listener_polls_often_enough_to_stop_quickly():
    """Mooncake's handshake listener waits in accept() with a 1 s receive timeout; the
    simulator shortens it (and only it: a listener without a timeout is left blocking)."""
    import socket
    import struct

    from harness_sim import mooncake as sim_mooncake
    timeval = struct.calcsize("@ll")
    with socket.create_server(("127.0.0.1", 0)) as polled, \
            socket.create_server(("127.0.0.1", 0)) as blocking:
        polled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 1, 0))
        assert sim_mooncake.quicken_accept_polls() >= 1
        seconds, micros = struct.unpack(
            "@ll", polled.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval))
        # the kernel keeps it in scheduler ticks: 50 ms reads back as 50-60 ms
        assert seconds + micros / 1e6 == pytest.approx(sim_mooncake.ACCEPT_POLL_S, abs=0.015)
        assert struct.unpack("@ll", blocking.getsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)) == (0, 0)
