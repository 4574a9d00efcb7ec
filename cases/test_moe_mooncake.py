"""Elastic EP with the Mooncake backend: MoE model, MMLU score above 0.5."""
from harness.run.payload import run_payload
from harness.run.cases import SINGLE, Case, CaseContext
from harness.servers.server import offline_env

NAME = "test_moe_mooncake"
MODEL = "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct"


def run(ctx: CaseContext) -> None:
    node = ctx.local
    workspace = ctx.sglang_workspace(node)
    with ctx.step("check model cache"):
        offline = offline_env(node, MODEL)
    env = {**ctx.sim_env(node), **offline, "SGLANG_WORKSPACE": workspace}
    with ctx.step("run payload"):
        run_payload(ctx, ["python3", "-m", "pytest", "-v", "-s", "--tb=long", "-p",
                          "no:cacheprovider", "test_moe_mooncake.py"],
                    env=env, cwd=node.layout.payloads / "moe",
                    pythonpath=ctx.pythonpath(node, f"{workspace}/sglang"))


CASE = Case(NAME, "SGLANG", SINGLE, 50, (MODEL,), run,
            "MoE model with the Mooncake elastic EP backend, MMLU > 0.5 (pytest payload)")
