"""Mooncake pre-flight (SPEC §11): two TransferEngines move a ladder of sizes both ways and
check every byte, and a Mooncake store puts on one side and gets on the other, before any model
is loaded. Runs where the engines run (container or host), with the Python that has Mooncake
(standard library, plus PyTorch for GPU memory).

    python3 mooncake_preflight.py [--host H] [--protocol tcp|rdma] [--memory auto|gpu|cpu]
        [--sizes 4096,1048576,...] [--target H:P] [--store MASTER:RPC_PORT --metadata URL]
    python3 mooncake_preflight.py --role target --host H --control-port P [--log-file F] ...

The target (on the other host, or a child of the initiator when `--target` is not given)
registers a buffer (GPU memory where PyTorch sees a GPU), prints one JSON line saying where it
is, and answers JSON-line questions on its control port (digest, fill, store put, its last
Mooncake error). The initiator writes each size to the target, reads it back, and compares
SHA-256 digests of both sides; with `--store` the target puts a value through the master and
the initiator gets it. The last stdout line is one JSON object: build, protocol, memory kind,
per size GB/s and latency each way, the store's put/get; or `{"ok": false, "error": ...}`
(`"stage": "import"` when Mooncake does not load). Exit 0 / 1, without Mooncake's slow
teardown (`leave`). The Mooncake side (build, engine, store client, buffer) is in
`mooncake_parts.py` beside this file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

from mooncake_parts import Buffer, Failed, build, memory_kind, open_store, pattern_bytes, \
    start_engine

DEFAULT_SIZES = (4096, 1 << 20, 64 << 20, 1 << 30)
STORE_BYTES, CONNECT_S = 1 << 20, 30.0
KEEP = []  # Mooncake objects never torn down, alive until the process ends: see leave()


# --- the target: an engine and a buffer, answering the initiator's questions -----------------
def target(args: argparse.Namespace) -> int:
    engine = start_engine(args.host, args.protocol)
    KEEP.append(engine)
    buffer = Buffer(engine, max(args.sizes), args.memory)
    buffer.register(broken=args.break_registration)
    try:
        listener = socket.create_server((args.host, args.control_port))
    except OSError as exc:
        raise Failed(f"the target's control port {args.host}:{args.control_port}: {exc}") from None
    hello = {"session": f"{args.host}:{engine.get_rpc_port()}", "address": buffer.address,
             "control": f"{args.host}:{listener.getsockname()[1]}", "build": build(),
             "memory": args.memory}
    say(hello)
    connection, _ = listener.accept()
    with connection, connection.makefile("rw") as channel:
        channel.write(json.dumps(hello) + "\n")
        channel.flush()
        for line in channel:
            answer = answer_to(json.loads(line), buffer, args)
            if answer is None:
                break
            channel.write(json.dumps(answer) + "\n")
            channel.flush()
    return 0


def answer_to(command: dict, buffer: Buffer, args: argparse.Namespace) -> dict | None:
    try:
        if command["do"] == "digest":
            if args.corrupt:
                buffer.flip()
            return {"digest": buffer.digest(command["length"])}
        if command["do"] == "fill":
            buffer.fill(command["length"], command["seed"])
            return {"filled": command["length"]}
        if command["do"] == "put":
            return store_put(args, command["key"], command["length"])
        if command["do"] == "last_error":
            return {"error": last_error(args.log_file)}
    except Failed as exc:
        return {"failed": str(exc)}
    return None


def store_put(args: argparse.Namespace, key: str, length: int) -> dict:
    store = open_store(args)
    value = pattern_bytes(length, seed=length + 2)
    started = time.perf_counter()
    code = store.put(key, value)
    took = time.perf_counter() - started
    if code != 0:
        raise Failed(f"store put of {length} bytes on {args.host} returned {code}")
    KEEP.append(store)  # its segment must outlive the initiator's get
    return {"digest": hashlib.sha256(value).hexdigest(), "put_ms": round(took * 1e3, 3)}


def last_error(log_file: str) -> str:
    """The last Mooncake error line (glog's `E...] message`) of a log, "" when none."""
    try:
        with open(log_file, errors="replace") as log:
            lines = log.read().splitlines()
    except (OSError, TypeError):
        return ""
    errors = [line.split("] ", 1)[-1] for line in lines if re.match(r"E\d{4} ", line)]
    return errors[-1] if errors else ""


def say(data: dict) -> None:
    print(json.dumps(data), flush=True)  # one JSON object per line: the harness reads the last

# --- the initiator -----------------------------------------------------------------------------
class Peer:
    """The target, over its control port: started here as a child (`--target` not given), or
    already running on the other host."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.proc = None
        address = args.target or self._start_child(args)
        host, _, port = address.rpartition(":")
        deadline = time.monotonic() + CONNECT_S
        while True:
            try:
                self.sock = socket.create_connection((host, int(port)), timeout=CONNECT_S)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise Failed(f"the target's control port {address} does not answer: "
                                 f"{exc}") from None
                time.sleep(0.1)
        self.sock.settimeout(None)
        self.channel = self.sock.makefile("rw")
        self.hello = self.ask(None)

    def _start_child(self, args: argparse.Namespace) -> str:
        self.log = tempfile.NamedTemporaryFile(prefix="preflight-target-", suffix=".log")
        argv = [sys.executable, os.path.abspath(__file__), "--role", "target", "--host",
                args.host, "--protocol", args.protocol, "--memory", args.memory,
                "--sizes", ",".join(map(str, args.sizes)), "--control-port", "0",
                "--log-file", self.log.name]
        if args.store:
            argv += ["--store", args.store, "--metadata", args.metadata]
        argv += [f"--{flag}" for flag in ("break-registration", "corrupt")
                 if getattr(args, flag.replace("-", "_"))]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        for line in self.proc.stdout:
            if line.startswith("{"):
                hello = json.loads(line)
                if "control" in hello:
                    return hello["control"]
                raise Failed(f"the target failed: {hello.get('error')}")
        raise Failed(f"the target engine exited with status {self.proc.wait()}")

    def ask(self, command: dict | None) -> dict:
        if command is not None:
            self.channel.write(json.dumps(command) + "\n")
            self.channel.flush()
        line = self.channel.readline()
        if not line:
            raise Failed("the target closed its control connection (it exited?)")
        answer = json.loads(line)
        if "failed" in answer:
            raise Failed(f"the target: {answer['failed']}")
        return answer

    def close(self) -> None:
        try:
            self.ask({"do": "quit"})
        except (OSError, Failed):
            pass  # it quits without an answer: the connection closes
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.seek(0)
            sys.stderr.write(self.log.read().decode(errors="replace"))  # kept with ours


def ladder(engine, buffer: Buffer, peer: Peer, sizes: list[int]) -> list[dict]:
    session, remote = peer.hello["session"], peer.hello["address"]

    def move(verb: str, size: int) -> dict:
        """One transfer, timed, then the digests of both sides compared."""
        call = engine.transfer_sync_write if verb == "write" else engine.transfer_sync_read
        started = time.perf_counter()
        code = call(session, buffer.address, remote, size)
        took = time.perf_counter() - started
        if code != 0:
            said = peer.ask({"do": "last_error"})["error"]
            raise Failed(f"{verb} of {size} bytes with {session} returned {code}"
                         + (f"; the target said: {said}" if said else ""))
        if peer.ask({"do": "digest", "length": size})["digest"] != buffer.digest(size):
            raise Failed(f"the {size} bytes of the {verb} with {session} arrived changed")
        return {f"{verb}_gbps": float(f"{size / took / 1e9:.4g}"),
                f"{verb}_ms": float(f"{took * 1e3:.4g}")}

    rows = []
    for size in sizes:
        buffer.fill(size, seed=size)                       # this side's bytes go out
        row = {"bytes": size, **move("write", size)}
        peer.ask({"do": "fill", "length": size, "seed": size + 1})  # the target's come back
        rows.append({**row, **move("read", size)})
    return rows


def store_check(args: argparse.Namespace, peer: Peer) -> dict:
    """The target puts a value through the master; this side gets it and checks it."""
    key = f"harness-preflight-{os.getpid()}-{time.time_ns()}"
    put = peer.ask({"do": "put", "key": key, "length": STORE_BYTES})
    store = open_store(args)
    started = time.perf_counter()
    value = store.get(key)
    took = time.perf_counter() - started
    if not value:
        raise Failed(f"store get of {key!r} (put by {peer.hello['session']}) found nothing")
    if hashlib.sha256(value).hexdigest() != put["digest"]:
        raise Failed(f"store get of {key!r}: the {len(value)} bytes arrived changed")
    store.remove(key)
    KEEP.append(store)  # no teardown at the end of this function: see leave()
    return {"bytes": STORE_BYTES, "put_ms": put["put_ms"], "get_ms": round(took * 1e3, 3),
            "master": args.store}


def initiator(args: argparse.Namespace) -> int:
    result = {"build": build(), "protocol": args.protocol, "memory": args.memory,
              "host": args.host}
    peer = None
    try:
        engine = start_engine(args.host, args.protocol)
        KEEP.append(engine)  # no teardown when this function returns: see leave()
        buffer = Buffer(engine, max(args.sizes), args.memory)
        buffer.register()
        peer = Peer(args)
        result.update(ok=True, target=peer.hello["session"],
                      sizes=ladder(engine, buffer, peer, args.sizes))
        if args.store:
            result["store"] = store_check(args, peer)
    except Failed as exc:
        result.update(ok=False, error=str(exc), stage=exc.stage)
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
    parser.add_argument("--target", help="HOST:PORT of a running target's control port")
    parser.add_argument("--control-port", type=int, default=0, help="target: its control port")
    parser.add_argument("--log-file", help="target: the file its output goes to")
    parser.add_argument("--store", help="HOST:RPC_PORT of a mooncake_master: check put/get")
    parser.add_argument("--metadata", help="the master's HTTP metadata URL (with --store)")
    parser.add_argument("--break-registration", action="store_true",
                        help="the target registers only the first byte of its GPU buffer")
    parser.add_argument("--corrupt", action="store_true",
                        help="the target changes a byte of what arrives before its digest")
    args = parser.parse_args(argv)
    args.memory = memory_kind(args.memory)
    try:
        return target(args) if args.role == "target" else initiator(args)
    except Failed as exc:
        say({"ok": False, "error": str(exc), "stage": exc.stage})
        return 1


def leave(code: int) -> None:
    """Exit without Mooncake's teardown: its engine and store threads are joined one by one,
    each after up to a second's sleep (5 s with a store), and these processes, like the
    pre-flight's master, are thrown away anyway."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
