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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from harness.prep import environment
from harness.results import transfers
from harness.run.cases import Case, CaseContext
from harness.prep.environment import Environment
from harness.errors import HarnessError, HostUnhealthy, Interrupted, SettingsError
from harness.policy import RunPolicy
from harness.run import preflight
from harness.run.keep import Kept, liveness, reach_text
from harness.run.preflight import Preflight
from harness.layout import Layout
from harness.results.report import write_report
from harness.results.outcome import (UNFINISHED, CaseResult, summary_table, updated_cases,
                                     write_case_result, write_run_summary, write_unfinished)
from harness.results.status import Outcome, entry_passed
from harness.settings import PROJECT_ROOT, Runtime, Settings
from harness.results.timeline import Timeline
from harness.waiting import Cancel, set_progress_every

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130


@dataclass
class Run:
    """One invocation: the cases asked for, their results and the nodes they use."""
    settings: Settings
    cases: list[Case]
    label: str
    layout: Layout = field(default_factory=lambda: Layout.at(PROJECT_ROOT))
    results: dict[str, CaseResult] = field(default_factory=dict)
    earlier: list[dict] | None = None   # a rerun: the case entries of the summary it updates
    env: Environment = field(init=False)
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)
    kept: Kept | None = None     # KEEP_ON_FAILURE stopped the run at this case's failure
    kept_text: str = ""          # how to reach and stop what it kept (printed last)
    preflight: Preflight | None = None  # the Mooncake pre-flight's findings, once it ran

    def __post_init__(self) -> None:
        self.results = {c.name: CaseResult(c.name, group=c.group) for c in self.cases}
        self.env = Environment(self.settings, self.layout, uuid.uuid4().hex[:12],
                               policy=RunPolicy(keep_on_failure=self.settings.keep_on_failure))

    @property
    def needs_remote(self) -> bool:
        return any(c.double for c in self.cases)


def run_cases(settings: Settings, cases: Sequence[Case], label: str,
              layout: Layout | None = None, *, earlier: list[dict] | None = None) -> int:
    """Prepare, run every case in order, clean up; the exit status (0 when all passed).
    `earlier`: a rerun's summary entries, kept for the cases not run again."""
    run = Run(settings, list(cases), label, layout or Layout.at(PROJECT_ROOT), earlier=earlier)
    # started empty, as harness.log is: the spans of this run only (results.report reads them)
    run.env.timeline = Timeline.fresh(Path(run.layout.timeline), run.env.run_id)
    set_progress_every(settings.progress_every_s)
    previous = install_signal_handlers(run.env.cancel)
    try:
        for case in run.cases:  # before anything else: a verdict exists from the first second
            write_unfinished(run.layout, case.name, case.group)
        _write_summary(run, finished=False)
        with ExitStack() as stack:
            try:
                check_inputs(run)
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
        _finish(run)
        if run.kept_text:
            print("\n" + run.kept_text, flush=True)
    if run.interrupted:
        return EXIT_INTERRUPTED
    return 0 if all(r.passed for r in run.results.values()) else 1


# --- the steps of a run -----------------------------------------------------------------------
def check_inputs(run: Run) -> None:
    s = run.settings
    if run.needs_remote and not (s.local_ip and s.remote_ip):
        doubles = ", ".join(c.name for c in run.cases if c.double)
        raise SettingsError(f"LOCAL_IP and REMOTE_IP must be set for double cases ({doubles})")


def _run_all(run: Run, stack: ExitStack) -> None:
    """The cases in order: prepare when the group (image) changes, else reset between cases."""
    environment.open_nodes(run.env, stack, run.needs_remote)
    prepared = None
    for case in run.cases:
        if prepared is not None:  # between two cases, also when the group (image) changes
            environment.reset(run.env, case.name)
        if case.group != prepared:
            environment.prepare(run.env, stack, case.group)
            prepared = case.group
            run.preflight = preflight.checked(run.env, run.settings, case.group)
            if run.preflight.failure is not None:  # no model loads: every case fails with it
                raise run.preflight.failure
        _run_case(run, case)
        if run.kept is not None:
            _stop_for_keep(run)
            return


