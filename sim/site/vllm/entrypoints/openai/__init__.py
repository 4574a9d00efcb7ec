"""SIMULATED `vllm.entrypoints.openai` (the harness's simulator, not vLLM)."""
