"""Encoder / prefill / decode disaggregation: a vision model, image embeddings moved by Mooncake."""
import base64

from harness.answers import RESPONSE_LOG, chat_content, post, require_json_ok, require_match
from harness.cases import DOUBLE, Case, CaseContext
from harness.engines import ROUTER_PORT, sglang_router, sglang_server
from harness.servers import start_all

NAME = "test_epd_sglang"
MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
ENCODER_PORT, PREFILL_PORT, DECODE_PORT = 30000, 30002, 30003
QUESTION = "What animal is in the picture?"
ANSWER = r"cat|kitten|feline"


def chat_request(image_jpeg: bytes) -> dict:
    data_url = "data:image/jpeg;base64," + base64.b64encode(image_jpeg).decode()
    return {"model": "default",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": data_url}}]}],
            "temperature": 0, "max_tokens": 64}


def run(ctx: CaseContext) -> None:
    ctx.each_model((MODEL,), lambda model: run_model(ctx, model))


def run_model(ctx: CaseContext, model: str) -> None:
    local, remote = ctx.local, ctx.remote
    encoder_url = f"http://{local.address}:{ENCODER_PORT}"
    encoder = sglang_server(ctx, "encoder", local, model, ENCODER_PORT,
                            ["--encoder-only", "--encoder-transfer-backend", "mooncake",
                             "--tp-size", "2"], "encoder.log", encoder_only=True)
    prefill = sglang_server(ctx, "prefill", local, model, PREFILL_PORT,
                            ["--disaggregation-mode", "prefill", "--language-only",
                             "--encoder-urls", encoder_url, "--tp-size", "2",
                             "--encoder-transfer-backend", "mooncake", "--base-gpu-id=4"],
                            "sglang_server_prefill.log")
    decode = sglang_server(ctx, "decode", remote, model, DECODE_PORT,
                           ["--disaggregation-mode", "decode", "--tp-size", "2",
                            "--base-gpu-id=6"], "sglang_server_decode.log")
    with ctx.step(f"{model}: start encoder, prefill and decode"):
        # The prefill waits for its encoder by itself; all three start at once.
        start_all([encoder, prefill, decode])
    router = sglang_router(ctx, model, f"http://{local.address}:{PREFILL_PORT}",
                           f"http://{remote.address}:{DECODE_PORT}")
    with ctx.step(f"{model}: start router"):
        start_all([router])
    url = f"http://127.0.0.1:{ROUTER_PORT}/v1/chat/completions"
    image = (ctx.local_project / "payloads" / "assets" / "cat.jpg").read_bytes()
    with ctx.step(f"{model}: request"):
        status, body = post(url, chat_request(image), 60, ctx.local_file(model, RESPONSE_LOG),
                            server="router")
        data = require_json_ok(status, body, url=url, server="router")
        require_match(chat_content(data, server="router"), ANSWER, server="router")


CASE = Case(NAME, "SGLANG", DOUBLE, 40, (MODEL,), run,
            "encoder and prefill here, decode on the remote host, a cat photo to describe")
