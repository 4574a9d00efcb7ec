"""The simulated GPUs: where there is no GPU, the records the simulated engines write
(sim/site/harness_sim/gpu.py), read as a `GpuMemory` source for the host reset (SPEC §9 "GPU").

A record holds memory while its process lives, or for ever when it says `leak` (fault
`gpu-leak`); its process is found in the host's view by PID namespace PID + start time, so the
cgroup-scoped kill of harness.prep.reset treats it exactly like a real GPU process.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterable

from harness.errors import CommandFailed, tail
from harness.hosts.local import LocalHost
from harness.layout import Layout
from harness.prep.gpu import SMI_TIMEOUT_S, GpuProcess, GpuReadError

SIM_GPU_ENV = "HARNESS_SIM_GPU_DIR"
SIM_GPU_COUNT = 8                       # the simulated host has 8 GPUs, as the H200 hosts do

# Runs on the host (python3 there): reads every record, then finds each record's process in the
# host's view: the last NSpid entry (its PID in its own namespace) and its start time must match.
_SIM_SCAN = r"""
import json, os, sys
directory = sys.argv[1]
try:
    names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
except FileNotFoundError:
    names = []
records = []
for name in names:
    try:
        with open(os.path.join(directory, name)) as fh:
            text = fh.read()
    except FileNotFoundError:
        continue
    records.append({"file": name, "text": text})
found = {}
if records:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as fh:
                fields = fh.read().rpartition(") ")[2].split()
            with open("/proc/%s/status" % entry) as fh:
                nspid = [l.split()[-1] for l in fh if l.startswith("NSpid:")]
        except (OSError, IndexError):
            continue
        if fields[0] in ("Z", "X"):
            continue
        found["%s:%s" % (nspid[0] if nspid else entry, fields[19])] = int(entry)
print(json.dumps({"records": records, "found": found}))
"""


@dataclass(frozen=True)
class SimRecord:
    """One simulated engine's record, resolved: `host_pid` is None when its process is gone."""
    file: str
    pid: int
    starttime: int
    gpus: tuple[int, ...]
    mb_per_gpu: int
    leak: bool
    host_pid: int | None
    component: str | None = None

    @property
    def alive(self) -> bool:
        return self.host_pid is not None

    @property
    def holds(self) -> bool:
        return self.alive or self.leak


def parse_sim_scan(output: str) -> list[SimRecord]:
    """The scan's JSON → resolved records; a record that is not what the simulator writes is
    a GpuReadError naming its file."""
    try:
        data = json.loads(output.strip().splitlines()[-1])
        raw_records, found = data["records"], data["found"]
    except (ValueError, IndexError, KeyError, TypeError):
        raise GpuReadError(f"cannot read the simulated GPU records: scan answered "
                           f"{tail(output, 3)[:200]!r}") from None
    records = []
    for raw in raw_records:
        try:
            rec = json.loads(raw["text"])
            pid, start = int(rec["pid"]), int(rec["starttime"])
            gpus = tuple(int(g) for g in rec["gpus"])
            mb = int(rec["mb_per_gpu"])
            leak = bool(rec.get("leak", False))
        except (ValueError, KeyError, TypeError) as exc:
            raise GpuReadError(f"cannot read the simulated GPU record {raw.get('file')}: "
                               f"{type(exc).__name__}: {exc}") from None
        records.append(SimRecord(raw["file"], pid, start, gpus, mb, leak,
                                 found.get(f"{pid}:{start}"), rec.get("component")))
    return records


def sim_used_mb(records: Iterable[SimRecord], count: int = SIM_GPU_COUNT) -> list[int]:
    """MB per simulated GPU: every record that holds memory adds its share to its GPUs."""
    records = [r for r in records if r.holds]
    count = max([count, *(g + 1 for r in records for g in r.gpus)])
    used = [0] * count
    for rec in records:
        for gpu in rec.gpus:
            used[gpu] += rec.mb_per_gpu
    return used


def sim_processes(records: Iterable[SimRecord]) -> list[GpuProcess]:
    """The live processes among the records (a leaked record of a dead one has none to kill)."""
    return sorted((GpuProcess(r.host_pid, r.mb_per_gpu * len(r.gpus))
                   for r in records if r.host_pid is not None), key=lambda p: p.pid)


def sim_gpu_dir(layout: Layout) -> PurePosixPath:
    """Where simulated engines write their records, in `layout`'s view."""
    return layout.run / "sim-gpu"


def sim_gpu_env(layout: Layout) -> dict[str, str]:
    """The knob for what the harness starts on a node, in that node's view (`node.layout`)."""
    return {SIM_GPU_ENV: str(sim_gpu_dir(layout))}


class SimGpu:
    """The simulated GPUs of `host`: records under `directory` (host view), read via host.run."""

    def __init__(self, host, directory: object, count: int = SIM_GPU_COUNT,
                 python: str | None = None) -> None:
        self.host = host
        self.directory = str(directory)
        self.count = count
        # This machine: the harness's own interpreter (no PATH lookup per poll); else python3.
        self.python = python or (sys.executable if type(host) is LocalHost else "python3")

    def __repr__(self) -> str:
        return f"SimGpu({getattr(self.host, 'name', self.host)!r}, {self.directory!r})"

    def records(self) -> list[SimRecord]:
        name = getattr(self.host, "name", "?")
        try:
            done = self.host.run([self.python, "-I", "-c", _SIM_SCAN, self.directory],
                                 timeout=SMI_TIMEOUT_S, check=False)
        except CommandFailed as exc:
            raise GpuReadError(f"cannot read the simulated GPU records on host {name}: {exc}",
                               host=name) from None
        if not done.ok:
            raise GpuReadError(f"cannot read the simulated GPU records on host {name}: scan "
                               f"exited {done.exit_code}", host=name,
                               log_tail=tail(done.output) or None)
        return parse_sim_scan(done.output)

    def used_mb(self) -> list[int]:
        return sim_used_mb(self.records(), self.count)

    def processes(self) -> list[GpuProcess]:
        return sim_processes(self.records())

    def clear(self) -> None:
        """Forget every record (a new run starts with idle simulated GPUs)."""
        self.host.remove(self.directory)
