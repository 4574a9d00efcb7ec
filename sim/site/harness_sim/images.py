"""SIMULATOR -- not SGLang. What the simulated encoder reads of an image: its size.

A real EPD encoder (Qwen2.5-VL) cuts the picture into 14-pixel patches merged 2x2, so one image
token covers 28x28 pixels (up to its max_pixels, 16384 tokens); that embedding is what Mooncake
moves to the prefill. The simulator reads the width and height from the JPEG's SOF marker or
the PNG's IHDR (standard library only) and sizes its made-up embedding the same way, so a
bigger photo is a bigger request and a bigger embedding.
"""
from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable, Mapping
from typing import Any

PIXELS_PER_TOKEN_SIDE = 28
MAX_IMAGE_TOKENS = 16384
HIDDEN_SIZE = 3584        # Qwen2.5-VL-7B
BYTES_PER_VALUE = 2       # bf16
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF segment, or None when it is not a readable JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2:at + 4])
        if marker in _SOF and at + 9 <= len(data):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + length
    return None


def png_size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def decode_data_url(url: str) -> bytes | None:
    """The bytes of a `data:<type>;base64,...` URL, or None for anything else."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        return None
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def image_tokens(width: int, height: int) -> int:
    per_side = PIXELS_PER_TOKEN_SIDE
    tokens = max(1, round(width / per_side)) * max(1, round(height / per_side))
    return min(tokens, MAX_IMAGE_TOKENS)


def image_urls(body: Mapping[str, Any]) -> list[str]:
    """Every image a request carries: chat `image_url` parts and SGLang's `image_data`."""
    urls: list[str] = []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, Mapping) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, Mapping) and part.get("type") == "image_url":
                inner = part.get("image_url")
                url = inner.get("url") if isinstance(inner, Mapping) else inner
                if isinstance(url, str):
                    urls.append(url)
    data = body.get("image_data")
    urls.extend(u for u in (data if isinstance(data, list) else [data]) if isinstance(u, str))
    return urls


def describe(urls: Iterable[str]) -> list[dict[str, Any]]:
    """Per image: its size and image tokens (size unknown: not a base64 JPEG/PNG data URL)."""
    found = []
    for url in urls:
        data = decode_data_url(url)
        size = (jpeg_size(data) or png_size(data)) if data else None
        entry: dict[str, Any] = {"bytes": len(data) if data else None}
        if size:
            entry.update(width=size[0], height=size[1], tokens=image_tokens(*size))
        found.append(entry)
    return found
