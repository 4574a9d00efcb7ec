"""The case contract and the registry (SPEC §7).

A case is one module in `cases/` that defines `CASE = Case(...)`; the registry finds it, so adding
a case edits nothing else. A case's `run(ctx)` returns when the case passed and raises a
`HarnessError` (usually `CaseFailed`) when it did not. It gets everything from its `CaseContext`:
settings, nodes, paths, and helpers that start servers and payloads and always stop them.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, ContextManager, Mapping, Sequence

from harness.run import answers
from harness.errors import HarnessError, HostUnhealthy, SettingsError
from harness.prep.gpu import format_used, wait_for_drain
from harness.prep.sim_gpu import sim_gpu_env
from harness.hosts.nodes import Node
from harness.prep.reset import gpu_source_for
from harness.results.outcome import CaseResult
from harness.servers.server import Rule, Server
from harness.groups import groups_for, run_order
from harness.policy import RunPolicy
from harness.settings import Settings
from harness.results.steps import Steps
from harness.results.timeline import Timeline, log_ref
from harness.waiting import Cancel, fan_out

log = logging.getLogger(__name__)

SINGLE, DOUBLE = "single", "double"


@dataclass(frozen=True)
class Case:
    """A case, declared. A single-host case gives `run`, the whole case. A double case gives
    its models and, per model, `start_servers` (its servers, returning the one the request
    goes to: the router or proxy) and `check` (the request and the verdict on its answer);
    the runner runs each model in its own scope. `before` runs once first (what must fail
    before any model loads, or what every model shares: `ctx.prepared` holds its value)."""
    name: str
    group: str
    kind: str
    order: int
    models: tuple[str, ...]
    run: Callable[["CaseContext"], None] | None = None
    summary: str = ""
    start_servers: Callable[["CaseContext", str], Server] | None = None
    check: Callable[["CaseContext", str, Server], None] | None = None
    before: Callable[["CaseContext"], object] | None = None

    def __post_init__(self) -> None:
        declared = (self.run is not None if self.kind == SINGLE else
                    self.start_servers is not None and self.check is not None)
        if not declared:
            raise TypeError(f"case {self.name}: a {self.kind} case declares "
                            + ("run" if self.kind == SINGLE else "start_servers and check"))

    @property
    def double(self) -> bool:
        return self.kind == DOUBLE

    def execute(self, ctx: "CaseContext") -> None:
        """The whole case: `run`, or `before` and then each model (start, check, stop)."""
        if self.run is not None:
            self.run(ctx)
            return
        self.prepare(ctx)
        ctx.each_model(self.models, self._one_model)

    def prepare(self, ctx: "CaseContext") -> None:
        if self.before is not None:
            ctx.prepared = self.before(ctx)

    def _one_model(self, ctx: "CaseContext", model: str) -> None:
        assert self.start_servers is not None and self.check is not None
        self.check(ctx, model, self.start_servers(ctx, model))


def discover() -> dict[str, Case]:
    """Every `CASE` defined by a module of the `cases` package, by name."""
    import cases as package

    found: dict[str, Case] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"cases.{info.name}")
        case = getattr(module, "CASE", None)
        if isinstance(case, Case):
            found[case.name] = case
    return found


def resolve(name: str, registry: Mapping[str, Case] | None = None) -> Case:
    """A case by name, with or without `.sh`/`.py`; unknown names list what is accepted."""
    registry = discover() if registry is None else registry
    bare = name.strip()
    for suffix in (".sh", ".py"):
        bare = bare.removesuffix(suffix)
    bare = PurePosixPath(bare).name
    if bare not in registry:
        raise SettingsError(f"unknown case {name!r}; known cases: {', '.join(sorted(registry))}")
    return registry[bare]


def group_cases(group: str, registry: Mapping[str, Case] | None = None) -> list[Case]:
    """The cases of a group in run order (SGLANG, VLLM, or ALL: SGLANG then VLLM)."""
    registry = discover() if registry is None else registry
    wanted = groups_for(group)
    if not wanted:
        raise SettingsError(f"unknown group {group!r}; accepted: SGLANG, VLLM, ALL")
    return sorted((c for c in registry.values() if c.group in wanted),
                  key=lambda c: run_order(c.group, c.order))


class CaseContext:
    """What a running case is handed by the runner."""

    def __init__(self, case: Case, settings: Settings, local: Node, remote: Node | None,
                 result: CaseResult, stack: ExitStack, policy: RunPolicy | None = None,
                 timeline: Timeline | None = None) -> None:
        self.case = case
        self.settings = settings
        self.local = local
        self.remote = remote
        self.result = result
        self.policy = policy or RunPolicy()     # the run's: cancel token, keep-on-failure
        self.cancel = self.policy.cancel
        self.timeline = timeline or Timeline.off()  # the run's: spans of servers, requests...
        self._steps = Steps(local.name, case.name, result.steps_s, tag_host=False)
        self._stack = stack
        self._servers: list[Server] | None = None  # the servers of the current scope
        self._scope = ""                            # its name ("" for the case, or the model)
        # KEEP_ON_FAILURE: the failing model's servers are left running (harness.run.keep)
        self.prepared: object = None  # what the case's `before` returned

    # --- steps --------------------------------------------------------------------------------
    def step(self, name: str) -> ContextManager[object]:
        """A step of the case (the run's step recorder): told, timed into the case's
        `steps_s`, and any error raised in it names it."""
        return self._steps.step(name)

    # --- environment for what the case starts -------------------------------------------------
    def pythonpath(self, node: Node, *extra: object) -> list[str]:
        """PYTHONPATH entries to prepend: the simulator first when HARNESS_SIM=true."""
        first = [str(node.layout.sim_site)] if self.settings.harness_sim else []
        return first + [str(p) for p in extra]

    def sglang_workspace(self, node: Node) -> str:
        if self.settings.harness_sim:
            return str(node.layout.sim_workspace)
        return self.settings.sglang_workspace

    def vllm_workspace(self, node: Node) -> str:
        if self.settings.harness_sim:
            return str(node.layout.sim_workspace)
        return self.settings.vllm_workspace

    def sim_env(self, node: Node, component: str | None = None) -> dict[str, str]:
        """The simulator's knobs, passed to everything the harness starts on `node` when
        simulating; `component` names a server of a double case (faults aim at it)."""
        if not self.settings.harness_sim:
            return {}
        env = {"HARNESS_SIM": "true",
               "HARNESS_SIM_STARTUP_S": str(self.settings.sim_startup_s),
               "HARNESS_SIM_FAULTS": self.settings.sim_faults,
               "HARNESS_SIM_VLLM_VERSION": self.settings.sim_vllm_version,
               "HARNESS_SIM_MOONCAKE": self.settings.effective_sim_mooncake.value,
               "HARNESS_SIM_KV_BYTES_PER_TOKEN": str(self.settings.sim_kv_bytes_per_token),
               # the real sglang-router loads the tokenizer from the model_path workers report
               "HARNESS_SIM_MODEL_DIR": "auto",
               "HARNESS_MOONCAKE_MASTER": str(node.layout.sim_mooncake_master),
               **sim_gpu_env(node.layout)}
        if component:
            env["HARNESS_SIM_COMPONENT"] = component
        return env

    @property
    def nodes(self) -> list[Node]:
        return [n for n in (self.local, self.remote) if n is not None]

    def model_logs(self, node: Node, model: str) -> PurePosixPath:
        """The model's log directory as `node` sees it."""
        return node.layout.model_logs(self.case.name, model)

    @property
    def local_project(self) -> Path:
        """The project tree on this machine (assets the harness itself sends live there)."""
        return Path(str(self.local.host_layout.root))

    def local_file(self, model: str, name: str) -> Path:
        """A file in the model's log directory on this machine (e.g. curl_response.log)."""
        return Path(str(self.local.on_host(self.model_logs(self.local, model) / name)))

    def each_model(self, models: Sequence[str],
                   body: Callable[["CaseContext", str], None]) -> None:
        """Run `body` per model; everything it started is stopped on both hosts, and their GPUs
        drained (after a failed model too), before the next model. Every model runs; the case
        fails if any did, naming the first failure. GPUs that do not drain between two models
        are the host's failure (HostUnhealthy): the models after it do not run."""
        failures: list[tuple[str, HarnessError]] = []
        for index, model in enumerate(models):
            if failures and self.policy.kept_servers is not None:
                # KEEP_ON_FAILURE: the failed model's servers stay up; the run stops here
                self.result.models[model] = (f"Fail: not run (KEEP_ON_FAILURE kept the "
                                             f"servers of {failures[0][0]})")
                continue
            try:
                self._one_model(model, body)
                self.result.models[model] = "Pass"
            except HarnessError as exc:
                self.result.models[model] = f"Fail: {exc}"
                log.error("%s: %s failed: %s", self.case.name, model, exc.details())
                failures.append((model, exc))
            if index + 1 < len(models) and self.policy.kept_servers is None:
                self._drain_between(model, models[index + 1:])  # the reset covers the last
        if failures:
            model, first = failures[0]
            more = f" (and {len(failures) - 1} more model(s) failed)" if len(failures) > 1 else ""
            first.message = f"{model}: {first.message}{more}"
            raise first

    def _one_model(self, model: str, body: Callable[["CaseContext", str], None]) -> None:
        outer = self._stack, self._servers, self._scope
        try:
            with ExitStack() as stack:
                self._stack, self._servers, self._scope = stack, None, model
                stack.callback(self.stop_leftovers)  # after this model's own stops
                for node in self.nodes:
                    node.host.mkdir(node.on_host(self.model_logs(node, model)))
                try:
                    body(self, model)
                except HarnessError:
                    if self.policy.keeps_failures:
                        self.policy.keep_servers(self._servers or [])
                        stack.pop_all()  # nothing of this model is stopped
                    raise
        finally:
            self._stack, self._servers, self._scope = outer

    def in_model_scope(self, model: str, body: Callable[["CaseContext", str], None]) -> None:
        """Run `body(model)` as `each_model` runs one model: what it starts is stopped when it
        returns or raises (`invoke serve` holds its servers inside one)."""
        self._one_model(model, body)

    @property
    def servers(self) -> list[Server]:
        """The servers started so far in the current scope (the model, or the case)."""
        return list(self._servers or [])

    def _drain_between(self, model: str, later: Sequence[str]) -> None:
        try:
            self._wait_gpus_drained(model)
        except HarnessError as exc:
            for each in later:
                self.result.models[each] = "Fail: not run (environment unhealthy)"
            raise HostUnhealthy(f"environment unhealthy: {exc.message}", step=exc.step,
                                host=exc.host, log_tail=exc.log_tail, hint=exc.hint) from exc

    def _wait_gpus_drained(self, model: str) -> None:
        """The next model's engines need the memory this one held (vLLM refuses to start
        below --gpu-memory-utilization): wait for it, read as the host reset reads it."""
        def drain(node: Node, cancel: Cancel) -> None:
            with self.timeline.span(node.name, "drain", f"after {model}",
                                    case=self.case.name):
                seen = wait_for_drain(gpu_source_for(node, self.settings), cancel=cancel,
                                      timeout_s=self.settings.timeout_gpu_drain_s,
                                      host=node.name)
            if not seen.drained:
                used = format_used(seen.last.used_mb) if seen.last else "no reading"
                raise HarnessError(f"GPU memory still used {seen.waited_s:.1f}s after the "
                                   f"servers of {model} stopped: {used}", host=node.name)
            log.info("%s: GPU memory drained %.1fs after %s stopped", node.name, seen.waited_s,
                     model)

        with self.step(f"{model}: gpu drain"):
            fan_out([lambda cancel, node=node: drain(node, cancel) for node in self.nodes],
                    self.cancel, "gpu drain")

    # --- processes ----------------------------------------------------------------------------
    def server(self, name: str, node: Node, argv: Sequence[str], *, log: PurePosixPath,
               ready: Sequence[Rule], address: str | None = None, port: int | None = None,
               env: Mapping[str, str] | None = None, pythonpath: Sequence[str] = (),
               cwd: object = None, kind: str = "server") -> Server:
        """A server that is stopped when the case (or the model) ends, whatever happens:
        the servers of one scope are stopped all at once, on both hosts."""
        server = Server(name, node, list(argv), self.case.name, log, list(ready),
                        address=address, port=port, env=dict(env or {}),
                        pythonpath=list(pythonpath), cwd=cwd, cancel=self.cancel,
                        timeline=self.timeline, kind=kind)
        if self._servers is None:
            self._servers = []
            self._stack.callback(self._stop_all, self._servers,
                                 f"{self._scope}: stop" if self._scope else "stop")
        self._servers.append(server)
        return server

    def stop_leftovers(self) -> None:
        """The backstop: stop every process group a PID file of this case still names, on
        every node (a spawn whose answer was lost, a server a failed step never handed back).
        Not when KEEP_ON_FAILURE kept a failed model's servers: they are what is left."""
        if self.policy.kept_servers is not None:
            return
        for node in self.nodes:
            try:
                left = node.stop_all(self.case.name, self.settings.timeout_stop_s)
            except HarnessError as exc:
                note = (f"could not stop the processes of {self.case.name} on {node.name}: "
                        f"{exc.message}")
                log.error("%s", note)
                self.result.cleanup_errors.append(note)
                continue
            if left:
                log.warning("%s: stopped what %s left behind: %s", node.name, self.case.name,
                            ", ".join(left))

    def _stop_all(self, servers: list[Server], step: str) -> None:
        """Stop every server of a scope at once. Cleanup must reach every server: a stop that
        fails (a host gone) is recorded and the others are still stopped; it never hides the
        case's own failure. It is not cancelled by Ctrl-C: it is what Ctrl-C waits for."""
        def stop(server: Server) -> None:
            try:
                server.stop(self.settings.timeout_stop_s)
            except HarnessError as exc:
                note = f"could not stop {server.name} on {server.node.name}: {exc.message}"
                log.error("%s: %s", self.case.name, note)
                self.result.cleanup_errors.append(note)
        with self.step(step):
            fan_out([lambda _, server=server: stop(server) for server in servers], Cancel(),
                    "server stop")

    def post(self, url: str, payload: dict, timeout_s: float, model: str, *,
             server: str) -> tuple[int, str]:
        """The case's request (harness.run.answers.post), its answer saved to the model's
        curl_response.log; a span of kind `request` on this host's timeline."""
        save_to = self.local_file(model, answers.RESPONSE_LOG)
        path = url.split("/", 3)[-1] if url.count("/") >= 3 else url
        ref = log_ref(self.local.host_layout.logs, save_to)
        with self.timeline.span(self.local.name, "request", f"{model}: POST /{path}",
                                case=self.case.name, log=ref) as span:
            status, body = answers.post(url, payload, timeout_s, save_to, server=server)
            if status != 200:
                span.outcome = f"HTTP {status}"
        return status, body
