"""vLLM prefill (remote) and decode (local) with the MooncakeConnector, behind a proxy."""
import logging

from packaging.version import Version

from harness.run.answers import chat_content, require_json_ok, require_match
from harness.run.cases import DOUBLE, Case, CaseContext
from harness.run.engines import CHAT_ROUTE, vllm_proxy, vllm_server, vllm_version
from harness.servers.server import Server, start_all
from harness.vllm_version import uses_connector_proxy

log = logging.getLogger(__name__)
NAME = "test_vllm_1p1d_erdma"
MODELS = ("Qwen/Qwen3-8B", "deepseek-ai/DeepSeek-V2-Lite")
PREFILL_PORT, DECODE_PORT = 8010, 8020


def request(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user",
                                          "content": "Where is the capital of France?"}],
            "stream": False, "max_tokens": 200, "temperature": 0}


def read_version(ctx: CaseContext) -> Version:
    with ctx.step("read vLLM version"):
        version = vllm_version(ctx, ctx.local)
    proxy = ("the image's Mooncake connector proxy" if uses_connector_proxy(version)
             else "the project's own proxy")
    log.info("%s: vLLM %s: %s", NAME, version, proxy)
    return version


def start_servers(ctx: CaseContext, model: str) -> Server:
    """Prefill on the remote host, decode here, then the proxy the vLLM version (read once,
    before the first model) picks; the proxy."""
    prefill = vllm_server(ctx, "prefill", ctx.remote, model, PREFILL_PORT, "kv_producer",
                          "vllm_server_remote.log")
    decode = vllm_server(ctx, "decode", ctx.local, model, DECODE_PORT, "kv_consumer",
                         "vllm_server_local.log")
    with ctx.step(f"{model}: start prefill and decode"):
        start_all([prefill, decode])
    proxy = vllm_proxy(ctx, model, ctx.prepared, prefill, decode)
    with ctx.step(f"{model}: start proxy"):
        start_all([proxy])
    return proxy


def check(ctx: CaseContext, model: str, proxy: Server) -> None:
    url = proxy.url(CHAT_ROUTE)
    with ctx.step(f"{model}: request"):
        status, body = ctx.post(url, request(model), 120, model, server="proxy")
        data = require_json_ok(status, body, url=url, server="proxy")
        require_match(chat_content(data, server="proxy"), r"paris", server="proxy")


CASE = Case(NAME, "VLLM", DOUBLE, 10, MODELS,
            summary="vLLM prefill on the remote host, decode here, Mooncake connector, proxy in "
                    "front",
            start_servers=start_servers, check=check, before=read_version)
