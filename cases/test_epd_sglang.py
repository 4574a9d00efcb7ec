"""Encoder / prefill / decode disaggregation: a vision model, image embeddings moved by Mooncake."""
import base64
from pathlib import Path

from harness.run.answers import chat_content, require_json_ok, require_match
from harness.run.cases import DOUBLE, Case, CaseContext
from harness.run.engines import sglang_router, sglang_server
from harness.errors import SettingsError
from harness.servers.server import Server, start_all

NAME = "test_epd_sglang"
MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
ENCODER_PORT, PREFILL_PORT, DECODE_PORT = 30000, 30002, 30003
QUESTION = "What animal is in the picture?"
ANSWER = r"cat|kitten|feline"


# The old case sent a 2326x3495 photo (about 10 000 image tokens for the encoder to embed and
# Mooncake to move); the default EPD_IMAGE is as large (3608x2400, upscaled from cat.jpg).
MIME_BY_MAGIC = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}


def image_mime(data: bytes) -> str | None:
    return next((mime for magic, mime in MIME_BY_MAGIC.items() if data.startswith(magic)), None)


def read_image(ctx: CaseContext) -> tuple[bytes, str]:
    """EPD_IMAGE (relative to the project directory on this machine): its bytes and type."""
    path = ctx.local_project / Path(ctx.settings.epd_image).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"bad value for EPD_IMAGE: cannot read {path} "
                            f"({exc.strerror or exc})") from None
    mime = image_mime(data)
    if mime is None:
        raise SettingsError(f"bad value for EPD_IMAGE: {path} is not a JPEG or PNG file")
    return data, mime


def chat_request(image: bytes, mime: str = "image/jpeg") -> dict:
    data_url = f"data:{mime};base64," + base64.b64encode(image).decode()
    return {"model": "default",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": data_url}}]}],
            "temperature": 0, "max_tokens": 64}


def before(ctx: CaseContext) -> dict:
    """The request, read before any server starts: a bad EPD_IMAGE is one line, at once."""
    with ctx.step("read EPD_IMAGE"):
        return chat_request(*read_image(ctx))


def start_servers(ctx: CaseContext, model: str) -> Server:
    """Encoder and prefill here, decode on the remote host, the router; the router."""
    local, remote = ctx.local, ctx.remote
    encoder = sglang_server(ctx, "encoder", local, model, ENCODER_PORT,
                            ["--encoder-only", "--encoder-transfer-backend", "mooncake",
                             "--tp-size", "2"], "encoder.log", encoder_only=True)
    prefill = sglang_server(ctx, "prefill", local, model, PREFILL_PORT,
                            ["--disaggregation-mode", "prefill", "--language-only",
                             "--encoder-urls", encoder.url(), "--tp-size", "2",
                             "--encoder-transfer-backend", "mooncake", "--base-gpu-id=4"],
                            "sglang_server_prefill.log")
    decode = sglang_server(ctx, "decode", remote, model, DECODE_PORT,
                           ["--disaggregation-mode", "decode", "--tp-size", "2",
                            "--base-gpu-id=6"], "sglang_server_decode.log")
    with ctx.step(f"{model}: start encoder, prefill and decode"):
        # The prefill waits for its encoder by itself; all three start at once.
        start_all([encoder, prefill, decode])
    router = sglang_router(ctx, model, prefill, decode)
    with ctx.step(f"{model}: start router"):
        start_all([router])
    return router


def check(ctx: CaseContext, model: str, router: Server) -> None:
    url = router.url("/v1/chat/completions")
    with ctx.step(f"{model}: request"):
        status, body = ctx.post(url, ctx.prepared, 60, model, server="router")
        data = require_json_ok(status, body, url=url, server="router")
        require_match(chat_content(data, server="router"), ANSWER, server="router")


CASE = Case(NAME, "SGLANG", DOUBLE, 40, (MODEL,),
            summary="encoder and prefill here, decode on the remote host, a cat photo to describe",
            start_servers=start_servers, check=check, before=before)
