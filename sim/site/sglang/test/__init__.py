"""SIMULATOR -- not SGLang. The harness's imitation of the parts of `sglang.test` that its
pytest payloads import (test_utils, run_eval, server_fixtures.disaggregation_fixture)."""
