"""The harness's SIMULATED inference engines (an imitation for tests and the demo).

Nothing here is SGLang or vLLM. The simulator answers the command lines the Mooncake E2E
cases send, prints the same ready lines, serves the same HTTP API shapes and gives
deterministic, right answers to the questions the cases ask. See sim/README.md.

Modules:
  faults      -- HARNESS_SIM_FAULTS parsing (component:fault), shared with the pytest payloads
  answers     -- answer_text(prompt): the deterministic "model"
  api         -- request -> response bodies in SGLang-native and OpenAI shapes
  wiring      -- the PD bootstrap server and the PD/EPD wiring probes
  engine      -- the HTTP server of a simulated engine
  sglang_args -- the launch_server arguments understood
  sglang_main -- `python3 -m sglang.launch_server` start-up sequence, faults, signals
  serving     -- what every simulated server shares: stop signals, start-up faults, serving
  console     -- flushed log lines on stdout
"""
from __future__ import annotations

from pathlib import Path

__version__ = "0.0.0.sim"

# A tiny HuggingFace tokenizer folder; the real sglang-router loads it from a worker's
# model_path when HARNESS_SIM_MODEL_DIR=auto (so no model-hub lookup happens).
TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"
