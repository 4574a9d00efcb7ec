"""The Mooncake side of the pre-flight (mooncake_preflight.py): which build is installed, why
it does not load (said so that the fix follows), a TransferEngine, a store client, and a buffer
in GPU or host memory. Standard library, plus PyTorch for GPU memory."""
from __future__ import annotations

import hashlib
import importlib.metadata
import re
import sys

PACKAGES = ("mooncake-transfer-engine", "mooncake-transfer-engine-cuda13",
            "mooncake-transfer-engine-non-cuda")
STORE_SEGMENT = 64 << 20  # each store client's mounted segment and local buffer
CPU_PIP_LINE = "pip install mooncake-transfer-engine-non-cuda"
# The Debian/Ubuntu package that provides each shared library Mooncake's builds load.
LIBRARY_PACKAGES = {"libibverbs.so.1": "libibverbs1", "libmlx5.so.1": "ibverbs-providers",
                    "libnl-3.so.200": "libnl-3-200", "libnl-route-3.so.200": "libnl-route-3-200",
                    "libnuma.so.1": "libnuma1", "libjsoncpp.so.25": "libjsoncpp25",
                    "libcuda.so.1": "the NVIDIA driver (libcuda1 / a GPU host)"}


class Failed(Exception):
    """What failed, said in one line; `stage` "import" when Mooncake itself does not load."""

    def __init__(self, message: str, stage: str = "transfer") -> None:
        super().__init__(message)
        self.stage = stage


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

    def flip(self) -> None:
        """Change the first byte in place (`--corrupt`), as a broken transfer path would."""
        if self.memory == "gpu":
            self.tensor[0] ^= 0xFF
        else:
            first = self.engine.read_bytes_from_buffer(self.address, 1)[0]
            self.engine.write_bytes_to_buffer(self.address, bytes([first ^ 0xFF]), 1)

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


def cannot_load(module: str, exc: BaseException) -> "Failed":
    """Why `module` does not import, said so that the fix follows: a missing shared library
    names the package that provides it, a missing module the pip line; both name the build."""
    text = f"{type(exc).__name__}: {exc}"
    missing = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file", text)
    if missing:
        package = LIBRARY_PACKAGES.get(missing[1], "the package that provides it")
        fix = f"the system library {missing[1]} is missing: install {package}"
    elif isinstance(exc, ModuleNotFoundError):
        fix = f"Mooncake is not installed for {sys.executable}: {CPU_PIP_LINE} (or the CUDA build)"
    else:
        fix = "see the error"
    return Failed(f"{module} cannot load ({build()}): {text}; {fix}", stage="import")


def start_engine(host: str, protocol: str):
    try:
        from mooncake.engine import TransferEngine
    except Exception as exc:  # noqa: BLE001 (ImportError, a missing libcuda or libibverbs)
        raise cannot_load("mooncake.engine", exc) from None
    engine = TransferEngine()
    if (code := engine.initialize(host, "P2PHANDSHAKE", protocol, "")) != 0:
        raise Failed(f"TransferEngine.initialize({host}, P2PHANDSHAKE, {protocol}) returned {code}")
    return engine


def open_store(args):
    """A store client of the `mooncake_master` at `args.store` (the pre-flight's arguments:
    host, metadata, protocol), its segment mounted."""
    try:
        from mooncake.store import MooncakeDistributedStore
    except Exception as exc:  # noqa: BLE001
        raise cannot_load("mooncake.store", exc) from None
    store = MooncakeDistributedStore()
    if (code := store.setup(args.host, args.metadata, STORE_SEGMENT, STORE_SEGMENT,
                            args.protocol, "", args.store)) != 0:
        raise Failed(f"store setup on {args.host} with master {args.store} and metadata "
                     f"{args.metadata} returned {code}")
    return store
