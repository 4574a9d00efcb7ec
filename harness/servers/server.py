"""Servers: launch into a log file, wait until ready, stop (SPEC §6).

Readiness is a list of rules met in order; each rule checks itself: log lines (the log is
followed incrementally from the host's disk), an HTTP endpoint answering 200, any one of several
rules, or the server's own process group listening on its port. Every poll of the one wait loop
(`harness.waiting.wait_until`) also looks for the exit-status file the spawn wrapper writes, so a
server that dies is reported at once with its log tail, not at the timeout.
"""
from __future__ import annotations

import logging
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Mapping, Sequence

import requests

from harness.errors import NotReady, ServerExited, tail
from harness.hosts.nodes import Node, Spawned
from harness.results.timeline import Span, Timeline, log_ref
from harness.waiting import Cancel, fan_out, wait_until

log = logging.getLogger(__name__)

ALIVE_CHECK_S = 1.0
SGLANG_READY = "The server is fired up and ready to roll!"
APP_STARTUP = "Application startup complete."
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")   # a server bound to these is reached at its node


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

    def check(self, server: "Server", session: requests.Session) -> tuple[bool, str]:
        counts = server.follow_log([p for p, _ in self.patterns])
        missing = [f"/{p}/ {counts[p]}/{n}" for p, n in self.patterns if counts[p] < n]
        return not missing, ("seen " + ", ".join(missing)) if missing else ""


@dataclass(frozen=True)
class HttpOk:
    """Ready when GET on the server's `path` (or an absolute URL) answers 200."""
    path: str
    timeout_s: float

    def describe(self) -> str:
        return f"GET {self.path} -> 200"

    def check(self, server: "Server", session: requests.Session) -> tuple[bool, str]:
        try:
            answer = session.get(server.url(self.path), timeout=2)
        except requests.RequestException as exc:
            return False, type(exc).__name__
        return answer.status_code == 200, f"HTTP {answer.status_code}"


@dataclass(frozen=True)
class AnyOf:
    """Ready when any one of the rules is met (e.g. router log lines or /readiness)."""
    rules: tuple["Rule", ...]
    timeout_s: float

    def describe(self) -> str:
        return " or ".join(r.describe() for r in self.rules)

    def check(self, server: "Server", session: requests.Session) -> tuple[bool, str]:
        whys = []
        for rule in self.rules:
            met, why = rule.check(server, session)
            if met:
                return True, ""
            whys.append(why)
        return False, "; ".join(w for w in whys if w)


# Succeeds when a process of group $1 holds a socket listening on TCP port $2 (IPv4 or IPv6).
_OWNS_PORT = r"""
pg=$1; port=$(printf ':%04X' "$2")
inodes=" $(awk -v p="$port" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p {
  printf "%s ", $10 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)"
[ "$inodes" != " " ] || exit 1
for stat in /proc/[0-9]*/stat; do
  line=$(cat "$stat" 2>/dev/null) || continue
  fields=(${line##*) })
  [ "${fields[2]}" = "$pg" ] || continue
  dir=${stat%/stat}
  for fd in "$dir"/fd/*; do
    link=$(readlink "$fd" 2>/dev/null) || continue
    case $link in socket:\[*\])
      inode=${link#socket:[}; inode=${inode%]}
      case $inodes in *" $inode "*) exit 0;; esac;;
    esac
  done
done
exit 1
"""


@dataclass(frozen=True)
class OwnsPort:
    """Ready when the server's own process group listens on its port: an answer on the port
    from another process (a leftover, a foreign listener) is not this server being ready."""
    timeout_s: float

    def describe(self) -> str:
        return "its own process listening on its port"

    def check(self, server: "Server", session: requests.Session) -> tuple[bool, str]:
        if server.proc is None:
            return False, "not started"
        done = server.node.exec(["bash", "-c", _OWNS_PORT, "owns-port", str(server.proc.pgid),
                                 str(server.port)], check=False, timeout=30)
        return done.ok, "" if done.ok else f"port {server.port} is not held by {server.name}"


@dataclass(frozen=True)
class PostNot503:
    """Ready when POST url answers anything but 503: for a route that refuses with 503 until
    the server can serve it (vLLM's connector proxies before their prefillers are known). The
    body is a bare `{}`, so a ready server rejects it quickly instead of running a request.
    Only the status line counts: once ready, vLLM's proxy answers 200 and then cuts the body
    off (its decode rejected `{}`), so the body is never read."""
    path: str
    timeout_s: float

    def describe(self) -> str:
        return f"POST {self.path} -> not 503"

    def check(self, server: "Server", session: requests.Session) -> tuple[bool, str]:
        try:
            answer = session.post(server.url(self.path), json={}, timeout=5, stream=True)
        except requests.RequestException as exc:
            return False, type(exc).__name__
        answer.close()
        return answer.status_code != 503, f"HTTP {answer.status_code}"


Rule = LogLines | HttpOk | AnyOf | OwnsPort | PostNot503