def _run_case(run: Run, case: Case) -> None:
    result = run.results[case.name]
    result.started = time.time()
    start = time.monotonic()
    log.info("=== %s (%s, %s) ===", case.name, case.group, case.kind)
    try:
        with ExitStack() as stack:
            environment.fresh_case_dirs(run.env, case.name)
            write_unfinished(run.layout, case.name, case.group)  # the emptied dir held it
            # Run last (LIFO), after the case's own servers are stopped: anything still
            # recorded under run/pids/<case> on either host, then the remote logs join the
            # local tree before the result is written.
            ctx = CaseContext(case, run.settings, run.env.local, run.env.remote, result, stack,
                              run.env.policy, run.env.timeline)
            stack.callback(environment.collect_remote_logs, run.env, case.name)
            stack.callback(ctx.stop_leftovers)
            case.execute(ctx)
        if result.cleanup_errors:  # it passed, but left something running somewhere
            raise HarnessError("cleanup failed: " + "; ".join(result.cleanup_errors),
                               step="cleanup")
        result.end(Outcome.PASSED)
    except KeyboardInterrupt:
        raise
    except HarnessError as exc:
        _record_failure(result, exc, outcome=outcome_of(exc))
    except Exception as exc:  # a bug in a case: record it, keep going with the next case
        log.error("internal error in %s: %s", case.name, traceback.format_exc())
        _record_failure(result, HarnessError(f"internal error: {exc!r}"))
    finally:
        result.duration_s = time.monotonic() - start
        if run.settings.harness_sim:
            _note_transfers(run, result)
        if result.decided:
            result.ended = time.time()
            write_case_result(run.layout, result)
            _write_summary(run, finished=False)
            print(f"{case.name}: {result.status.value}", flush=True)
    log.info("=== %s: %s (%.1fs) ===", case.name, result.status.value, result.duration_s)
    if not result.passed and run.env.policy.keeps_failures:
        failed_model = next((m for m, v in result.models.items() if v.startswith("Fail")), "")
        servers = run.env.policy.kept_servers or []
        run.kept = Kept(case.name, failed_model, servers, payload=not case.double,
                        containers=run.settings.harness_runtime is Runtime.DOCKER)


def _stop_for_keep(run: Run) -> None:
    """KEEP_ON_FAILURE: the containers stay up and the cases after the kept one are not run;
    what to reach is read now, while the nodes are open."""
    kept = run.kept
    assert kept is not None
    run.env.policy.stop_at(kept.case)
    for result in run.results.values():
        if not result.decided:
            result.end(Outcome.NOT_RUN, kept.not_run_reason())
            result.step = "keep"
    try:
        alive = liveness(kept.servers)
    except HarnessError as exc:  # a host gone: say what was kept all the same
        log.warning("could not check the kept servers: %s", exc)
        alive = None
    run.kept_text = reach_text(run.settings, run.env.nodes, kept, alive=alive)
    log.debug("%s", run.kept_text)  # the console gets it last, after the summary


def _note_transfers(run: Run, result: CaseResult) -> None:
    """What Mooncake moved between the simulated engines; a failure's reason names it."""
    result.mooncake = transfers.summarise(result.case,
                                          Path(str(run.layout.case_logs(result.case))))
    first = (result.mooncake or {}).get("first_failure")
    if first and result.reason and "Mooncake" not in result.reason:
        result.reason += f"; Mooncake: {first}"


def _record_failure(result: CaseResult, exc: HarnessError, *, quiet: bool = False,
                    outcome: Outcome = Outcome.FAILED) -> None:
    result.end(outcome, str(exc))
    result.step = exc.step or ""
    result.host = exc.host or ""
    result.server = exc.server or ""
    result.log_tail = exc.log_tail or ""
    told = any(outcome.startswith("Fail:") for outcome in result.models.values())
    if not quiet:  # a model's failure was told, with its details, when the model ended
        log.log(logging.DEBUG if told else logging.ERROR, "%s failed: %s", result.case,
                exc.details())


