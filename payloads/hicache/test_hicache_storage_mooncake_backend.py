"""HiCache with the Mooncake storage backend: the harness's pytest payload (SPEC 7, hicache).

Runs inside the SGLang container, with the image's HiCache tests on PYTHONPATH
($SGLANG_WORKSPACE/sglang/test/registered/hicache), and builds on SGLang's own test mixin
`HiCacheStorageBaseMixin` (test_hicache_storage_file_backend.py). Each test class:

1. starts a Mooncake master (`mooncake_master`) and the Mooncake HTTP metadata server
   (`python -m mooncake.http_metadata_server`) on free loopback ports and waits until both
   answer (a process that exits meanwhile fails the class at once, with its log tail);
2. launches the SGLang server through the mixin with `--tp-size 2 --hicache-ratio 2
   --hicache-storage-backend mooncake --mem-fraction-static 0.8` (the mixin's default
   mem fraction, 0.6, is too small for these models on the CI GPUs) and the MOONCAKE_* env;
3. runs the mixin's tests (and, for the accuracy class, GSM8K across a cache flush);
4. stops the server, then signals the two Mooncake processes it started (by PID, whole
   group); the module's teardown waits for them (bounded, then SIGKILL).

Service logs go to $HARNESS_PAYLOAD_LOG_DIR (the case's log dir, when the harness sets it)
or to a temporary directory that is removed afterwards.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

try:
    from test_hicache_storage_file_backend import HiCacheStorageBaseMixin
except ImportError:  # older images kept the HiCache tests under test/srt/hicache
    sys.path.append(os.path.join(os.environ.get("SGLANG_WORKSPACE", "/sgl-workspace"),
                                 "sglang", "test", "srt", "hicache"))
    from test_hicache_storage_file_backend import HiCacheStorageBaseMixin

from sglang.test.test_utils import DEFAULT_MLA_MODEL_NAME_FOR_TEST, CustomTestCase, is_in_ci

# The models come from the image's test tree, as SGLang's own HiCache tests take them: the
# mixin's `_get_model_name` (DEFAULT_MODEL_NAME_FOR_TEST) and, for the MLA class,
# DEFAULT_MLA_MODEL_NAME_FOR_TEST. `--models` prints them, so the harness decides the offline
# cache on what this file really loads.
MODELS_FLAG = "--models"
MODEL_LINE = "[hicache] loads model: "

SERVICE_HOST = "127.0.0.1"
SERVICE_READY_TIMEOUT_S = float(os.environ.get("HARNESS_MOONCAKE_READY_S", "60"))
SERVICE_STOP_TIMEOUT_S = float(os.environ.get("TIMEOUT_STOP_S", "10"))
GLOBAL_SEGMENT_SIZE = str(4 * 1024**3)  # 4 GiB
# Flags newer than some mooncake_master builds; gflags ignores them there instead of failing.
MASTER_OPTIONAL_FLAGS = "rpc_port,port,rpc_address,metrics_port,metrics_host"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((SERVICE_HOST, 0))
        return sock.getsockname()[1]


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as log:
            return "".join(log.readlines()[-lines:])
    except OSError:
        return "<no log>"


def _tcp_answers(port: int) -> bool:
    try:
        with socket.create_connection((SERVICE_HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _metadata_answers(url: str) -> bool:
    """True once the metadata server answers HTTP (an unknown key gives 404, which is fine)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}?key=harness_readiness_probe", timeout=1):
            return True
    except urllib.error.HTTPError as error:
        return error.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _master_argv(rpc_port: int, metrics_port: int) -> list:
    # HARNESS_MOONCAKE_MASTER: set by the harness's simulator only (see sim/bin/).
    executable = os.environ.get("HARNESS_MOONCAKE_MASTER") or shutil.which("mooncake_master")
    via_wheel = "import sys; from mooncake.cli import main; sys.exit(main())"
    command = [executable] if executable else [sys.executable, "-c", via_wheel]
    return command + [f"--rpc_port={rpc_port}", f"--port={rpc_port}",
                      f"--rpc_address={SERVICE_HOST}", f"--metrics_host={SERVICE_HOST}",
                      f"--metrics_port={metrics_port}", f"--undefok={MASTER_OPTIONAL_FLAGS}"]


