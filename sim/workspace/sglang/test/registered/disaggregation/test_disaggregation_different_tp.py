"""SIMULATOR -- not SGLang. The harness's small imitation of SGLang's
`test/registered/disaggregation/test_disaggregation_different_tp.py`, as it sits in the
simulated image workspace ($SGLANG_WORKSPACE = sim/workspace under HARNESS_SIM=true).

Same imports and structure as SGLang's file: the model constants are taken from
sglang.test.test_utils when this module is imported (so the harness's pytest plugin must
have set them before collection), each class starts a prefill and a decode server with
different --tp sizes through PDDisaggregationServerBase, puts the real sglang-router (mini
load balancer, --pd-disaggregation) in front of them and runs a GSM8K-style eval through it.
The simulated decode server only answers when the bootstrap fields the router adds point at
the live prefill, so wrong wiring fails here as it would for real.
"""

import os
import unittest
from types import SimpleNamespace

from sglang.test.run_eval import run_eval
from sglang.test.server_fixtures.disaggregation_fixture import (
    PDDisaggregationServerBase,
)
from sglang.test.test_utils import (
    DEFAULT_HYBRID_GDN_SMALL_MODEL_NAME_FOR_TEST,
    DEFAULT_MODEL_NAME_FOR_TEST,
    DEFAULT_MODEL_NAME_FOR_TEST_MLA,
    DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
    popen_launch_pd_server,
    try_cached_model,
)


class _DifferentTPMixin:
    """What every class below does; a mixin, so pytest does not collect it on its own."""

    model_constant = DEFAULT_MODEL_NAME_FOR_TEST
    prefill_tp = "2"
    decode_tp = "2"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        os.environ["SGLANG_ENABLE_JIT_DEEPGEMM"] = "False"  # as SGLang's test does
        cls.model = try_cached_model(cls.model_constant)
        try:
            cls.start_prefill()
            cls.start_decode()
            cls.wait_server_ready(cls.prefill_url + "/health", process=cls.process_prefill)
            cls.wait_server_ready(cls.decode_url + "/health", process=cls.process_decode)
            cls.launch_lb()
        except BaseException:
            cls.tearDownClass()  # unittest skips tearDownClass when setUpClass fails
            raise

    @classmethod
    def _launch(cls, mode, url, tp, extra=()):
        args = ["--trust-remote-code", "--disaggregation-mode", mode,
                "--disaggregation-bootstrap-port", cls.bootstrap_port, "--tp", tp, *extra,
                "--enable-metrics", *cls.transfer_backend, *cls.rdma_devices]
        return popen_launch_pd_server(cls.model, url, timeout=DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
                                      other_args=args)

    @classmethod
    def start_prefill(cls):
        cls.process_prefill = cls._launch("prefill", cls.prefill_url, cls.prefill_tp)

    @classmethod
    def start_decode(cls):
        cls.process_decode = cls._launch("decode", cls.decode_url, cls.decode_tp,
                                         ("--base-gpu-id", "4"))

    def test_gsm8k(self):
        args = SimpleNamespace(base_url=self.base_url, model=self.model, eval_name="gsm8k",
                               api="completion", max_tokens=512, num_examples=200,
                               num_threads=128)
        metrics = run_eval(args)
        print(f"Evaluation metrics: {metrics}", flush=True)
        self.assertGreater(metrics["score"], 0.60)


class TestDisaggregationMooncakePrefillLargerTP(_DifferentTPMixin, PDDisaggregationServerBase):
    model_constant = DEFAULT_MODEL_NAME_FOR_TEST_MLA
    prefill_tp, decode_tp = "4", "2"


class TestDisaggregationMooncakeMHADecodeLargerTP(_DifferentTPMixin, PDDisaggregationServerBase):
    model_constant = DEFAULT_MODEL_NAME_FOR_TEST
    prefill_tp, decode_tp = "2", "4"


class TestDisaggregationGDNHybridHeteroTP(_DifferentTPMixin, PDDisaggregationServerBase):
    model_constant = DEFAULT_HYBRID_GDN_SMALL_MODEL_NAME_FOR_TEST
    prefill_tp, decode_tp = "1", "4"


if __name__ == "__main__":
    unittest.main()
