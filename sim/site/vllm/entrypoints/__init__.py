"""SIMULATED `vllm.entrypoints` (the harness's simulator, not vLLM)."""
