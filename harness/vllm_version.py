"""Which proxy a vLLM version runs in front of its servers (SPEC §7): the one rule, read by the
vLLM engines' command lines and by the simulator's knob check."""
from __future__ import annotations

from packaging.version import InvalidVersion, Version

from harness.errors import HarnessError

# PEP 440, as the old scripts compared (packaging.version): 0.16.0rc1 and 0.16.0.devN are older
# than 0.16.0 and take the project's own proxy.
CONNECTOR_PROXY_SINCE = Version("0.16.0")


def parse_version(text: str) -> Version:
    """`0.17.0`, `0.16.1rc1`, `0.9.2+cu128` -> a PEP 440 version; anything else is an error
    naming what was read (never a guess: the proxy choice hangs on it)."""
    try:
        return Version(text.strip())
    except InvalidVersion:
        raise HarnessError(f"cannot read the vLLM version from {text.strip()[:80]!r} "
                           "(not a PEP 440 version)") from None


def uses_connector_proxy(version: Version) -> bool:
    """vLLM from 0.16.0 on: the image's Mooncake connector proxy; before: the project's own."""
    return version >= CONNECTOR_PROXY_SINCE
