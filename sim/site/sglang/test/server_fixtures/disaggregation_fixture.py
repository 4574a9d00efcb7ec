"""SIMULATOR -- not SGLang. The harness's imitation of
`sglang.test.server_fixtures.disaggregation_fixture`: `PDDisaggregationServerBase` (a prefill
server, a decode server and the real sglang-router's mini load balancer in front of them) and
`get_rdma_devices_args` (the RDMA devices SGLang's tests pass to Mooncake).

Same names, ports and flow as the real fixture: lb on DEFAULT_URL_FOR_TEST's port, prefill on
+100, decode on +200, bootstrap on +500. Differences, on purpose: the servers and the router
run with this interpreter and in their own sessions; tearDownClass waits for them to exit
instead of sleeping 5 s; the router is also told the prefill's bootstrap port.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from typing import ClassVar
from urllib.parse import urlparse

from sglang.srt.utils import kill_process_tree
from sglang.test.test_utils import (
    DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
    DEFAULT_URL_FOR_TEST,
    CustomTestCase,
    is_in_ci,
    popen_launch_pd_server,
    popen_with_error_check,
    wait_for_http_ready,
)

logger = logging.getLogger(__name__)


class PDDisaggregationServerBase(CustomTestCase):
    extra_prefill_args: ClassVar[list[str]] = []
    extra_decode_args: ClassVar[list[str]] = []

    @classmethod
    def setUpClass(cls):
        os.environ["MC_TCP_ENABLE_CONNECTION_POOL"] = "true"
        parsed_url = urlparse(DEFAULT_URL_FOR_TEST)
        cls.base_host = parsed_url.hostname
        base_port = str(parsed_url.port)
        cls.lb_port = base_port
        cls.prefill_port = f"{int(base_port) + 100}"
        cls.decode_port = f"{int(base_port) + 200}"
        cls.bootstrap_port = f"{int(base_port) + 500}"
        cls.prefill_url = f"http://{cls.base_host}:{cls.prefill_port}"
        cls.decode_url = f"http://{cls.base_host}:{cls.decode_port}"
        cls.lb_url = f"http://{cls.base_host}:{cls.lb_port}"
        cls.base_url = cls.lb_url
        print(f"{cls.base_host=} {cls.lb_port=} {cls.prefill_port=} {cls.decode_port=} "
              f"{cls.bootstrap_port=}", flush=True)
        cls.process_lb, cls.process_decode, cls.process_prefill = None, None, None
        if is_in_ci():
            cls.transfer_backend = ["--disaggregation-transfer-backend", "mooncake"]
            cls.rdma_devices = ["--disaggregation-ib-device", get_rdma_devices_args()]
        else:
            cls.transfer_backend = ["--disaggregation-transfer-backend",
                                    os.environ.get("SGLANG_TEST_PD_DISAGG_BACKEND", "mooncake")]
            devices = os.environ.get("SGLANG_TEST_PD_DISAGG_DEVICES")
            cls.rdma_devices = ["--disaggregation-ib-device", devices] if devices else []
            if not devices:
                warnings.warn("No RDMA devices specified for disaggregation test, "
                              "using default settings.", stacklevel=2)

    @classmethod
    def start_prefill(cls):
        args = ["--trust-remote-code", "--disaggregation-mode", "prefill",
                "--disaggregation-bootstrap-port", cls.bootstrap_port, "--tp", "1",
                *cls.extra_prefill_args, *cls.transfer_backend, *cls.rdma_devices]
        cls.process_prefill = popen_launch_pd_server(
            cls.model, cls.prefill_url, timeout=DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
            other_args=args)

    @classmethod
    def start_decode(cls):
        args = ["--trust-remote-code", "--disaggregation-mode", "decode",
                "--disaggregation-bootstrap-port", cls.bootstrap_port, "--tp", "1",
                "--base-gpu-id", "1", *cls.extra_decode_args, *cls.transfer_backend,
                *cls.rdma_devices]
        cls.process_decode = popen_launch_pd_server(
            cls.model, cls.decode_url, timeout=DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
            other_args=args)

    @classmethod
    def launch_all(cls):
        cls.start_prefill()
        cls.start_decode()
        cls.wait_server_ready(cls.prefill_url + "/health", process=cls.process_prefill)
        cls.wait_server_ready(cls.decode_url + "/health", process=cls.process_decode)
        cls.launch_lb()

    @classmethod
    def launch_lb(cls):
        lb_command = [sys.executable, "-m", "sglang_router.launch_router",
                      "--pd-disaggregation", "--mini-lb",
                      "--prefill", cls.prefill_url, cls.bootstrap_port,
                      "--decode", cls.decode_url,
                      "--host", cls.base_host, "--port", cls.lb_port]
        print("Starting load balancer:", " ".join(lb_command), flush=True)
        cls.process_lb = popen_with_error_check(lb_command)
        cls.wait_server_ready(cls.lb_url + "/health", process=cls.process_lb)

    @classmethod
    def wait_server_ready(cls, url, timeout=DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH, process=None):
        wait_for_http_ready(url=url, timeout=timeout, process=process)
        print(f"Server {url} is ready", flush=True)

    @classmethod
    def tearDownClass(cls):
        os.environ.pop("MC_TCP_ENABLE_CONNECTION_POOL", None)
        for process in (cls.process_lb, cls.process_decode, cls.process_prefill):
            if process:
                try:
                    kill_process_tree(process.pid)
                    process.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired) as error:  # stop the others too
                    print(f"Error killing process {process.pid}: {error}", flush=True)


def _available_ib_devices():
    """Active, fast (>= 100 Gbps), non-Ethernet-named devices under /sys/class/infiniband."""
    root = "/sys/class/infiniband"
    if not os.path.isdir(root):
        return None
    devices = []
    for dev in sorted(os.listdir(root)):
        port = os.path.join(root, dev, "ports", "1")
        if not os.path.isdir(port) or "eth" in dev.lower():
            continue
        try:
            with open(os.path.join(port, "state")) as state_file:
                state = state_file.read()
        except OSError:
            state = ""
        try:
            with open(os.path.join(port, "rate")) as rate_file:
                rate = int(rate_file.read().split()[0])
        except (OSError, ValueError, IndexError):
            rate = -1
        if "ACTIVE" in state.upper() and not (0 <= rate < 100):
            devices.append(dev)
    return devices or None


def get_rdma_devices_args() -> str:
    """The comma list SGLang's fixtures pass as --disaggregation-ib-device/--mooncake-ib-device.

    Same priority as the real helper: SGLANG_CI_RDMA_ALL_DEVICES, then sysfs, then
    mlx5_roce0..7; without CUDA_VISIBLE_DEVICES the first and the middle device.
    (The real helper maps CUDA_VISIBLE_DEVICES onto the devices with torch's GPU count; the
    simulator has no GPUs and always takes that default pair.)
    """
    listed = [d.strip() for d in os.environ.get("SGLANG_CI_RDMA_ALL_DEVICES", "").split(",")
              if d.strip()]
    devices = listed or _available_ib_devices() or [f"mlx5_roce{i}" for i in range(8)]
    return ",".join(dict.fromkeys([devices[0], devices[len(devices) // 2]]))
