"""Servers: launch into a log file, wait until ready, stop (SPEC §6).

Readiness is a list of rules met in order: log lines (read from the host's disk, polled every
0.1 s), an HTTP endpoint answering 200, or any one of several rules. Every poll also looks for
the exit-status file the spawn wrapper writes, so a server that dies is reported at once with
its log tail, not at the timeout.
"""
from __future__ import annotations

import logging
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Mapping, Sequence

import requests

from harness.errors import NotReady, ServerExited, tail
from harness.nodes import Node, Spawned

log = logging.getLogger(__name__)

POLL_S = 0.1
ALIVE_CHECK_S = 1.0
SGLANG_READY = "The server is fired up and ready to roll!"
APP_STARTUP = "Application startup complete."

# Set by the runner on Ctrl-C/SIGTERM, so waits in any thread give up at their next poll.
CANCEL = threading.Event()


def http_session() -> requests.Session:
    """A session that ignores proxy variables: the harness only talks to its own hosts."""
    session = requests.Session()
    session.trust_env = False
    return session


@dataclass(frozen=True)
class LogLines:
    """Ready when each regex has matched at least `count` times in the log."""
    patterns: tuple[tuple[str, int], ...]
    timeout_s: float
    label: str = ""

    def describe(self) -> str:
        return self.label or " and ".join(
            f"/{p}/" + (f" x{n}" if n > 1 else "") for p, n in self.patterns)


@dataclass(frozen=True)
class HttpOk:
    """Ready when GET url answers 200."""
    url: str
    timeout_s: float

    def describe(self) -> str:
        return f"GET {self.url} -> 200"


@dataclass(frozen=True)
class AnyOf:
    """Ready when any one of the rules is met (e.g. router log lines or /readiness)."""
    rules: tuple[LogLines | HttpOk, ...]
    timeout_s: float

    def describe(self) -> str:
        return " or ".join(r.describe() for r in self.rules)


Rule = LogLines | HttpOk | AnyOf


def log_line(text: str, timeout_s: float, count: int = 1) -> LogLines:
    """Ready when the literal `text` appeared `count` times."""
    label = f"log line {text!r}" + (f" x{count}" if count > 1 else "")
    return LogLines(((re.escape(text), count),), timeout_s, label)


@dataclass
class Server:
    """One background server of a case on a node."""
    name: str
    node: Node
    argv: Sequence[str]
    case: str
    log: PurePosixPath                      # node view
    ready: Sequence[Rule]
    env: Mapping[str, str] = field(default_factory=dict)
    pythonpath: Sequence[str] = ()
    cwd: object = None
    proc: Spawned | None = None
    _log_text: str = ""
    _log_offset: int = 0

    @property
    def where(self) -> dict:
        return {"host": self.node.name, "server": self.name}

    def start(self) -> "Server":
        log.info("%s: starting %s (log %s)", self.node.name, self.name, self.log.name)
        self.node.host.remove(self.node.on_host(self.log))
        self._log_text, self._log_offset = "", 0
        self.proc = self.node.spawn(self.name, self.argv, case=self.case, log=self.log,
                                    env=self.env, cwd=self.cwd, pythonpath=self.pythonpath)
        return self

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.node.host.read_tail(self.node.on_host(self.log)), lines)

    def wait_ready(self) -> None:
        """Meet each rule in order; raise NotReady or ServerExited with the log tail."""
        started = time.monotonic()
        for rule in self.ready:
            self._wait(rule)
        log.info("%s: %s ready in %.1fs", self.node.name, self.name, time.monotonic() - started)

    def stop(self, timeout_s: float) -> None:
        if self.proc is None:
            return
        killed = self.node.stop(self.proc, timeout_s)
        if killed:
            log.warning("%s: %s did not exit within %.0fs of TERM; killed",
                        self.node.name, self.name, timeout_s)
        self.proc = None

    # --- waiting ------------------------------------------------------------------------------
    def _wait(self, rule: Rule) -> None:
        deadline = time.monotonic() + rule.timeout_s
        start = time.monotonic()
        next_alive_check = start + ALIVE_CHECK_S
        last_error = ""
        session = http_session()
        while True:
            met, last_error = self._check(rule, session, last_error)
            if met:
                return
            self._check_exited(rule, start)
            now = time.monotonic()
            if now >= next_alive_check:
                next_alive_check = now + ALIVE_CHECK_S
                if self.proc is not None and not self.node.alive(self.proc.pgid):
                    raise ServerExited(f"{self.name} is gone (killed?) while waiting for "
                                       f"{rule.describe()}", log_tail=self.log_tail(), **self.where)
            if CANCEL.is_set():
                raise NotReady(rule.describe(), now - start, "interrupted", **self.where)
            if now >= deadline:
                raise NotReady(rule.describe(), now - start, last_error,
                               log_tail=self.log_tail(), hint=f"see {self.log}", **self.where)
            time.sleep(POLL_S)

    def _check(self, rule: Rule, session: requests.Session, last_error: str) -> tuple[bool, str]:
        if isinstance(rule, AnyOf):
            for sub in rule.rules:
                met, last_error = self._check(sub, session, last_error)
                if met:
                    return True, last_error
            return False, last_error
        if isinstance(rule, LogLines):
            text = self._read_log()
            return all(len(re.findall(p, text)) >= n for p, n in rule.patterns), last_error
        try:
            answer = session.get(rule.url, timeout=2)
        except requests.RequestException as exc:
            return False, type(exc).__name__
        return answer.status_code == 200, f"HTTP {answer.status_code}"

    def _read_log(self) -> str:
        more, self._log_offset = self.node.host.read_from(self.node.on_host(self.log),
                                                          self._log_offset)
        self._log_text += more
        return self._log_text

    def _check_exited(self, rule: Rule, start: float) -> None:
        code = self.proc.exit_code() if self.proc is not None else None
        if code is not None:
            waited = time.monotonic() - start
            raise ServerExited(
                f"{self.name} exited with status {code} after {waited:.1f}s while waiting for "
                f"{rule.describe()}", log_tail=self.log_tail(), hint=f"see {self.log}",
                **self.where)


