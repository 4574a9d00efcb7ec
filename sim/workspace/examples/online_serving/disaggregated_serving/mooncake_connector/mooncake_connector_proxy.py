# SIMULATED: this is the Mooncake E2E harness's stand-in for vLLM's
# examples/online_serving/disaggregated_serving/mooncake_connector/mooncake_connector_proxy.py
# (vLLM >= 0.16.0), NOT vLLM's proxy. With HARNESS_SIM=true the harness uses sim/workspace as
# $VLLM_WORKSPACE, so `python3 -u $VLLM_WORKSPACE/examples/.../mooncake_connector_proxy.py
# --prefill URL --decode URL --host H --port P` lands here. The behaviour lives in
# sim/site/harness_sim/vllm_proxy.py (see sim/README.md).
"""SIMULATED vLLM Mooncake connector proxy (the harness's simulator, not vLLM)."""
from __future__ import annotations

import sys
from pathlib import Path

try:
    from harness_sim.vllm_proxy import main
except ImportError:  # started without PYTHONPATH=sim/site: the simulator lives beside us
    sys.path.insert(0, str(Path(__file__).resolve().parents[5] / "site"))
    from harness_sim.vllm_proxy import main

if __name__ == "__main__":
    raise SystemExit(main())
