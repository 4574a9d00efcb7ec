"""SGLang's own PD test with different TP sizes, on the Mooncake CI's models."""
from harness.run.payload import run_payload
from harness.run.cases import SINGLE, Case, CaseContext

NAME = "test_disaggregation_different_tp"


def run(ctx: CaseContext) -> None:
    node = ctx.local
    env = {**ctx.sim_env(node), "SGLANG_WORKSPACE": ctx.sglang_workspace(node),
           "USE_MODELSCOPE": "true" if ctx.settings.use_modelscope else "false"}
    with ctx.step("run payload"):
        # run.py decides the offline policy (its first output line) and execs pytest.
        run_payload(ctx, ["python3", str(node.layout.payloads / "different_tp" / "run.py")],
                        env=env, cwd=node.layout.payloads / "different_tp",
                        pythonpath=ctx.pythonpath(node))


CASE = Case(NAME, "SGLANG", SINGLE, 20,
            ("deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
             "Qwen/Qwen3.5-4B"),
            run, "SGLang's different-TP prefill/decode test from the image")
