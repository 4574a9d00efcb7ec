"""run-single and run-all: prepare once, run each case with cleanup guaranteed, write results.

This is the one place where exceptions become `Fail` results. Every case that was asked for gets
its `test_results.json`, whatever happens: failed prep, a crash, Ctrl-C/SIGTERM, an unhealthy host.
"""
from __future__ import annotations

import logging
import signal
import time
import traceback
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness import cases as case_registry
from harness import prep
from harness.cases import Case, CaseContext
from harness.errors import HarnessError, Interrupted, SettingsError
from harness.hosts import LocalHost
from harness.layout import Layout
from harness.nodes import HostNode, Node
from harness.results import CaseResult, Status, summary_table, write_case_result, write_run_summary
from harness.servers import CANCEL
from harness.settings import PROJECT_ROOT, Runtime, Settings
from harness.wheel import fetch_wheel, find_wheel

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130


@dataclass
class Run:
    """One invocation: the cases asked for, their results and the nodes they use."""
    settings: Settings
    cases: list[Case]
    label: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    layout: Layout = field(default_factory=lambda: Layout.at(PROJECT_ROOT))
    results: dict[str, CaseResult] = field(default_factory=dict)
    prep_s: dict[str, float] = field(default_factory=dict)
    local: Node | None = None
    remote: Node | None = None
    interrupted: bool = False

    def __post_init__(self) -> None:
        self.results = {c.name: CaseResult(c.name) for c in self.cases}

    @property
    def needs_remote(self) -> bool:
        return any(c.double for c in self.cases)


def run_cases(settings: Settings, cases: Sequence[Case], label: str,
              layout: Layout | None = None) -> int:
    """Prepare, run every case in order, clean up; the exit status (0 when all passed)."""
    run = Run(settings, list(cases), label)
    if layout is not None:
        run.layout = layout
    started = time.monotonic()
    previous = _install_signal_handlers()
    try:
        with ExitStack() as stack:
            try:
                _check_inputs(run)
                _run_all(run, stack)
            except KeyboardInterrupt:
                _interrupted(run)
            except HarnessError as exc:
                _fail_unfinished(run, exc)
            except Exception as exc:  # a bug: still every case gets its result
                log.error("internal error: %s", traceback.format_exc())
                _fail_unfinished(run, HarnessError(f"internal error: {exc!r}"))
            finally:
                for sig in previous:
                    signal.signal(sig, _ignore_during_cleanup)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        CANCEL.clear()
        _finish(run, time.monotonic() - started)
    if run.interrupted:
        return EXIT_INTERRUPTED
    return 0 if all(r.passed for r in run.results.values()) else 1


# --- the steps of a run -----------------------------------------------------------------------
def _check_inputs(run: Run) -> None:
    s = run.settings
    if run.needs_remote and not (s.local_ip and s.remote_ip):
        doubles = ", ".join(c.name for c in run.cases if c.double)
        raise SettingsError(f"LOCAL_IP and REMOTE_IP must be set for double cases ({doubles})")


def _prepare(run: Run, stack: ExitStack, group: str) -> None:
    """Per-host preparation, once per group (SPEC §5); a failure fails every case left."""
    s = run.settings
    if run.local is None:
        run.local = _local_node(s, run)
        stack.callback(run.local.close)
    if run.needs_remote:
        raise HarnessError("double cases need the remote host, which this version cannot "
                           "drive yet", step="prepare", host="remote")
    _prepare_host(run, run.local, stack, group=group)


