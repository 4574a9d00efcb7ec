"""vLLM prefill (remote) and decode (local) with the MooncakeConnector, behind a proxy."""
import json
import logging

from packaging.version import InvalidVersion, Version

from harness.run.answers import chat_content, require_json_ok, require_match
from harness.run.cases import DOUBLE, Case, CaseContext
from harness.errors import HarnessError
from harness.hosts.nodes import Node
from harness.servers.server import (AnyOf, HttpOk, OwnsPort, PostNot503, Server, app_startup_ready,
                                    log_line, offline_env, start_all)

log = logging.getLogger(__name__)
NAME = "test_vllm_1p1d_erdma"
MODELS = ("Qwen/Qwen3-8B", "deepseek-ai/DeepSeek-V2-Lite")
PREFILL_PORT, DECODE_PORT, PROXY_PORT = 8010, 8020, 8000
# PEP 440, as the old scripts compared (packaging.version): 0.16.0rc1 and 0.16.0.devN are older
# than 0.16.0 and take the project's own proxy. harness/simknobs.py mirrors this rule.
CONNECTOR_PROXY_SINCE = Version("0.16.0")
# Where vLLM images have kept the Mooncake connector proxy, under $VLLM_WORKSPACE.
CONNECTOR_PROXY_PATHS = (
    "examples/disaggregated/mooncake_connector/mooncake_connector_proxy.py",
    "examples/online_serving/disaggregated_serving/mooncake_connector/mooncake_connector_proxy.py",
)
OWN_PROXY = "payloads/vllm_proxy/disagg_proxy.py"
CONNECTOR_PROXY_READY = "All prefiller instances are ready."
CHAT_ROUTE = "/v1/chat/completions"


def request(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user",
                                          "content": "Where is the capital of France?"}],
            "stream": False, "max_tokens": 200, "temperature": 0}


def parse_version(text: str) -> Version:
    """`0.17.0`, `0.16.1rc1`, `0.9.2+cu128` -> a PEP 440 version; anything else is an error
    naming what was read (never a guess: the proxy choice hangs on it)."""
    try:
        return Version(text.strip())
    except InvalidVersion:
        raise HarnessError(f"cannot read the vLLM version from {text.strip()[:80]!r} "
                           "(not a PEP 440 version)") from None


def vllm_version(ctx: CaseContext, node: Node) -> Version:
    done = node.exec(["python3", "-c", "import vllm; print(vllm.__version__)"],
                          env=ctx.sim_env(node), pythonpath=ctx.pythonpath(node), timeout=120,
                          check=False)
    if not done.ok:
        raise HarnessError("cannot read the vLLM version in the container (import vllm "
                           f"failed with status {done.exit_code})", host=node.name,
                           log_tail=done.output[-2000:])
    return parse_version(done.output.strip().splitlines()[-1] if done.output.strip() else "")


def proxy_server(ctx: CaseContext, model: str, version: Version) -> Server:
    node, s = ctx.local, ctx.settings
    remote_url = f"http://{ctx.remote.address}:{PREFILL_PORT}"
    local_url = f"http://{node.address}:{DECODE_PORT}"
    route = ["--prefill", remote_url, "--decode", local_url, "--host", "0.0.0.0",
             "--port", str(PROXY_PORT)]
    if version >= CONNECTOR_PROXY_SINCE:
        script = connector_proxy_path(ctx, node)
        # The line may never reach proxy.log (the older copy logs it through a logger with no
        # handler); both copies answer 503 on the chat route until their prefillers are known.
        # An answer counts only from the proxy itself, not from a leftover on its port.
        ready = [AnyOf((log_line(CONNECTOR_PROXY_READY, s.timeout_proxy_s),
                        PostNot503(f"http://127.0.0.1:{PROXY_PORT}{CHAT_ROUTE}",
                                   s.timeout_proxy_s)), s.timeout_proxy_s),
                 OwnsPort(PROXY_PORT, s.timeout_proxy_s)]
    else:
        script = str(node.layout.root / OWN_PROXY)
        ready = [log_line("Application startup complete.", s.timeout_proxy_s),
                 HttpOk(f"http://127.0.0.1:{PROXY_PORT}/health", s.timeout_proxy_s)]
    argv = ["python3", "-u", script, *route]
    if ctx.settings.harness_sim and script.endswith(OWN_PROXY):  # proxy:* faults, real proxy
        argv[2:2] = ["-m", "harness_sim.proxy_launcher"]
    return ctx.server("proxy", node, argv,
                      log=ctx.model_logs(node, model) / "proxy.log", ready=ready,
                      env=ctx.sim_env(node, "proxy"), pythonpath=ctx.pythonpath(node))


