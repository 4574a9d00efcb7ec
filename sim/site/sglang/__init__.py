"""SIMULATED `sglang` package of the Mooncake E2E harness: an imitation for tests and the demo.

This is NOT SGLang. With HARNESS_SIM=true the harness puts sim/site on PYTHONPATH, so
`python3 -m sglang.launch_server ...` starts the simulator in harness_sim (see sim/README.md).
Only what the E2E cases use is imitated: the launch_server command line, its ready lines
and HTTP API shapes, plus what the pytest payloads import (sglang.test, sglang.srt).
"""

__version__ = "0.0.0.sim"
