#!/usr/bin/env python3
"""Run SGLang's own different-TP PD test from the image, on the Mooncake CI's models.

    python3 /test_run/payloads/different_tp/run.py [extra pytest arguments]

1. Decides the model cache policy (offline_policy.py) and prints it as the FIRST line of the
   output: offline only when all needed models are in the HF cache and ModelScope is off.
2. Finds the test in the image: $SGLANG_WORKSPACE/sglang/test/registered/disaggregation/
   test_disaggregation_different_tp.py (or where older images kept it).
3. Replaces itself (exec, same PID) with pytest on that file, in that file's folder, with
   the plugin different_tp_models loaded, which sets the test's default models before the
   test module is collected. pytest's exit status is this script's exit status.

Exit status 2, with one line saying why, when the test file cannot be found.
"""
from __future__ import annotations

import os
import sys

# Run as a script, this file's folder is sys.path[0], so offline_policy imports from here.
from offline_policy import decide

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = "different_tp_models"
TEST_NAME = "test_disaggregation_different_tp.py"
# Where SGLang has kept this test, newest first.
TEST_DIRS = ("test/registered/disaggregation", "test/registered/distributed", "test/srt")


def find_test(workspace: str) -> str | None:
    for folder in TEST_DIRS:
        path = os.path.join(workspace, "sglang", folder, TEST_NAME)
        if os.path.isfile(path):
            return path
    return None


def main(argv: list[str]) -> int:
    policy = decide(os.environ)
    print(policy.line, flush=True)

    workspace = os.environ.get("SGLANG_WORKSPACE") or "/sgl-workspace"
    test_file = find_test(workspace)
    if test_file is None:
        tried = ", ".join(os.path.join(workspace, "sglang", f, TEST_NAME) for f in TEST_DIRS)
        print(f"[different_tp] error: SGLang's {TEST_NAME} is not in this image (looked at "
              f"{tried}); set SGLANG_WORKSPACE to the folder that holds sglang/", flush=True)
        return 2

    env = policy.apply(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider",
               test_file, "-v", "-s", "--tb=long", *argv]
    print(f"[different_tp] running in {os.path.dirname(test_file)}: {' '.join(command)}",
          flush=True)
    os.chdir(os.path.dirname(test_file))
    os.execve(sys.executable, command, env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