def log_line(text: str, timeout_s: float, count: int = 1) -> LogLines:
    """Ready when the literal `text` appeared `count` times."""
    label = f"log line {text!r}" + (f" x{count}" if count > 1 else "")
    return LogLines(((re.escape(text), count),), timeout_s, label)


@dataclass
class LogFollower:
    """A log read as it grows: `new_lines()` gives the complete lines appended since the last
    call (only those bytes are read); `partial` is the line still being written."""
    node: Node
    path: PurePosixPath                     # node view
    offset: int = 0
    partial: str = ""

    def new_lines(self) -> str:
        more, self.offset = self.node.host.read_from(self.node.on_host(self.path), self.offset)
        done, _, self.partial = (self.partial + more).rpartition("\n")
        return done


@dataclass
class Server:
    """One background server of a case on a node, at `address:port` (a wildcard address
    means the node's own); its readiness rules ask it for its URL."""
    name: str
    node: Node
    argv: Sequence[str]
    case: str
    log: PurePosixPath                      # node view
    ready: Sequence[Rule]
    address: str | None = None              # what it binds (--host); None: no address
    port: int | None = None                 # what it listens on (--port); None: no port
    env: Mapping[str, str] = field(default_factory=dict)
    pythonpath: Sequence[str] = ()
    cwd: object = None
    cancel: Cancel = field(default_factory=Cancel)
    timeline: Timeline = field(default_factory=Timeline.off)
    kind: str = "server"                    # its kind on the timeline ("payload" for one)
    proc: Spawned | None = None
    span: Span | None = None                # start -> ready -> stop on the timeline
    _follower: LogFollower | None = None
    _log_counts: dict[str, int] = field(default_factory=dict)

    @property
    def where(self) -> dict:
        return {"host": self.node.name, "server": self.name}

    def url(self, path: str = "") -> str:
        """`http://address:port` + `path`, where the harness reaches it; an absolute URL given
        as `path` stands as it is."""
        if path.startswith(("http://", "https://")):
            return path
        if self.port is None:
            raise ValueError(f"{self.name} has no port, so no URL")
        host = self.address if self.address not in WILDCARD_ADDRESSES else self.node.address
        return f"http://{host}:{self.port}{path}"

    def start(self) -> "Server":
        log.info("%s: starting %s (log %s)", self.node.name, self.name, self.log.name)
        self.node.host.remove(self.node.on_host(self.log))
        self._follower, self._log_counts = LogFollower(self.node, self.log), {}
        self.span = self.timeline.open(self.node.name, self.kind, self.name, case=self.case,
                                       log=log_ref(self.node.layout.logs, self.log))
        try:
            self.proc = self.node.spawn(self.name, self.argv, case=self.case, log=self.log,
                                        env=self.env, cwd=self.cwd, pythonpath=self.pythonpath)
        except BaseException as exc:
            self.span.failed(exc)
            self.span.close()
            raise
        return self

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.node.host.read_tail(self.node.on_host(self.log)), lines)

    def last_log_line(self) -> str:
        """What the server said last (a progress line's detail while it starts)."""
        lines = self.log_tail(1).strip()
        return f"log: {lines}" if lines else f"{self.log.name} is empty"

    def wait_ready(self, cancel: Cancel | None = None) -> None:
        """Meet each rule in order; raise NotReady or ServerExited with the log tail. Ready
        also means the process the harness started is still there once the rules are met.
        Its span on the run's timeline is marked ready, or keeps how it failed."""
        try:
            self._meet_rules(cancel)
        except BaseException as exc:
            if self.span is not None:
                self.span.failed(exc)
            raise
        if self.span is not None:
            self.span.mark_ready()

    def _meet_rules(self, cancel: Cancel | None) -> None:
        cancel = cancel or self.cancel
        started = time.monotonic()
        for rule in self.ready:
            self._wait(rule, cancel)
        if self.proc is not None and self.ready:
            self._check_exited("its readiness rules", started)
            if not self.node.alive(self.proc.pgid):
                raise ServerExited(f"{self.name} is gone right after its readiness rules were "
                                   "met", log_tail=self.log_tail(), **self.where)
        log.info("%s: %s ready in %.1fs", self.node.name, self.name, time.monotonic() - started)

    def stop(self, timeout_s: float) -> None:
        if self.proc is None:
            return
        started = time.monotonic()
        killed = self.node.stop(self.proc, timeout_s)
        if killed:
            log.warning("%s: %s did not exit within %.0fs of TERM; killed",
                        self.node.name, self.name, timeout_s)
        log.debug("%s: %s stopped in %.3fs", self.node.name, self.name,
                  time.monotonic() - started)
        self.proc = None
        if self.span is not None:
            self.span.close()

    def follow_log(self, patterns: Sequence[str]) -> dict[str, int]:
        """How often each pattern matched the log so far. Only what was appended since the last
        call is read and scanned (a line is counted once its newline has arrived); the line
        still being written is looked at too, without being counted twice."""
        if self._follower is None:
            self._follower = LogFollower(self.node, self.log)
        done = self._follower.new_lines()
        counts = {}
        for pattern in patterns:
            self._log_counts[pattern] = (self._log_counts.get(pattern, 0)
                                         + len(re.findall(pattern, done)))
            counts[pattern] = (self._log_counts[pattern]
                               + len(re.findall(pattern, self._follower.partial)))
        return counts

    # --- waiting ------------------------------------------------------------------------------
    def _wait(self, rule: Rule, cancel: Cancel) -> None:
        start = time.monotonic()
        next_alive_check = start + ALIVE_CHECK_S
        session = http_session()

        def check() -> tuple[bool, str]:
            nonlocal next_alive_check
            met, why = rule.check(self, session)
            if met:
                return True, why
            self._check_exited(rule.describe(), start)
            now = time.monotonic()
            if now >= next_alive_check and self.proc is not None:
                next_alive_check = now + ALIVE_CHECK_S
                if not self.node.alive(self.proc.pgid):
                    raise ServerExited(f"{self.name} is gone (killed?) while waiting for "
                                       f"{rule.describe()}", log_tail=self.log_tail(),
                                       **self.where)
            return False, why

        with session:
            met, why, waited = wait_until(
                check, timeout_s=rule.timeout_s, cancel=cancel, detail=self.last_log_line,
                awaited=f"{self.name} on {self.node.name} ({rule.describe()})")
        if not met:
            raise NotReady(rule.describe(), waited, why, log_tail=self.log_tail(),
                           hint=f"see {self.log}", **self.where)

    def _check_exited(self, awaited: str, start: float) -> None:
        code = self.proc.exit_code() if self.proc is not None else None
        if code is not None:
            waited = time.monotonic() - start
            raise ServerExited(
                f"{self.name} exited with status {code} after {waited:.1f}s while waiting for "
                f"{awaited}", log_tail=self.log_tail(), hint=f"see {self.log}", **self.where)


