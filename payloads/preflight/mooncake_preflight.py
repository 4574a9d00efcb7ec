"""Mooncake pre-flight (SPEC §11): two TransferEngines move a ladder of sizes both ways and
check every byte, before any model is loaded. Runs where the engines run (the container, or
the host), with the Python that has Mooncake: standard library, plus PyTorch for GPU memory.

    python3 mooncake_preflight.py [--host H] [--protocol tcp|rdma] [--memory auto|gpu|cpu]
                                  [--sizes 4096,1048576,...] [--break-registration]

This process (the initiator) starts the target engine in a child process (`--role target`),
registers a buffer on each side (GPU memory when there is a GPU and PyTorch sees it), writes
each size to the target and reads it back, and compares SHA-256 digests taken on both sides.
The last line on stdout is one JSON object: the build, protocol, memory kind and, per size,
GB/s and latency each way; or `{"ok": false, "error": ...}` naming what failed. Exit 0 / 1.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time

DEFAULT_SIZES = (4096, 1 << 20, 64 << 20, 1 << 30)
PACKAGES = ("mooncake-transfer-engine", "mooncake-transfer-engine-cuda13",
            "mooncake-transfer-engine-non-cuda")


class Failed(Exception):
    """What failed, said in one line."""


def build() -> str:
    for name in PACKAGES:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "mooncake (no distribution found)"


class Buffer:
    """`size` bytes an engine may transfer from or into: GPU memory through PyTorch, or the
    engine's own managed host buffer."""

    def __init__(self, engine, size: int, memory: str) -> None:
        self.engine, self.size, self.memory = engine, size, memory
        if memory == "gpu":
            import torch
            self.tensor = torch.empty(size, dtype=torch.uint8, device="cuda")
            self.address = self.tensor.data_ptr()
        else:
            self.address = engine.allocate_managed_buffer(size)
            if not self.address:
                raise Failed(f"allocate_managed_buffer({size}) returned no buffer")

    def register(self, broken: bool = False) -> None:
        if self.memory != "gpu":
            return  # a managed buffer is registered by the engine that allocated it
        length = 1 if broken else self.size  # broken: the engine knows only its first byte
        code = self.engine.register_memory(self.address, length)
        if code != 0:
            raise Failed(f"register_memory of {self.size} bytes of GPU memory returned {code}")

    def fill(self, length: int, seed: int) -> None:
        pattern = pattern_bytes(length, seed)
        if self.memory == "gpu":
            import torch
            self.tensor[:length].copy_(torch.frombuffer(bytearray(pattern), dtype=torch.uint8))
        else:
            self.engine.write_bytes_to_buffer(self.address, pattern, length)

    def digest(self, length: int) -> str:
        if self.memory == "gpu":
            data = self.tensor[:length].cpu().numpy().tobytes()
        else:
            data = self.engine.read_bytes_from_buffer(self.address, length)
        return hashlib.sha256(data).hexdigest()


