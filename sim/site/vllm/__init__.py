"""SIMULATED `vllm` package of the Mooncake E2E harness: an imitation for tests and the demo.

This is NOT vLLM. With HARNESS_SIM=true the harness puts sim/site on PYTHONPATH, so
`python3 -m vllm.entrypoints.openai.api_server ...` starts the simulator in harness_sim
(see sim/README.md), and `python3 -c "import vllm; print(vllm.__version__)"` prints
$HARNESS_SIM_VLLM_VERSION (default 0.17.0), so both proxy branches of the vLLM case can run.
"""
import os

__version__ = os.environ.get("HARNESS_SIM_VLLM_VERSION", "").strip() or "0.17.0"