def sglang_ready(ready_timeout_s: float, health_timeout_s: float) -> list[Rule]:
    """SGLang server: its ready line, then GET /health -> 200."""
    return [log_line(SGLANG_READY, ready_timeout_s), HttpOk("/health", health_timeout_s)]


def app_startup_ready(ready_timeout_s: float, health_timeout_s: float) -> list[Rule]:
    """SGLang encoder-only server and vLLM server: `Application startup complete.`, /health."""
    return [log_line(APP_STARTUP, ready_timeout_s), HttpOk("/health", health_timeout_s)]


ROUTER_WORKER_ACTIVATED = r"Activated 1 worker\(s\) \(marked as healthy\)"
ROUTER_TOKENIZER = r"Successfully (loaded|registered) tokenizer"


def router_ready(workers: int, timeout_s: float) -> list[Rule]:
    """sglang-router: every worker activated and its tokenizer loaded, or /readiness 200; and
    the router itself listening on its port (not a leftover or a foreign listener)."""
    lines = LogLines(((ROUTER_WORKER_ACTIVATED, workers), (ROUTER_TOKENIZER, 1)), timeout_s,
                     f"{workers} x 'Activated 1 worker(s) (marked as healthy)' and the "
                     "tokenizer loaded")
    return [AnyOf((lines, HttpOk("/readiness", timeout_s)), timeout_s), OwnsPort(timeout_s)]


def start_all(servers: Sequence[Server], cancel: Cancel | None = None) -> None:
    """Start servers that do not wait on each other and wait for them, all at once; the first
    failure stops the others' waits and every failure is reported."""
    cancel = cancel or servers[0].cancel
    fan_out([lambda group, server=server: server.start().wait_ready(group)
             for server in servers], cancel, "server start")


def wait_all(servers: Sequence[Server], cancel: Cancel | None = None) -> None:
    """Wait for servers already started, all at once (see `start_all`)."""
    cancel = cancel or servers[0].cancel
    fan_out([lambda group, server=server: server.wait_ready(group) for server in servers],
            cancel, "server readiness")


def offline_env(node: Node, *models: str) -> dict[str, str]:
    """HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE when every model's snapshot is in the node's HF cache."""
    cached = all(model_cached(node, model) for model in models)
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} if cached else {}


def model_cached(node: Node, model: str) -> bool:
    """Whether the model's snapshot is in the node's Hugging Face cache: HF_HUB_CACHE (or the
    older HUGGINGFACE_HUB_CACHE), else HF_HOME/hub, else ~/.cache/huggingface/hub, as the
    hub library (and different_tp's policy) look."""
    repo_dir = shlex.quote("models--" + model.replace("/", "--"))
    hub = '${HF_HUB_CACHE:-${HUGGINGFACE_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}}'
    pattern = f'"{hub}"/{repo_dir}/snapshots/*/config.json'
    done = node.exec(["bash", "-c", f"compgen -G {pattern} > /dev/null"], check=False,
                     timeout=30)
    return done.ok
