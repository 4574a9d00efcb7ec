"""1 prefill + 1 decode SGLang server on two hosts, KV cache moved by Mooncake, behind a router."""
from harness.run.answers import require_json_ok
from harness.run.cases import DOUBLE, Case, CaseContext
from harness.run.engines import sglang_router, sglang_server
from harness.servers.server import Server, start_all

NAME = "test_1p1d_erdma"
MODELS = ("Qwen/Qwen3-8B", "deepseek-ai/DeepSeek-V2-Lite")
PORT = 30001
REQUEST = {"text": "Let me tell you a short story ", "sampling_params": {"temperature": 0}}


def start_servers(ctx: CaseContext, model: str) -> Server:
    """Prefill here, decode on the remote host, then the router over them; the router."""
    local, remote = ctx.local, ctx.remote
    pd_args = ["--tp-size", "2", "--base-gpu-id=6"]
    prefill = sglang_server(ctx, "prefill", local, model, PORT,
                            ["--disaggregation-mode", "prefill", *pd_args],
                            "sglang_server_local.log")
    decode = sglang_server(ctx, "decode", remote, model, PORT,
                           ["--disaggregation-mode", "decode", *pd_args],
                           "sglang_server_remote.log")
    with ctx.step(f"{model}: start prefill and decode"):
        start_all([prefill, decode])
    router = sglang_router(ctx, model, prefill, decode)
    with ctx.step(f"{model}: start router"):
        start_all([router])
    return router


def check(ctx: CaseContext, model: str, router: Server) -> None:
    url = router.url("/generate")
    with ctx.step(f"{model}: request"):
        status, body = ctx.post(url, REQUEST, 30, model, server="router")
        require_json_ok(status, body, url=url, server="router")


CASE = Case(NAME, "SGLANG", DOUBLE, 30, MODELS,
            summary="prefill here, decode on the remote host, sglang-router in front (/generate)",
            start_servers=start_servers, check=check)
