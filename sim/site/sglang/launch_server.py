"""SIMULATED `python3 -m sglang.launch_server` (the harness's simulator, not SGLang)."""
from __future__ import annotations

from harness_sim.sglang_main import main

if __name__ == "__main__":
    raise SystemExit(main())
