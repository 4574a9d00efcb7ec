"""`run/logs/run_summary.json`: the one place it is written (with the JUnit file made from it)
and read back (rerun, merge, the CLI). Runner and merge build its value; the report and JUnit
read the file.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.errors import SettingsError
from harness.files import write_json_atomic
from harness.layout import RUN_SUMMARY_FILE, Layout
from harness.results.junit import write_junit
from harness.results.status import entry_passed


def write_summary(logs: Path, summary: dict) -> None:
    """The run summary of the tree at `logs`, then `junit.xml` made from it."""
    write_json_atomic(Path(logs) / RUN_SUMMARY_FILE, summary)
    write_junit(Path(logs))


def failed_cases(summary: dict) -> list[str]:
    """The cases a run summary does not record as passed (failed, or never finished)."""
    return [c["case"] for c in summary["cases"] if not entry_passed(c)]


def read_run_summary(layout: Layout) -> dict:
    """The run summary of the tree at `layout` (see read_summary_file)."""
    return read_summary_file(Path(layout.run_summary))


def read_summary_file(path: Path) -> dict:
    """A run summary file; SettingsError (one line) when it is missing, unreadable or holds no
    list of named cases (rerun reads the last run's, merge each host pair's)."""
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"no run summary at {path}") from None
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path} is not a readable run summary ({exc})") from None
    if not (isinstance(summary, dict) and isinstance(summary.get("cases"), list)
            and all(isinstance(c, dict) and isinstance(c.get("case"), str)
                    for c in summary["cases"])):
        raise SettingsError(f"{path} is not a readable run summary (no list of named cases)")
    return summary
