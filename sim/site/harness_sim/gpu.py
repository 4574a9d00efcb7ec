"""Simulated GPU memory: a running simulated engine "holds" GPU memory through a record file.

When HARNESS_SIM_GPU_DIR is set (the harness sets it to `<project>/run/sim-gpu` as the engine
sees the project: `/test_run/run/sim-gpu` in a container, the bind mount shows the host the same
files), `hold()` writes one JSON record there at start-up and `release()` removes it on a clean
exit (SIGTERM/SIGINT, any fault exit, atexit as a backup). A process killed outright (SIGKILL,
container restart) leaves its record behind; the harness's reader (harness.prep.sim_gpu.SimGpu) then
finds the process gone and counts nothing for it, as a real GPU frees a dead process's memory.

With the fault `gpu-leak` on this engine's component the record says `"leak": true` and is kept
on exit: the harness counts it as used memory for ever (no process to kill), so the host reset
between cases must fail, as it would for memory a driver never gave back.

Identity: `pid` is the engine's PID as it sees itself (its container's PID namespace when it
runs in one) and `starttime` is field 22 of /proc/self/stat (clock ticks since boot, the same in
every PID namespace). The harness finds the process in the host's view by matching the last
entry of `NSpid` in /proc/<pid>/status and that start time, so a reused PID never counts.

This is the simulator (not SGLang): nothing here touches a real GPU.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
from collections.abc import Mapping, Sequence, Set
from pathlib import Path

from harness_sim import faults
from harness_sim.sglang_args import ServerArgs

GPU_DIR_ENV = "HARNESS_SIM_GPU_DIR"
MB_PER_RANK = 8000          # what one tensor-parallel rank "holds" (about a 7B model's share)
RECORD_VERSION = 1

_held: dict[str, object] = {}   # the record this process wrote: {"path": Path, "leak": bool}


def own_starttime() -> int:
    """This process's start time in clock ticks since boot (/proc/self/stat field 22)."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rpartition(") ")[2].split()
    return int(fields[19])


def record_for(args: ServerArgs, active_faults: Set[str], component: str | None,
               gpus: Sequence[int] | None = None) -> dict:
    """The record of this engine: which simulated GPUs it holds and how much on each.

    The GPUs are `--base-gpu-id` .. + `--tp-size` - 1 unless `gpus` names them (an engine
    without those flags, e.g. one placed by CUDA_VISIBLE_DEVICES)."""
    if gpus is None:
        tp = max(1, int(getattr(args, "tp_size", 1) or 1))
        base = max(0, int(getattr(args, "base_gpu_id", 0) or 0))
        gpus = range(base, base + tp)
    return {
        "version": RECORD_VERSION,
        "simulated": True,
        "pid": os.getpid(),
        "starttime": own_starttime(),
        "hostname": socket.gethostname(),
        "gpus": [int(g) for g in gpus],
        "mb_per_gpu": MB_PER_RANK,
        "leak": "gpu-leak" in active_faults,
        "component": component,
        "role": getattr(args, "role", None),
        "port": getattr(args, "port", None),
    }


def hold(args: ServerArgs, active_faults: Set[str], component: str | None,
         environ: Mapping[str, str], gpus: Sequence[int] | None = None) -> Path | None:
    """Write this engine's record when HARNESS_SIM_GPU_DIR is set; None when it is not.

    A directory that cannot be written is a ValueError (a bad knob): silently holding nothing
    would let a reset pass that should have been tested.
    """
    where = environ.get(GPU_DIR_ENV, "").strip()
    if not where:
        return None
    record = record_for(args, active_faults, component, gpus)
    directory = Path(where)
    path = directory / f"{record['hostname']}-{record['pid']}-{record['starttime']}.json"
    tmp = path.with_name(path.name + ".tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ValueError(f"bad {GPU_DIR_ENV} {where!r}: cannot write the simulated GPU record "
                         f"({exc.strerror or exc})") from None
    _held.clear()
    _held.update(path=path, leak=record["leak"])
    if record["leak"]:
        faults.played(component, "gpu-leak", f"{record['mb_per_gpu']} MB on GPUs "
                      f"{record['gpus']} stay held after this process exits ({path.name})")
    atexit.register(release)
    return path


def release() -> None:
    """Remove this engine's record on exit, unless it leaks; idempotent."""
    path = _held.pop("path", None)
    leak = _held.pop("leak", False)
    if path is None or leak:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