def _fail_unfinished(run: Run, exc: HarnessError) -> None:
    """A run-level failure (bad input, prep, unhealthy host): every case not yet decided fails."""
    log.error("%s", exc.details())
    outcome = outcome_of(exc)
    for result in run.results.values():
        if not result.decided:
            _record_failure(result, exc, quiet=True, outcome=outcome)
            if outcome is Outcome.UNHEALTHY:
                result.reason = "environment unhealthy; case not run: " + result.reason


def outcome_of(exc: HarnessError) -> Outcome:
    """How an error ends a case: Ctrl-C/SIGTERM, a host not fit for it, or the case's own."""
    if isinstance(exc, Interrupted):
        return Outcome.INTERRUPTED
    return Outcome.UNHEALTHY if isinstance(exc, HostUnhealthy) else Outcome.FAILED


def _interrupted(run: Run) -> None:
    run.interrupted = True
    run.env.cancel.set("interrupted")
    _fail_unfinished(run, Interrupted("interrupted (Ctrl-C or SIGTERM); run stopped"))


def _write_summary(run: Run, *, finished: bool) -> None:
    """The run summary (and JUnit file) as of now: a case still to end is "run did not finish",
    as its test_results.json says."""
    results = [r if r.ended is not None else replace(r, reason=UNFINISHED)
               for r in run.results.values()]
    write_run_summary(run.layout, results, group=run.label,
                      pr_id=run.settings.pr_id, prep_s=run.env.prep_s,
                      duration_s=time.monotonic() - run.started, finished=finished,
                      earlier=run.earlier, settings=run.settings.env_items(),
                      preflight=run.preflight.to_json() if run.preflight else None)


def _finish(run: Run) -> None:
    duration_s = time.monotonic() - run.started
    results = list(run.results.values())
    for result in results:
        if result.ended is None:  # the cases that did not get to end by themselves
            write_case_result(run.layout, result)
            print(f"{result.case}: {result.status.value}", flush=True)
    _write_summary(run, finished=True)
    run.env.timeline.close_open()
    _write_report(run)
    print("\n" + summary_table(results), flush=True)
    passed = sum(r.passed for r in results)
    print(f"\n{passed} of {len(results)} cases passed in {duration_s:.1f}s; "
          f"results under {run.layout.logs}", flush=True)
    if run.earlier is not None:  # a rerun: what the tree it updated says now
        tree = updated_cases(run.earlier, [r.to_summary() for r in results])
        print(f"the whole tree ({run.layout.run_summary}): "
              f"{sum(map(entry_passed, tree))} of {len(tree)} cases "
              "passed", flush=True)


def _write_report(run: Run) -> None:
    """run/logs/report.html; it is a view of the results, so failing to write it is a warning,
    never a changed verdict."""
    try:
        path = write_report(Path(run.layout.logs))
    except Exception as exc:  # noqa: BLE001 - any bug in the report must not end the run
        log.warning("could not write the HTML report: %r", exc)
        return
    log.info("report: %s", path)


# --- signals ----------------------------------------------------------------------------------
def _ignore_during_cleanup(signum: int, frame: object) -> None:
    log.warning("signal %d while stopping: finishing the cleanup first", signum)


def install_signal_handlers(cancel: Cancel) -> dict:
    """SIGTERM takes the same path as Ctrl-C (SPEC §2, 'Stopping'). The first one cancels every
    wait of the run (in every thread) and unwinds the main thread; later ones must not cut the
    cleanup short."""
    def interrupt(signum: int, frame: object) -> None:
        cancel.set("interrupted")
        signal.signal(signal.SIGTERM, _ignore_during_cleanup)
        signal.signal(signal.SIGINT, _ignore_during_cleanup)
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