class MooncakeServices:
    """The Mooncake master and HTTP metadata server of one test class."""

    def __init__(self, name: str):
        self.name = name
        self.master_port = _free_port()
        self.metrics_port = _free_port()
        self.metadata_port = _free_port()
        self.metadata_url = f"http://{SERVICE_HOST}:{self.metadata_port}/metadata"
        wanted = os.environ.get("HARNESS_PAYLOAD_LOG_DIR")
        if wanted:
            os.makedirs(wanted, exist_ok=True)
        self.log_dir = wanted or tempfile.mkdtemp(prefix="mooncake-services-")
        self.owns_log_dir = not wanted
        self.processes = {}  # service name -> (Popen, log path)

    def env(self) -> dict:
        return {
            "MOONCAKE_MASTER": f"{SERVICE_HOST}:{self.master_port}",
            "MOONCAKE_PROTOCOL": "tcp",
            "MC_MS_AUTO_DISC": "0",
            "MOONCAKE_DEVICE": "",
            "MOONCAKE_TE_META_DATA_SERVER": self.metadata_url,
            "MOONCAKE_GLOBAL_SEGMENT_SIZE": GLOBAL_SEGMENT_SIZE,
            "PYTHONFAULTHANDLER": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, service: str, argv: list) -> None:
        log_path = os.path.join(self.log_dir, f"{self.name}.{service}.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[service] = (process, log_path)
        print(f"[mooncake] started {service} pid={process.pid}: {' '.join(argv)} "
              f"(log {log_path})", flush=True)

    def start(self) -> None:
        try:
            self._spawn("metadata_server", [sys.executable, "-m", "mooncake.http_metadata_server",
                                            "--host", SERVICE_HOST,
                                            "--port", str(self.metadata_port)])
            self._spawn("master", _master_argv(self.master_port, self.metrics_port))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        checks = {"master": lambda: _tcp_answers(self.master_port),
                  "metadata_server": lambda: _metadata_answers(self.metadata_url)}
        waiting = set(checks)
        started = time.monotonic()
        while waiting:
            for service in sorted(waiting):
                process, log_path = self.processes[service]
                if process.poll() is not None:
                    raise RuntimeError(
                        f"Mooncake {service} exited with code {process.returncode} before it "
                        f"answered; last lines of {log_path}:\n{_tail(log_path)}")
                if checks[service]():
                    waiting.discard(service)
                    print(f"[mooncake] {service} answers after "
                          f"{time.monotonic() - started:.1f} s", flush=True)
            if waiting and time.monotonic() - started > SERVICE_READY_TIMEOUT_S:
                details = "\n".join(f"--- {s} ({self.processes[s][1]}):\n"
                                    f"{_tail(self.processes[s][1])}" for s in sorted(waiting))
                raise TimeoutError(f"Mooncake {', '.join(sorted(waiting))} did not answer within "
                                   f"{SERVICE_READY_TIMEOUT_S:.0f} s\n{details}")
            if waiting:
                time.sleep(0.1)
        print(f"[mooncake] ready: master {SERVICE_HOST}:{self.master_port}, metadata "
              f"{self.metadata_url}", flush=True)

    def stop(self) -> None:
        """SIGTERM each service's process group; `reap_stopped` waits for them.

        A master that has served a client takes about a second to exit (its background
        threads sleep a second between rounds): the next class starts meanwhile, on its own
        ports, instead of waiting."""
        for service, (process, _log) in reversed(list(self.processes.items())):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            _STOPPING.append((service, process))
        self.processes.clear()
        if self.owns_log_dir:
            _STOPPING_DIRS.append(self.log_dir)


_STOPPING = []  # (service, Popen) told to stop, not yet waited for
_STOPPING_DIRS = []  # temporary log dirs to remove once their services are gone


def reap_stopped() -> None:
    """Wait (bounded) for every service told to stop, SIGKILL what outlives the wait."""
    while _STOPPING:
        service, process = _STOPPING.pop(0)
        try:
            process.wait(timeout=SERVICE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=SERVICE_STOP_TIMEOUT_S)
        print(f"[mooncake] stopped {service} pid={process.pid} (exit {process.returncode})",
              flush=True)
    while _STOPPING_DIRS:
        shutil.rmtree(_STOPPING_DIRS.pop(), ignore_errors=True)


def tearDownModule():  # noqa: N802 (unittest's name; pytest calls it too)
    reap_stopped()


class HiCacheStorageMooncakeBackendBaseMixin(HiCacheStorageBaseMixin):
    """SGLang's HiCache storage mixin, with Mooncake services and the Mooncake backend."""

    @classmethod
    def setUpClass(cls):
        cls.mooncake = MooncakeServices(cls.__name__)
        cls.mooncake.start()
        try:
            super().setUpClass()
        except BaseException:
            # unittest does not call tearDownClass when setUpClass fails.
            cls._teardown_all()
            raise

    @classmethod
    def tearDownClass(cls):
        cls._teardown_all()

    @classmethod
    def _teardown_all(cls):
        try:
            super().tearDownClass()  # the SGLang server and the mixin's temp dir
        finally:
            if getattr(cls, "mooncake", None) is not None:
                cls.mooncake.stop()
                cls.mooncake = None

    @classmethod
    def _get_additional_server_args_and_env(cls):
        server_args = {
            "--tp-size": 2,
            "--hicache-ratio": 2,
            "--hicache-storage-backend": "mooncake",
            "--mem-fraction-static": 0.8,
        }
        return server_args, cls.mooncake.env()


class TestMooncakeBackendMLAModel(HiCacheStorageMooncakeBackendBaseMixin, CustomTestCase):
    """The MLA model, page_first layout, with Mooncake's mmap arena (8 GB pool)."""

    @classmethod
    def _get_model_name(cls):
        return DEFAULT_MLA_MODEL_NAME_FOR_TEST

    @classmethod
    def _get_additional_server_args_and_env(cls):
        server_args, env_vars = super()._get_additional_server_args_and_env()
        server_args["--hicache-mem-layout"] = "page_first"
        env_vars.pop("MC_DISABLE_MMAP_ARENA", None)
        env_vars["MC_MMAP_ARENA_POOL_SIZE"] = "8gb"
        return server_args, env_vars


class TestMooncakeBackendAccuracy(HiCacheStorageMooncakeBackendBaseMixin, CustomTestCase):
    """Accuracy across cache flushes, page_first_direct + direct IO, mmap arena disabled."""

    @classmethod
    def _get_additional_server_args_and_env(cls):
        server_args, env_vars = super()._get_additional_server_args_and_env()
        server_args["--hicache-ratio"] = 1.5
        server_args["--hicache-mem-layout"] = "page_first_direct"
        server_args["--hicache-io-backend"] = "direct"
        env_vars.pop("MC_MMAP_ARENA_POOL_SIZE", None)
        env_vars["MC_DISABLE_MMAP_ARENA"] = "1"
        return server_args, env_vars

    def test_eval_accuracy(self):
        """GSM8K before and after a device-cache flush (the second run reads Mooncake)."""
        from test_hicache_storage_file_backend import run_eval_accuracy_test

        run_eval_accuracy_test(self)


@unittest.skipIf(is_in_ci(), "To reduce the CI execution time.")
class TestMooncakeBackendPageFirstLayout(HiCacheStorageMooncakeBackendBaseMixin, CustomTestCase):
    """page_first layout with the default (MHA) model."""

    @classmethod
    def _get_additional_server_args_and_env(cls):
        server_args, env_vars = super()._get_additional_server_args_and_env()
        server_args["--hicache-mem-layout"] = "page_first"
        return server_args, env_vars


TEST_CLASSES = (TestMooncakeBackendMLAModel, TestMooncakeBackendAccuracy,
                TestMooncakeBackendPageFirstLayout)


def print_models() -> None:
    """One line per model the test classes load, first use first, each once."""
    for model in dict.fromkeys(cls._get_model_name() for cls in TEST_CLASSES):
        print(f"{MODEL_LINE}{model}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == [MODELS_FLAG]:
        print_models()
    else:
        unittest.main(verbosity=2)
