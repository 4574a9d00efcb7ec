"""SIMULATOR -- not SGLang. The harness's small imitation of SGLang's
`test/registered/hicache/test_hicache_storage_file_backend.py`, as it sits in the simulated
image workspace ($SGLANG_WORKSPACE = sim/workspace under HARNESS_SIM=true).

It keeps the names and structure the harness's HiCache payload builds on:
`HiCacheStorageBaseMixin` (setUpClass/tearDownClass, _get_model_name, _get_base_server_args,
_get_additional_server_args_and_env, _launch_server_with_hicache, _wait_for_server_ready,
send_request, flush_cache, test_basic_backup_and_prefetch) and `run_eval_accuracy_test`.
Servers are started with sglang.test.test_utils.popen_launch_server (the simulated server)
and every check is a real HTTP request.

Unlike SGLang's, it needs no tokenizer (prompts are made of words) and does not assert a
remote cache hit: the simulator has no KV cache, so it reports cached_tokens = 0.
"""

import json
import os
import random
import shutil
import tempfile
import unittest
from types import SimpleNamespace
from urllib.parse import urlparse

import requests
from sglang.test.run_eval import run_eval
from sglang.test.test_utils import (
    DEFAULT_MLA_MODEL_NAME_FOR_TEST,
    DEFAULT_MODEL_NAME_FOR_TEST,
    DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
    DEFAULT_URL_FOR_TEST,
    CustomTestCase,
    is_in_ci,
    popen_launch_server,
    terminate_and_kill_process_tree,
    wait_for_http_ready,
)

_WORDS = ("cache", "page", "layer", "token", "store", "master", "segment", "prefix", "offload",
          "prefetch", "backup", "memory", "host", "device", "transfer", "engine")


class HiCacheStorageBaseMixin:
    """Common setup: one HiCache-enabled server per test class."""

    flush_cache_timeout = 30

    @classmethod
    def setUpClass(cls):
        cls.temp_dir = tempfile.mkdtemp()
        cls.model = cls._get_model_name()
        cls.base_url = DEFAULT_URL_FOR_TEST
        parsed_url = urlparse(cls.base_url)
        cls.base_host = parsed_url.hostname
        cls.base_port = str(parsed_url.port)
        cls.process = cls._launch_server_with_hicache()
        cls._wait_for_server_ready(process=cls.process)
        print(f"Test server launched successfully at {cls.base_url}", flush=True)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "process", None):
            terminate_and_kill_process_tree(cls.process)
        if hasattr(cls, "temp_dir"):
            shutil.rmtree(cls.temp_dir, ignore_errors=True)

    @classmethod
    def _get_model_name(cls):
        return DEFAULT_MODEL_NAME_FOR_TEST

    @classmethod
    def _get_base_server_args(cls):
        extra_config = {"hicache_storage_pass_prefix_keys": True}
        return {
            "--enable-hierarchical-cache": True,
            "--mem-fraction-static": 0.6,
            "--hicache-ratio": 1.2,
            "--page-size": 64,
            "--enable-cache-report": True,
            "--hicache-storage-prefetch-policy": "wait_complete",
            "--hicache-storage-backend": "file",
            "--hicache-storage-backend-extra-config": json.dumps(extra_config),
        }

    @classmethod
    def _get_additional_server_args_and_env(cls):
        return {}, {"SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR": cls.temp_dir}

    @classmethod
    def _launch_server_with_hicache(cls):
        additional_server_args, env_vars = cls._get_additional_server_args_and_env()
        env_vars["SGLANG_ENABLE_DETERMINISTIC_INFERENCE"] = "1"
        server_args = cls._get_base_server_args()
        server_args.update(additional_server_args or {})
        final_server_args = []
        for key, value in server_args.items():
            final_server_args.append(str(key))
            if not isinstance(value, bool):
                final_server_args.append(str(value))
        print(f"final_server_args: {final_server_args}", flush=True)
        return popen_launch_server(cls.model, cls.base_url,
                                   timeout=DEFAULT_TIMEOUT_FOR_SERVER_LAUNCH,
                                   other_args=final_server_args,
                                   env={**os.environ, **env_vars})

    @classmethod
    def _wait_for_server_ready(cls, timeout: int = 60, process=None) -> bool:
        wait_for_http_ready(url=f"{cls.base_url}/health", timeout=timeout, process=process)
        return True

    def send_request(self, prompt: str, max_tokens: int = 100,
                     temperature: float = 0.0) -> dict:
        response = requests.post(
            f"{self.base_url}/generate",
            json={"text": prompt, "sampling_params": {"temperature": temperature,
                                                      "max_new_tokens": max_tokens,
                                                      "ignore_eos": True}},
            timeout=60)
        self.assertEqual(response.status_code, 200,
                         f"Request failed: {response.status_code} - {response.text}")
        return response.json()

    def get_cached_tokens(self, response_json: dict) -> int:
        return int(response_json.get("meta_info", {}).get("cached_tokens", 0))

    def flush_cache(self):
        res = requests.post(f"{self.base_url}/flush_cache",
                            params={"timeout": self.flush_cache_timeout},
                            timeout=self.flush_cache_timeout + 10)
        if res.status_code != 200:
            raise AssertionError(f"flush_cache failed: status={res.status_code}, "
                                 f"body={res.text!r}")

    def gen_prompt(self, token_num: int) -> str:
        return " ".join(random.choices(_WORDS, k=token_num))

    def trigger_offloading_and_flush(self):
        self.send_request(self.gen_prompt(1), max_tokens=150)
        self.flush_cache()

    def test_basic_backup_and_prefetch(self):
        print("\n=== Testing Large Context Cache Storage & Retrieval ===", flush=True)
        base_prompt = self.gen_prompt(768)
        response1 = self.send_request(base_prompt, max_tokens=150)
        self.assertTrue(response1.get("text"), "empty first answer")
        self.trigger_offloading_and_flush()
        response2 = self.send_request(base_prompt, max_tokens=150)
        self.assertTrue(response2.get("text"), "empty answer after the cache flush")
        cached_tokens = self.get_cached_tokens(response2)
        store = requests.get(f"{self.base_url}/server_info", timeout=10).json().get(
            "hicache_store")
        print(f"cached_tokens={cached_tokens} (the simulator's HiCache store: {store})",
              flush=True)
        if store == "mooncake":  # its pages went through Mooncake and were checked on read
            self.assertGreater(cached_tokens, 0, "nothing came back from the Mooncake store "
                               "after the flush")