def sglang_ready(address: str, port: int, ready_timeout_s: float,
                 health_timeout_s: float) -> list[Rule]:
    """SGLang server: its ready line, then GET /health -> 200."""
    return [log_line(SGLANG_READY, ready_timeout_s),
            HttpOk(f"http://{address}:{port}/health", health_timeout_s)]


def app_startup_ready(address: str, port: int, ready_timeout_s: float,
                      health_timeout_s: float) -> list[Rule]:
    """SGLang encoder-only server and vLLM server: `Application startup complete.`, /health."""
    return [log_line(APP_STARTUP, ready_timeout_s),
            HttpOk(f"http://{address}:{port}/health", health_timeout_s)]


ROUTER_WORKER_ACTIVATED = r"Activated 1 worker\(s\) \(marked as healthy\)"
ROUTER_TOKENIZER = r"Successfully (loaded|registered) tokenizer"


def router_ready(port: int, workers: int, timeout_s: float) -> list[Rule]:
    """sglang-router: every worker activated and its tokenizer loaded, or /readiness 200."""
    lines = LogLines(((ROUTER_WORKER_ACTIVATED, workers), (ROUTER_TOKENIZER, 1)), timeout_s,
                     f"{workers} x 'Activated 1 worker(s) (marked as healthy)' and the "
                     "tokenizer loaded")
    return [AnyOf((lines, HttpOk(f"http://127.0.0.1:{port}/readiness", timeout_s)), timeout_s)]


def start_all(servers: Sequence[Server]) -> None:
    """Start servers that do not wait on each other, then wait for all of them in parallel."""
    for server in servers:
        server.start()
    wait_all(servers)


def wait_all(servers: Sequence[Server]) -> None:
    """Wait for every server at once; the first failure is raised, the others stop waiting."""
    if len(servers) == 1:
        servers[0].wait_ready()
        return
    errors: list[BaseException] = []
    failed = threading.Event()

    def wait(server: Server) -> None:
        try:
            server.wait_ready()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors.append(exc)
            failed.set()

    threads = [threading.Thread(target=wait, args=(s,), daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(POLL_S)
            if failed.is_set():
                raise errors[0]
    if errors:
        raise errors[0]


def offline_env(node: Node, *models: str) -> dict[str, str]:
    """HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE when every model's snapshot is in the node's HF cache."""
    cached = all(model_cached(node, model) for model in models)
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} if cached else {}


def model_cached(node: Node, model: str) -> bool:
    repo_dir = shlex.quote("models--" + model.replace("/", "--"))
    pattern = f'"${{HF_HOME:-$HOME/.cache/huggingface}}"/hub/{repo_dir}/snapshots/*/config.json'
    done = node.exec(["bash", "-c", f"compgen -G {pattern} > /dev/null"], check=False,
                     timeout=30)
    return done.ok