def _prepare_host(run: Run, node: Node, stack: ExitStack, group: str) -> None:
    s = run.settings
    step = _PrepStep(run, node)
    have_same_wheel = step("run-dir", lambda: prep.prepare_run_dir(s, node.host, run.layout))
    whl_dir = Path(run.layout.whls)
    if not (s.mooncake_wheel or s.artifact_id) and s.harness_sim:
        wheel = step.skip("get-wheel", "simulated run without MOONCAKE_WHEEL or ARTIFACT_ID")
    elif have_same_wheel:
        wheel = step.skip("get-wheel", "run/.shrc records the same ARTIFACT_ID and the wheel "
                          "is present", value=find_wheel(whl_dir))
    else:
        wheel = step("get-wheel", lambda: fetch_wheel(s, whl_dir))
    if isinstance(node, HostNode):
        for name in ("pull-image", "start-container", "install-erdma"):
            step.skip(name, "HARNESS_RUNTIME=host")
    else:
        image = s.image_for(group)
        step("pull-image", lambda: prep.pull_image(node.client, image, s.image_pull))
        stack.callback(node.remove)
        step("start-container", lambda: prep.start_container(node, image, run.run_id))
        if s.install_erdma:
            step("install-erdma", lambda: prep.install_erdma(node, s))
        else:
            step.skip("install-erdma", "INSTALL_ERDMA=false")
    if wheel is None and isinstance(node, HostNode):
        step.skip("pip-install", "no wheel to install")
    else:
        step("pip-install", lambda: prep.install_python_packages(
            node, s, group, wheel.name if wheel else None))


class _PrepStep:
    """Runs one prep step: logs it, times it, tags its errors with step and host."""

    def __init__(self, run: Run, node: Node) -> None:
        self.run = run
        self.node = node

    def __call__(self, name: str, action):
        log.info("prep %s: %s ...", self.node.name, name)
        start = time.monotonic()
        try:
            value = action()
        except HarnessError as exc:
            exc.at(step=name, host=self.node.name)
            raise
        finally:
            self.run.prep_s[f"{self.node.name}:{name}"] = round(time.monotonic() - start, 3)
        log.info("prep %s: %s done (%.1fs)", self.node.name, name, time.monotonic() - start)
        return value

    def skip(self, name: str, why: str, value=None):
        log.info("prep %s: %s skipped (%s)", self.node.name, name, why)
        self.run.prep_s[f"{self.node.name}:{name}"] = 0.0
        return value


def _local_node(settings: Settings, run: Run) -> Node:
    host = LocalHost("local", settings.local_ip or "127.0.0.1")
    if settings.harness_runtime is Runtime.HOST:
        return HostNode(host, run.layout.root)
    from harness.container import ContainerNode
    return ContainerNode(settings, host, run.layout.root)


def _run_all(run: Run, stack: ExitStack) -> None:
    """The cases in order: prepare when the group (image) changes, else reset between cases."""
    prepared = None
    for case in run.cases:
        if case.group != prepared:
            _prepare(run, stack, case.group)
            prepared = case.group
        else:
            _reset_hosts(run)
        _run_case(run, case)


def _reset_hosts(run: Run) -> None:
    for node in filter(None, (run.local, run.remote)):
        try:
            node.reset(run.settings.timeout_stop_s)
        except HarnessError as exc:
            raise HarnessError(f"environment unhealthy: reset failed ({exc})",
                               step="reset", host=node.name, log_tail=exc.log_tail) from exc


def _run_case(run: Run, case: Case) -> None:
    result = run.results[case.name]
    result.started = time.time()
    start = time.monotonic()
    log.info("=== %s (%s, %s) ===", case.name, case.group, case.kind)
    try:
        with ExitStack() as stack:
            for node in filter(None, (run.local, run.remote)):
                node.host.empty_dir(node.on_host(node.layout.case_logs(case.name)))
                node.host.empty_dir(node.on_host(node.layout.case_pids(case.name)))
            ctx = CaseContext(case, run.settings, run.local, run.remote, result, stack)
            case.run(ctx)
        result.status = Status.PASS
    except KeyboardInterrupt:
        raise
    except HarnessError as exc:
        _record_failure(result, exc)
    except Exception as exc:  # a bug in a case: record it, keep going with the next case
        log.error("internal error in %s: %s", case.name, traceback.format_exc())
        _record_failure(result, HarnessError(f"internal error: {exc!r}"))
    finally:
        result.duration_s = time.monotonic() - start
        if result.reason or result.status is Status.PASS:
            write_case_result(run.layout, result)
    log.info("=== %s: %s (%.1fs) ===", case.name, result.status.value, result.duration_s)


