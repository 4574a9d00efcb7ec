"""HiCache with the Mooncake storage backend: SGLang's HiCache storage tests on Mooncake."""
from harness.cases import SINGLE, Case, CaseContext
from harness.servers import offline_env

NAME = "test_hicache_storage_mooncake_backend"
PAYLOAD = "test_hicache_storage_mooncake_backend.py"
MODELS = ("Qwen/Qwen3-8B", "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct")


def run(ctx: CaseContext) -> None:
    node = ctx.local
    hicache_tests = f"{ctx.sglang_workspace(node)}/sglang/test/registered/hicache"
    with ctx.step("check model cache"):
        offline = offline_env(node, *MODELS)
    env = {**ctx.sim_env(node), **offline, "SGLANG_WORKSPACE": ctx.sglang_workspace(node),
           "HARNESS_PAYLOAD_LOG_DIR": str(node.layout.case_logs(NAME)),
           "TIMEOUT_STOP_S": str(ctx.settings.timeout_stop_s)}
    with ctx.step("run payload"):
        ctx.run_payload(["python3", "-m", "pytest", "-v", "-s", "-p", "no:cacheprovider", PAYLOAD],
                        env=env, cwd=node.layout.payloads / "hicache",
                        pythonpath=ctx.pythonpath(node, hicache_tests))


CASE = Case(NAME, "SGLANG", SINGLE, 10, MODELS, run,
            "HiCache storage tests with the Mooncake backend (pytest payload)")