@unittest.skipIf(is_in_ci(), "To reduce the CI execution time.")
class TestHiCacheStoragePageFirstLayout(HiCacheStorageBaseMixin, CustomTestCase):
    @classmethod
    def _get_additional_server_args_and_env(cls):
        return {"--hicache-mem-layout": "page_first"}, {}


@unittest.skipIf(is_in_ci(), "To reduce the CI execution time.")
class TestHiCacheStorageMLA(HiCacheStorageBaseMixin, CustomTestCase):
    @classmethod
    def _get_model_name(cls):
        return DEFAULT_MLA_MODEL_NAME_FOR_TEST

    @classmethod
    def _get_additional_server_args_and_env(cls):
        return {"--tp-size": 2}, {}


def run_eval_accuracy_test(test_instance, accuracy_threshold: float = 0.03,
                           max_tokens: int = 512, num_threads: int = 64,
                           num_examples: int = 200):
    """GSM8K before and after a cache flush; both must score > 0.6 and agree."""
    print("\n=== Testing Eval Accuracy with Cache Persistence ===", flush=True)
    args = SimpleNamespace(
        base_url=f"http://{test_instance.base_host}:{test_instance.base_port}",
        eval_name="gsm8k", api="completion", max_tokens=max_tokens,
        num_examples=num_examples, num_threads=num_threads)
    metrics_initial = run_eval(args)
    test_instance.flush_cache()
    metrics_cached = run_eval(args)
    test_instance.assertGreater(metrics_initial["score"], 0.6,
                                "Initial accuracy should be reasonable")
    test_instance.assertGreater(metrics_cached["score"], 0.6,
                                "Cached accuracy should be reasonable")
    if metrics_initial["score"] > metrics_cached["score"]:
        test_instance.assertLess(metrics_initial["score"] - metrics_cached["score"],
                                 accuracy_threshold,
                                 "Accuracy should be consistent between cache states")


if __name__ == "__main__":
    unittest.main(verbosity=2)
