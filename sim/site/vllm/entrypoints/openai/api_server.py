"""SIMULATED `python3 -m vllm.entrypoints.openai.api_server` (the harness's simulator, not vLLM)."""
from __future__ import annotations

from harness_sim.vllm_main import main

if __name__ == "__main__":
    raise SystemExit(main())