def _record_failure(result: CaseResult, exc: HarnessError, *, quiet: bool = False) -> None:
    result.status = Status.FAIL
    result.reason = str(exc)
    result.step = exc.step or ""
    result.host = exc.host or ""
    result.server = exc.server or ""
    result.log_tail = exc.log_tail or ""
    if not quiet:
        log.error("%s failed: %s", result.case, exc.details())


def _fail_unfinished(run: Run, exc: HarnessError) -> None:
    """A run-level failure (bad input, prep, unhealthy host): every case not yet decided fails."""
    log.error("%s", exc.details())
    for result in run.results.values():
        if not result.reason and result.status is not Status.PASS:
            prefix = "environment unhealthy; case not run: " if exc.step == "reset" else ""
            _record_failure(result, exc, quiet=True)
            result.reason = prefix + result.reason


def _interrupted(run: Run) -> None:
    run.interrupted = True
    CANCEL.set()
    _fail_unfinished(run, Interrupted("interrupted (Ctrl-C or SIGTERM); run stopped"))


def _finish(run: Run, duration_s: float) -> None:
    results = list(run.results.values())
    for result in results:
        write_case_result(run.layout, result)
    write_run_summary(run.layout, results, group=run.label, pr_id=run.settings.pr_id,
                      prep_s=run.prep_s, duration_s=duration_s)
    print("\n" + summary_table(results), flush=True)
    passed = sum(r.passed for r in results)
    print(f"\n{passed} of {len(results)} cases passed in {duration_s:.1f}s; "
          f"results under {run.layout.logs}", flush=True)


# --- signals ----------------------------------------------------------------------------------
def _ignore_during_cleanup(signum: int, frame: object) -> None:
    log.warning("signal %d while stopping: finishing the cleanup first", signum)


def _raise_interrupt(signum: int, frame: object) -> None:
    """First Ctrl-C/SIGTERM: stop waits everywhere and unwind; later ones must not cut cleanup."""
    CANCEL.set()
    signal.signal(signal.SIGTERM, _ignore_during_cleanup)
    signal.signal(signal.SIGINT, _ignore_during_cleanup)
    raise KeyboardInterrupt


def _install_signal_handlers() -> dict:
    """SIGTERM takes the same path as Ctrl-C (SPEC §2, 'Stopping')."""
    return {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}


def resolve_cases(names: Sequence[str]) -> list[Case]:
    registry = case_registry.discover()
    return [case_registry.resolve(name, registry) for name in names]


# --- the invoke tasks' entry points -----------------------------------------------------------
def container_node(settings: Settings) -> Node:
    """The local container node (for tasks that act on CONTAINER_NAME)."""
    from harness.container import ContainerNode
    return ContainerNode(settings, LocalHost("local", settings.local_ip or "127.0.0.1"),
                         PROJECT_ROOT)


def prepare_standalone(settings: Settings, group: str) -> None:
    """`invoke prepare`: the local preparation of a run, leaving the container running."""
    run = Run(settings, [], group)
    run.local = _local_node(settings, run)
    with ExitStack() as stack:
        _prepare_host(run, run.local, stack, group=group)
        stack.pop_all()  # keep the container for the person debugging
    for name, seconds in run.prep_s.items():
        print(f"{name:<28} {seconds:.1f}s")


def clean(settings: Settings, *, wheels: bool) -> None:
    """`invoke clean`: stop recorded processes, remove the container and the run's logs."""
    layout = Layout.at(PROJECT_ROOT)
    host = LocalHost("local")
    stopped = HostNode(host, layout.root).stop_all(None, settings.timeout_stop_s) \
        if settings.harness_runtime is Runtime.HOST else []
    if settings.harness_runtime is Runtime.DOCKER:
        node = container_node(settings)
        if node.running():
            stopped = node.stop_all(None, settings.timeout_stop_s)
        node.remove()
    for path in (layout.logs, layout.pids) + ((layout.whls, layout.shrc) if wheels else ()):
        host.remove(path)
    log.info("clean: stopped %s; removed run/logs, run/pids%s", stopped or "nothing",
             ", run/whls, run/.shrc" if wheels else "")
