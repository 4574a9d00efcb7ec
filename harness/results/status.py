"""The words a verdict is made of: `Status` (what `test_results.json` says) and `Outcome` (every
way a case can end), and the one rule for "passed" over run-summary entries."""
from __future__ import annotations

import enum
from typing import Iterable, Mapping


class Status(str, enum.Enum):
    """What `test_results.json` says: the seed's two words, nothing else."""
    PASS = "Pass"
    FAIL = "Fail"


class Outcome(str, enum.Enum):
    """How a case ended, every way it can; mapped to `Status` only where a verdict file is
    written (`status`)."""
    PASSED = "passed"
    FAILED = "failed"                      # the case ran and failed (or its input was bad)
    UNFINISHED = "unfinished"              # not decided yet, or the run was killed first
    NOT_RUN = "not run"                    # the run stopped before it (KEEP_ON_FAILURE)
    INTERRUPTED = "interrupted"            # Ctrl-C or SIGTERM stopped it
    UNHEALTHY = "environment unhealthy"    # a host could not be reset before it

    @property
    def status(self) -> Status:
        return Status.PASS if self is Outcome.PASSED else Status.FAIL


def entry_passed(entry: Mapping) -> bool:
    """Whether a run summary's case entry records a pass."""
    return entry.get("status") == Status.PASS.value


def all_passed(entries: Iterable[Mapping]) -> bool:
    """A run passed when it has cases and every one of them passed."""
    entries = list(entries)
    return bool(entries) and all(entry_passed(e) for e in entries)
