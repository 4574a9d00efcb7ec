"""The `vllm.entrypoints.openai.api_server` arguments the simulator understands.

Only what the vLLM case sends is parsed; anything else is kept, logged and ignored (vLLM has
hundreds of tuning flags that mean nothing to a simulator). A malformed known flag is
argparse's usage error (exit 2), as it is for the real server.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from typing import Any

# vLLM binds every interface by default; the simulator stays on loopback.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MOONCAKE_CONNECTOR = "MooncakeConnector"
KV_ROLES = ("kv_producer", "kv_consumer", "kv_both")


@dataclass
class VllmArgs:
    model: str
    served_model_name: list[str] | None
    host: str
    port: int
    tensor_parallel_size: int
    data_parallel_size: int
    max_model_len: int | None
    gpu_memory_utilization: float
    enable_prefix_caching: bool | None
    trust_remote_code: bool
    kv_transfer_config: dict[str, Any] | None
    unknown: list[str] = field(default_factory=list)

    @property
    def kv_role(self) -> str | None:
        """`kv_producer`, `kv_consumer`, `kv_both`, or None for a server outside PD."""
        return (self.kv_transfer_config or {}).get("kv_role")

    @property
    def role(self) -> str:
        """What kind of server this is, for log lines: prefill, decode, both or normal."""
        return {"kv_producer": "prefill", "kv_consumer": "decode",
                "kv_both": "both"}.get(self.kv_role or "", "normal")

    @property
    def served_model(self) -> str:
        return self.served_model_name[0] if self.served_model_name else self.model

    def non_default(self) -> dict[str, Any]:
        """The parsed values that differ from the defaults (vLLM logs these at start-up)."""
        defaults = vars(_parser().parse_args([]))
        return {k: v for k, v in vars(self).items() if k != "unknown" and defaults.get(k) != v}


def _model_len(text: str) -> int:
    """`32768`, `32k`, `1M` (vLLM accepts the suffixed forms too)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid max model length {text!r}")
    scale = {"": 1, "k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}[match.group(2)]
    return int(match.group(1)) * scale


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _kv_transfer_config(text: str) -> dict[str, Any]:
    """The `--kv-transfer-config` JSON: an object naming the connector and a known role."""
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(config, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    connector, role = config.get("kv_connector"), config.get("kv_role")
    if connector != MOONCAKE_CONNECTOR:
        raise argparse.ArgumentTypeError(
            f"kv_connector {connector!r}: the simulator imitates only {MOONCAKE_CONNECTOR!r}")
    if role not in KV_ROLES:
        raise argparse.ArgumentTypeError(
            f"kv_role {role!r}: expected one of {', '.join(KV_ROLES)}")
    return config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m vllm.entrypoints.openai.api_server",
                                description="harness SIMULATOR of vLLM's OpenAI API server",
                                allow_abbrev=False)
    p.add_argument("--model", default="facebook/opt-125m")
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    p.add_argument("--max-model-len", type=_model_len, default=None)
    p.add_argument("--gpu-memory-utilization", type=_fraction, default=0.9)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=None)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--kv-transfer-config", type=_kv_transfer_config, default=None)
    return p


def parse_vllm_args(argv: list[str]) -> VllmArgs:
    """Parse the command line; unknown flags are kept in `.unknown` (argparse exits 2 on a bad
    known flag)."""
    namespace, unknown = _parser().parse_known_args(argv)
    return VllmArgs(**vars(namespace), unknown=unknown)
