"""The `sglang.launch_server` arguments the simulator understands (the ones the cases send).

Unknown arguments are kept and logged, never an error: the cases and SGLang's own tests pass
many tuning flags that mean nothing to a simulator.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30000
DEFAULT_BOOTSTRAP_PORT = 8998  # SGLang's default disaggregation bootstrap port
DISAGGREGATION_MODES = ("null", "prefill", "decode")


@dataclass
class ServerArgs:
    model_path: str
    tokenizer_path: str | None
    served_model_name: str | None
    host: str
    port: int
    tp_size: int
    dp_size: int
    base_gpu_id: int
    disaggregation_mode: str
    disaggregation_bootstrap_port: int
    disaggregation_transfer_backend: str | None
    disaggregation_ib_device: str | None
    encoder_only: bool
    language_only: bool
    encoder_urls: list[str]
    encoder_transfer_backend: str | None
    trust_remote_code: bool
    mem_fraction_static: float | None
    hicache_ratio: float | None
    hicache_size: int | None
    hicache_storage_backend: str | None
    hicache_mem_layout: str | None
    hicache_io_backend: str | None
    hicache_write_policy: str | None
    enable_hierarchical_cache: bool
    elastic_ep_backend: str | None
    mooncake_ib_device: str | None
    unknown: list[str] = field(default_factory=list)

    @property
    def role(self) -> str:
        """What kind of server this is, for log lines and /server_info."""
        if self.encoder_only:
            return "encoder"
        return self.disaggregation_mode if self.disaggregation_mode != "null" else "normal"

    def as_dict(self) -> dict[str, Any]:
        data = dict(vars(self))
        data.pop("unknown")
        return data


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m sglang.launch_server",
                                description="harness SIMULATOR of sglang.launch_server",
                                allow_abbrev=False)
    p.add_argument("--model-path", "--model", dest="model_path", default="simulated/model")
    p.add_argument("--tokenizer-path", default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--tp-size", "--tp", "--tensor-parallel-size", dest="tp_size", type=int,
                   default=1)
    p.add_argument("--dp-size", "--dp", "--data-parallel-size", dest="dp_size", type=int,
                   default=1)
    p.add_argument("--base-gpu-id", type=int, default=0)
    p.add_argument("--disaggregation-mode", choices=DISAGGREGATION_MODES, default="null")
    p.add_argument("--disaggregation-bootstrap-port", type=int, default=DEFAULT_BOOTSTRAP_PORT)
    p.add_argument("--disaggregation-transfer-backend", default=None)
    p.add_argument("--disaggregation-ib-device", default=None)
    p.add_argument("--encoder-only", action="store_true")
    p.add_argument("--language-only", action="store_true")
    p.add_argument("--encoder-urls", nargs="+", default=[])
    p.add_argument("--encoder-transfer-backend", default=None)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--mem-fraction-static", type=float, default=None)
    p.add_argument("--enable-hierarchical-cache", action="store_true")
    p.add_argument("--hicache-ratio", type=float, default=None)
    p.add_argument("--hicache-size", type=int, default=None)
    p.add_argument("--hicache-storage-backend", default=None)
    p.add_argument("--hicache-mem-layout", default=None)
    p.add_argument("--hicache-io-backend", default=None)
    p.add_argument("--hicache-write-policy", default=None)
    p.add_argument("--elastic-ep-backend", default=None)
    p.add_argument("--mooncake-ib-device", default=None)
    return p


def parse_server_args(argv: list[str]) -> ServerArgs:
    """Parse launch_server's argv; raises SystemExit(2) (argparse) on a malformed known flag."""
    namespace, unknown = _parser().parse_known_args(argv)
    return ServerArgs(**vars(namespace), unknown=unknown)
