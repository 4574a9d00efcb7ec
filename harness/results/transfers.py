"""What Mooncake moved in a simulated case, read from the servers' logs after it ended.

The simulated engines (sim/site/harness_sim/handoff.py) log one line per KV transfer the
decode received and verified, one per transfer that failed, and, at start, which Mooncake they
loaded or why none loaded. After a case (its remote logs copied home) the runner reads them
back: bytes, transfers and throughput go to `case_summary.json` (`mooncake`), a failed case's
reason gets the first Mooncake failure (a payload's own reason, "exited with status 1", does
not say what broke), and the console says which Mooncake moved the bytes or why none did.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# KV (PD prefill -> decode) and EMBEDDING (EPD encoder -> prefill), as the receiver logs them
RECEIVED = re.compile(r"MOONCAKE (?:KV|EMBEDDING) RECEIVED bytes=(\d+) transfer_s=([\d.]+) "
                      r".*verified=(\S+)")
# a HiCache server's pages through Mooncake's store, one line per request
HICACHE = re.compile(r"MOONCAKE HICACHE pages_read=\d+ pages_written=\d+ bytes=(\d+) "
                     r"seconds=([\d.]+) .*verified=(\S+)")
FAILED = re.compile(r"MOONCAKE (?:KV|EMBEDDING|HICACHE) FAILED: (.*)")
LOADED = re.compile(r"(Mooncake (?:loaded:|NOT loaded|off |store ).*?)"
                    r"(?:; TransferEngine session|$)")
MAX_LOG_BYTES = 64 << 20  # a log this large is not a simulated server's


def figures(texts: Iterable[str]) -> dict[str, Any]:
    """Sum the transfer lines of some logs: transfers, bytes, seconds, MiB/s, failures, and
    which Mooncake the servers reported (one line each, as they said it)."""
    transfers = total_bytes = 0
    seconds = 0.0
    failures: list[str] = []
    which: list[str] = []
    for text in texts:
        for line in text.splitlines():
            match = RECEIVED.search(line) or HICACHE.search(line)
            if match and match.group(3) == "yes":
                transfers += 1
                total_bytes += int(match.group(1))
                seconds += float(match.group(2))
            elif match := FAILED.search(line):
                failures.append(match.group(1).strip())
            elif (match := LOADED.search(line)) and match.group(1) not in which:
                which.append(match.group(1))
    rate = round(total_bytes / (1 << 20) / seconds, 1) if seconds > 0 else None
    return {"transfers": transfers, "bytes": total_bytes, "transfer_s": round(seconds, 6),
            "MiB_per_s": rate, "failures": len(failures), "first_failure": failures[0]
            if failures else "", "mooncake": which}


def case_logs(directory: Path) -> list[str]:
    """The text of every log file under a case's log directory (remote ones copied home)."""
    texts = []
    for path in sorted(directory.rglob("*.log")) if directory.is_dir() else []:
        try:
            if path.is_file() and path.stat().st_size <= MAX_LOG_BYTES:
                texts.append(path.read_text(errors="replace"))
        except OSError as exc:
            log.debug("cannot read %s: %s", path, exc)
    return texts


def summarise(case: str, directory: Path) -> dict[str, Any] | None:
    """The case's Mooncake figures (None when no server moved or tried to move anything)
    and a console line saying what moved, or why nothing did."""
    found = figures(case_logs(directory))
    if not (found["transfers"] or found["failures"] or found["mooncake"]):
        return None
    if found["transfers"]:
        log.info("%s: Mooncake moved %d transfers, %.1f MiB, %s MiB/s", case,
                 found["transfers"], found["bytes"] / (1 << 20), found["MiB_per_s"])
    for line in found["mooncake"]:  # a Mooncake that did not load is news; the rest is record
        log.log(logging.WARNING if line.startswith("Mooncake NOT loaded") else logging.DEBUG,
                "%s: %s", case, line)
    return found
