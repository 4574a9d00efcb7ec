"""`run/.shrc`: the resolved settings as `export NAME=value` lines (SPEC §3), so a person can
`source run/.shrc` on a host and see what the harness used. Secrets are never written.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Mapping

from harness.errors import SettingsError
from harness.files import write_text_atomic
from harness.settings import Settings


def shrc_text(settings: Settings, paths: Mapping[str, str]) -> str:
    """`export NAME=value` lines: every non-secret setting, then the path entries."""
    items = settings.env_items() + list(paths.items())
    text = "# written by the Mooncake E2E harness; `source` it to see what a run used\n"
    return text + "".join(f"export {name}={shlex.quote(value)}\n" for name, value in items)


def write_shrc(path: Path, settings: Settings, paths: Mapping[str, str]) -> None:
    """Write run/.shrc atomically (see `shrc_text`)."""
    write_text_atomic(path, shrc_text(settings, paths))


def read_shrc(path: Path) -> dict[str, str]:
    """Parse a `.shrc`; a line that is not `export NAME=value` raises SettingsError naming it."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            words = shlex.split(stripped)
        except ValueError as exc:
            raise SettingsError(f"{path}:{number}: cannot parse {line!r} ({exc})",
                                hint=f"delete {path} and run again") from None
        if len(words) != 2 or words[0] != "export" or "=" not in words[1]:
            raise SettingsError(f"{path}:{number}: expected 'export NAME=value', got {line!r}",
                                hint=f"delete {path} and run again")
        name, _, value = words[1].partition("=")
        values[name] = value
    return values
