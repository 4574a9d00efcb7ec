#!/usr/bin/env python3
"""Check the host reset's GPU side on a real NVIDIA machine (no Docker needed; PyTorch needed).

    python3 scripts/gpu_check.py [--gpu 0] [--gb 8]

What it does, printing every reading and timing:

A. NvidiaSmi + wait_for_drain: a PyTorch process holds ~GB GiB on one GPU; the readings show it
   (and its PID among the compute apps); a short drain wait does not drain; after the process
   exits, wait_for_drain sees the memory come back (time from SIGTERM to drained).
B. reset_node on a HostNode (HARNESS_RUNTIME=host): the holder started by node.spawn is stopped
   and the memory drains: a pass.
C. the scoped kill: a holder that left its process group (setsid, as escaped engine
   subprocesses do) survives the stop; the first drain wait fails, the reset kills it (its
   output is under this run's tree), the second wait drains: a pass, with the PID killed.
D. never anything else: a holder this "run" did not start (own session, output elsewhere) is
   left alone: the reset fails with ResetFailed naming it, and the process is still alive.

Exit status 0 when everything behaved as described. Nothing outside a temporary project dir is
touched; the only processes killed are the ones this script started.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.prep import gpu as g  # noqa: E402
from harness.hosts.local import LocalHost  # noqa: E402
from harness.hosts.nodes import HostNode  # noqa: E402
from harness.prep.reset import ResetFailed, reset_node  # noqa: E402
from harness.settings import Settings  # noqa: E402

HOLDER = r"""
import signal, sys, time
import torch
gpu, gb = int(sys.argv[1]), float(sys.argv[2])
t = time.monotonic()
x = torch.empty(int(gb * 2**30), dtype=torch.uint8, device=f"cuda:{gpu}")
x.fill_(1)
torch.cuda.synchronize()
print(f"holding {gb:g} GiB on cuda:{gpu} after {time.monotonic() - t:.2f}s", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(0.05)
"""

failures: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)


def expect(ok: bool, what: str) -> None:
    say(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def show(drain: g.Drain, label: str) -> None:
    say(f"  {label}: {drain.describe()} ({len(drain.readings)} readings)")
    for r in drain.readings[:3] + (["..."] if len(drain.readings) > 6 else []) + \
            drain.readings[max(3, len(drain.readings) - 3):]:
        say("     ..." if r == "..." else f"    {r.at_s:7.2f}s {list(r.used_mb)}")


def wait_file_line(path: Path, text: str, timeout_s: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic() - start
        time.sleep(0.05)
    raise SystemExit(f"no {text!r} in {path} after {timeout_s}s:\n"
                     f"{path.read_text(errors='replace') if path.exists() else ''}")


def settings(**env: str) -> Settings:
    return Settings.from_env({"HARNESS_RUNTIME": "host", "TIMEOUT_STOP_S": "10", **env})


def phase_a(smi: g.NvidiaSmi, node: HostNode, args) -> None:
    say(f"A. NvidiaSmi + wait_for_drain with a {args.gb:g} GiB PyTorch holder on GPU {args.gpu}")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(args.gpu), str(args.gb)],
                            stdout=subprocess.PIPE, text=True)
    try:
        _held_then_released(smi, args, proc, start)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _held_then_released(smi: g.NvidiaSmi, args, proc: subprocess.Popen, start: float) -> None:
    line = proc.stdout.readline().strip()
    say(f"  holder pid {proc.pid}: {line!r} ({time.monotonic() - start:.2f}s from start)")
    used = smi.used_mb()
    procs = smi.processes()
    say(f"  used_mb: {used}")
    say(f"  processes: {', '.join(map(str, procs)) or 'none listed'}")
    expect(used[args.gpu] >= args.gb * 1024 * 0.9, f"GPU {args.gpu} shows >= 90% of {args.gb} GiB")
    listed = [p for p in procs if p.pid == proc.pid]
    if listed:
        expect(listed[0].used_mb is None or listed[0].used_mb >= args.gb * 1024 * 0.9,
               f"the holder's PID {proc.pid} is listed with its memory")
    else:
        say("  NOTE: nvidia-smi does not list this process's PID (a PID namespace it cannot "
            "map, e.g. inside a container); phases C and D need it and will say so")
    args.pids_visible = bool(listed)
    short = g.wait_for_drain(smi, timeout_s=2, poll_s=0.5)
    show(short, "drain wait of 2s while held")
    expect(not short.drained, "a 2s drain wait does not drain while the memory is held")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    drain = g.wait_for_drain(smi, timeout_s=args.drain_timeout, poll_s=0.1)
    exited = proc.wait(5)
    show(drain, "drain wait after SIGTERM")
    expect(drain.drained, f"drained within {args.drain_timeout}s (took {time.monotonic() - t0:.2f}s"
           f" from SIGTERM; holder exit status {exited})")


def spawn_holder(node: HostNode, name: str, args, prefix=()) -> int:
    log = node.layout.case_logs("gpu-check") / f"{name}.log"
    node.spawn(name, [*prefix, sys.executable, "-c", HOLDER, str(args.gpu), str(args.gb)],
               case="gpu-check", log=log)
    took = wait_file_line(Path(str(node.on_host(log))), "holding")
    say(f"  {name} holding after {took:.2f}s")
    return took


def report_lines(report) -> None:
    say(f"  report: {report.summary()}")
    say(f"  phases (s): {report.phases_s}; total {report.total_s:.2f}s")


def phase_b(smi, node: HostNode, args) -> None:
    say("\nB. reset_node on a HostNode: the spawned holder is stopped, memory drains")
    spawn_holder(node, "holder-b", args)
    s = settings(TIMEOUT_GPU_DRAIN_S=str(args.drain_timeout))
    report = reset_node(node, s, smi, cancel=threading.Event())
    report_lines(report)
    expect(report.passed and not report.killed, "reset passed without killing anything")


def phase_c(smi, node: HostNode, args) -> None:
    say("\nC. scoped kill: a holder that left its process group survives the stop and is killed")
    if not args.pids_visible:
        say("  SKIPPED: nvidia-smi cannot list this namespace's PIDs here")
        return
    before = {p.pid for p in smi.processes()}
    spawn_holder(node, "holder-c", args, prefix=("setsid",))
    escaped = sorted({p.pid for p in smi.processes()} - before)
    say(f"  escaped holder pid(s): {escaped}")
    s = settings(TIMEOUT_GPU_DRAIN_S="5", TIMEOUT_GPU_DRAIN_AFTER_KILL_S=str(args.drain_timeout))
    try:
        report = reset_node(node, s, smi, cancel=threading.Event())
        report_lines(report)
        show(report.first, "first drain wait")
        if report.second:
            show(report.second, "second drain wait")
        expect(report.passed and [p.pid for p in report.killed] == escaped,
               "reset passed after killing exactly the escaped holder")
    finally:
        for pid in escaped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def phase_d(smi, node: HostNode, args) -> None:
    say("\nD. a GPU process this run did not start is never killed: the reset fails")
    if not args.pids_visible:
        say("  SKIPPED: nvidia-smi cannot list this namespace's PIDs here")
        return
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(args.gpu), str(args.gb)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        say(f"  foreign pid {proc.pid}: {proc.stdout.readline().strip()!r}")
        s = settings(TIMEOUT_GPU_DRAIN_S="2", TIMEOUT_GPU_DRAIN_AFTER_KILL_S="2")
        try:
            reset_node(node, s, smi, cancel=threading.Event())
            expect(False, "the reset failed")
        except ResetFailed as exc:
            say(f"  ResetFailed: {exc}")
            say("  " + exc.details().replace("\n", "\n  "))
            expect([p.pid for p in exc.report.left_alone] == [proc.pid],
                   "the foreign PID is listed as left alone")
            expect(proc.poll() is None, "the foreign process is still alive")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    drain = g.wait_for_drain(smi, timeout_s=args.drain_timeout, poll_s=0.1)
    show(drain, "after stopping it ourselves")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", type=int, default=0, help="GPU index to hold memory on")
    parser.add_argument("--gb", type=float, default=8.0, help="GiB to hold")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    args = parser.parse_args()
    args.pids_visible = False
    smi = g.NvidiaSmi(LocalHost())
    t = time.monotonic()
    try:
        used = smi.used_mb()
    except g.GpuReadError as exc:
        say(f"GpuReadError (a reset here would fail): {exc.details()}")
        return 2
    say(f"nvidia-smi: {len(used)} GPU(s), used_mb {used} (read in {time.monotonic() - t:.2f}s)")
    say(f"processes: {', '.join(map(str, smi.processes())) or 'none'}")
    if used[args.gpu] > g.LIMIT_MB:
        say(f"GPU {args.gpu} already uses {used[args.gpu]} MB > {g.LIMIT_MB}: pick an idle GPU")
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as root:
        node = HostNode(LocalHost("local"), root)
        for phase in (phase_a, phase_b, phase_c, phase_d):
            try:
                phase(smi, node, args)
            except Exception as exc:  # noqa: BLE001 - report it, go on with the next phase
                say(f"  FAIL {phase.__name__}: {type(exc).__name__}: {exc}")
                if hasattr(exc, "details"):
                    say("  " + exc.details().replace("\n", "\n  "))
                failures.append(f"{phase.__name__} raised {type(exc).__name__}")
            finally:
                node.stop_all(None, 10)
    say(f"\n{'ALL OK' if not failures else 'FAILED: ' + '; '.join(failures)} "
        f"({time.monotonic() - t:.1f}s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