def connector_proxy_path(ctx: CaseContext, node: Node) -> str:
    workspace = ctx.vllm_workspace(node)
    candidates = [f"{workspace}/{path}" for path in CONNECTOR_PROXY_PATHS]
    for path in candidates:
        if node.exec(["test", "-f", path], check=False, timeout=30).ok:
            return path
    raise HarnessError("the image's mooncake_connector_proxy.py is not where vLLM keeps it: "
                       + ", ".join(candidates), host=node.name,
                       hint="set VLLM_WORKSPACE to the folder holding vLLM's examples/")


def vllm_server(ctx: CaseContext, name: str, node: Node, model: str, port: int, role: str,
                log_name: str) -> Server:
    s = ctx.settings
    kv_config = json.dumps({"kv_connector": "MooncakeConnector", "kv_role": role},
                           separators=(",", ":"))
    argv = ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--host", node.address, "--port", str(port), "--tensor-parallel-size", "2",
            "--max-model-len", "32768", "--gpu-memory-utilization", "0.85",
            "--no-enable-prefix-caching", "--kv-transfer-config", kv_config]
    env = {"CUDA_VISIBLE_DEVICES": "6,7", **offline_env(node, model), **ctx.sim_env(node, name)}
    return ctx.server(name, node, argv, log=ctx.model_logs(node, model) / log_name,
                      ready=app_startup_ready(node.address, port, s.timeout_server_ready_s,
                                              s.timeout_health_s),
                      env=env, pythonpath=ctx.pythonpath(node))


def read_version(ctx: CaseContext) -> Version:
    with ctx.step("read vLLM version"):
        version = vllm_version(ctx, ctx.local)
    proxy = "the image's Mooncake connector proxy" if version >= CONNECTOR_PROXY_SINCE \
        else "the project's own proxy"
    log.info("%s: vLLM %s: %s", NAME, version, proxy)
    return version


def run(ctx: CaseContext) -> None:
    version = read_version(ctx)
    ctx.each_model(MODELS, lambda model: run_model(ctx, model, version))


def run_model(ctx: CaseContext, model: str, version: Version) -> None:
    start_servers(ctx, model, version)
    url = f"http://127.0.0.1:{PROXY_PORT}{CHAT_ROUTE}"
    with ctx.step(f"{model}: request"):
        status, body = ctx.post(url, request(model), 120, model, server="proxy")
        data = require_json_ok(status, body, url=url, server="proxy")
        require_match(chat_content(data, server="proxy"), r"paris", server="proxy")


def start_servers(ctx: CaseContext, model: str, version: Version | None = None) -> None:
    """Prefill on the remote host, decode here, then the proxy the vLLM version picks
    (`invoke serve` reads the version first)."""
    version = read_version(ctx) if version is None else version
    prefill = vllm_server(ctx, "prefill", ctx.remote, model, PREFILL_PORT, "kv_producer",
                          "vllm_server_remote.log")
    decode = vllm_server(ctx, "decode", ctx.local, model, DECODE_PORT, "kv_consumer",
                         "vllm_server_local.log")
    with ctx.step(f"{model}: start prefill and decode"):
        start_all([prefill, decode])
    with ctx.step(f"{model}: start proxy"):
        start_all([proxy_server(ctx, model, version)])


CASE = Case(NAME, "VLLM", DOUBLE, 10, MODELS, run,
            "vLLM prefill on the remote host, decode here, Mooncake connector, proxy in front",
            start_servers=start_servers)