def pattern_bytes(length: int, seed: int) -> bytes:
    block = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(128))
    return (block * (length // len(block) + 1))[:length]


def memory_kind(asked: str) -> str:
    if asked != "auto":
        return asked
    try:
        import torch
        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def start_engine(host: str, protocol: str):
    try:
        from mooncake.engine import TransferEngine
    except Exception as exc:  # noqa: BLE001 (ImportError, a missing libcuda or libibverbs)
        raise Failed(f"mooncake.engine does not import ({build()}): "
                     f"{type(exc).__name__}: {exc}") from None
    engine = TransferEngine()
    code = engine.initialize(host, "P2PHANDSHAKE", protocol, "")
    if code != 0:
        raise Failed(f"TransferEngine.initialize({host}, P2PHANDSHAKE, {protocol}) returned {code}")
    return engine


# --- the target: an engine and a buffer, answering the initiator's questions -----------------
def target(args: argparse.Namespace) -> int:
    engine = start_engine(args.host, args.protocol)
    buffer = Buffer(engine, max(args.sizes), args.memory)
    buffer.register(broken=args.break_registration)
    say({"session": f"{args.host}:{engine.get_rpc_port()}", "address": buffer.address})
    for line in sys.stdin:
        command = json.loads(line)
        if command["do"] == "digest":
            say({"digest": buffer.digest(command["length"])})
        elif command["do"] == "fill":
            buffer.fill(command["length"], command["seed"])
            say({"filled": command["length"]})
        else:
            break
    return 0


def say(data: dict) -> None:
    print(json.dumps(data), flush=True)


# --- the initiator -----------------------------------------------------------------------------
class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        argv = [sys.executable, os.path.abspath(__file__), "--role", "target", "--host",
                args.host, "--protocol", args.protocol, "--memory", args.memory,
                "--sizes", ",".join(map(str, args.sizes))]
        if args.break_registration:
            argv.append("--break-registration")
        self.log = tempfile.TemporaryFile()  # its Mooncake log: the reason a transfer failed
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.hello = self.ask(None)

    def last_error(self) -> str:
        """The target's last Mooncake error line (glog's `E...] message`), "" when none."""
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").splitlines()
        errors = [line.split("] ", 1)[-1] for line in lines if line.startswith("E")]
        return errors[-1] if errors else ""

    def ask(self, command: dict | None) -> dict:
        if command is not None:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise Failed(f"the target engine exited with status {self.proc.wait()}")
            if line.startswith("{"):
                return json.loads(line)

    def close(self) -> None:
        self.log.seek(0)
        sys.stderr.write(self.log.read().decode(errors="replace"))  # kept with ours
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ladder(engine, buffer: Buffer, peer: Peer, sizes: list[int]) -> list[dict]:
    session, remote = peer.hello["session"], peer.hello["address"]

    def move(verb: str, size: int) -> dict:
        """One transfer, timed, then the digests of both sides compared."""
        call = engine.transfer_sync_write if verb == "write" else engine.transfer_sync_read
        started = time.perf_counter()
        code = call(session, buffer.address, remote, size)
        took = time.perf_counter() - started
        if code != 0:
            said = peer.last_error()
            raise Failed(f"{verb} of {size} bytes with {session} returned {code}"
                         + (f"; the target said: {said}" if said else ""))
        if peer.ask({"do": "digest", "length": size})["digest"] != buffer.digest(size):
            raise Failed(f"the {size} bytes of the {verb} with {session} arrived changed")
        return {f"{verb}_gbps": round(size / took / 1e9, 3), f"{verb}_ms": round(took * 1e3, 3)}

    rows = []
    for size in sizes:
        buffer.fill(size, seed=size)                       # this side's bytes go out
        row = {"bytes": size, **move("write", size)}
        peer.ask({"do": "fill", "length": size, "seed": size + 1})  # the target's come back
        rows.append({**row, **move("read", size)})
    return rows


def initiator(args: argparse.Namespace) -> int:
    result = {"build": build(), "protocol": args.protocol, "memory": args.memory,
              "host": args.host}
    peer = None
    try:
        engine = start_engine(args.host, args.protocol)
        buffer = Buffer(engine, max(args.sizes), args.memory)
        buffer.register()
        peer = Peer(args)
        result.update(ok=True, sizes=ladder(engine, buffer, peer, args.sizes))
    except Failed as exc:
        result.update(ok=False, error=str(exc))
    finally:
        if peer is not None:
            peer.close()
    say(result)
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("initiator", "target"), default="initiator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--protocol", choices=("tcp", "rdma"), default="tcp")
    parser.add_argument("--memory", choices=("auto", "gpu", "cpu"), default="auto")
    parser.add_argument("--sizes", type=lambda text: [int(s) for s in text.split(",")],
                        default=list(DEFAULT_SIZES))
    parser.add_argument("--break-registration", action="store_true",
                        help="the target registers only the first byte of its GPU buffer")
    args = parser.parse_args(argv)
    args.memory = memory_kind(args.memory)
    try:
        return target(args) if args.role == "target" else initiator(args)
    except Failed as exc:
        say({"ok": False, "error": str(exc)})
        return 1


if __name__ == "__main__":
    sys.exit(main())
