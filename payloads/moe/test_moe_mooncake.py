"""Elastic EP with the Mooncake backend: the harness's pytest payload (SPEC 7, moe).

Runs inside the SGLang container with PYTHONPATH=$SGLANG_WORKSPACE/sglang. Starts one SGLang
server for DeepSeek-Coder-V2-Lite-Instruct with tensor parallelism 2 and the Mooncake elastic
EP backend on the host's RDMA devices (as SGLang's own test fixtures choose them; set
SGLANG_CI_RDMA_ALL_DEVICES to name them), JIT DeepGEMM off, then runs SGLang's MMLU eval
(64 examples, 32 threads) against it. Passes when the score is above 0.5.
"""

import os
import unittest
from types import SimpleNamespace

from sglang.srt.utils import kill_process_tree
from sglang.test.run_eval import run_eval
from sglang.test.test_utils import (
    DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
    DEFAULT_URL_FOR_TEST,
    CustomTestCase,
    popen_launch_server,
)

try:
    from sglang.test.server_fixtures.disaggregation_fixture import get_rdma_devices_args
except ImportError:  # images before the server_fixtures package
    from sglang.test.test_disaggregation_utils import get_rdma_devices_args

MODEL = "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct"
MMLU_EXAMPLES = 64
MMLU_THREADS = 32
MIN_SCORE = 0.5


class TestMooncakeElasticEP(CustomTestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = MODEL
        cls.base_url = DEFAULT_URL_FOR_TEST
        cls.process = None
        ib_devices = get_rdma_devices_args()
        print(f"Mooncake elastic EP RDMA devices: {ib_devices}", flush=True)
        env = dict(os.environ)
        # What SGLang's envs.SGLANG_ENABLE_JIT_DEEPGEMM.override(False) sets, for the server.
        env["SGLANG_ENABLE_JIT_DEEPGEMM"] = "false"
        cls.process = popen_launch_server(
            cls.model,
            cls.base_url,
            timeout=DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
            other_args=[
                "--trust-remote-code",
                "--tp", "2",
                "--elastic-ep-backend", "mooncake",
                "--mooncake-ib-device", ib_devices,
                "--mem-fraction-static", "0.8",
            ],
            env=env,
        )

    @classmethod
    def tearDownClass(cls):
        if cls.process is not None:
            kill_process_tree(cls.process.pid)

    def test_mmlu(self):
        args = SimpleNamespace(
            base_url=self.base_url,
            model=self.model,
            eval_name="mmlu",
            num_examples=MMLU_EXAMPLES,
            num_threads=MMLU_THREADS,
        )
        metrics = run_eval(args)
        print(f"MMLU metrics: {metrics}", flush=True)
        self.assertGreater(metrics["score"], MIN_SCORE)


if __name__ == "__main__":
    unittest.main()
