"""`invoke serve <case> [--model M]`: a double case's servers and router/proxy, up until Ctrl-C.

What the old case scripts' `start_server` gave people: both hosts prepared as a run prepares
them, then the case's own `start_servers` part for one model (the same code the case runs), the
reach-them block of harness.run.keep, and everything stopped cleanly on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import logging
import signal
from contextlib import ExitStack

from harness.run import cases as case_registry
from harness.prep import environment
from harness.run.cases import Case, CaseContext
from harness.errors import HarnessError, SettingsError
from harness.policy import RunPolicy
from harness.run.keep import Kept, liveness, reach_text
from harness.results.outcome import CaseResult
from harness.run.runner import Run, check_inputs, install_signal_handlers
from harness.settings import Settings

log = logging.getLogger(__name__)

LIVENESS_EVERY_S = 10.0   # how often a held server is checked (a death is said at once)


def resolve_served(name: str, model: str | None) -> tuple[Case, str]:
    """The double case and the model to serve (default: the case's first); bad input is one
    SettingsError line naming what is accepted."""
    registry = case_registry.discover()
    case = case_registry.resolve(name, registry)
    doubles = sorted(c.name for c in registry.values() if c.double and c.start_servers)
    if not case.double or case.start_servers is None:
        raise SettingsError(f"{case.name} is a single-host case; its servers are its pytest "
                            f"payload's own. invoke serve takes a double case: "
                            f"{', '.join(doubles)}")
    if model and model not in case.models:
        raise SettingsError(f"unknown model {model!r} for {case.name}; its models: "
                            f"{', '.join(case.models)}")
    return case, model or case.models[0]


def serve(settings: Settings, name: str, model: str | None = None) -> None:
    """Prepare both hosts, start the model's servers, hold them until Ctrl-C/SIGTERM, stop all.
    Returns normally after a signal (exit 0); a failed prep or start raises HarnessError
    after everything started was stopped."""
    case, model = resolve_served(name, model)
    run = Run(settings, [case], f"serve {case.name}")
    check_inputs(run)
    previous = install_signal_handlers(run.env.cancel)
    try:
        with ExitStack() as stack:
            environment.open_nodes(run.env, stack, needs_remote=True)
            environment.prepare(run.env, stack, case.group)
            environment.fresh_case_dirs(run.env, case.name)
            # a failed start stops what it started, as a run does: no keep-on-failure
            policy = RunPolicy(run.env.cancel)
            ctx = CaseContext(case, settings, run.env.local, run.env.remote,
                              CaseResult(case.name), stack, policy)
            stack.callback(environment.collect_remote_logs, run.env, case.name)  # after every stop
            stack.callback(ctx.stop_leftovers)
            case.prepare(ctx)
            ctx.in_model_scope(model, lambda ctx, m: _hold(ctx, case, m))
    except KeyboardInterrupt:
        log.info("serve %s: stopped (Ctrl-C or SIGTERM)", case.name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"serve {case.name}: every server stopped", flush=True)


def _hold(ctx: CaseContext, case: Case, model: str) -> None:
    assert case.start_servers is not None
    case.start_servers(ctx, model)
    kept = Kept(case.name, model, ctx.servers)
    title = (f"invoke serve: {case.name} ({model}) is up; Ctrl-C or SIGTERM stops everything")
    print("\n" + reach_text(ctx.settings, ctx.nodes, kept, alive=liveness(kept.servers),
                            title=title), flush=True)
    gone: set[str] = set()
    while not ctx.cancel.wait(LIVENESS_EVERY_S):  # until the signal handler interrupts us
        try:
            alive = liveness(kept.servers)
        except HarnessError as exc:
            log.warning("serve: could not check the servers: %s", exc)
            continue
        for server in kept.servers:
            if not alive[id(server)] and server.name not in gone:
                gone.add(server.name)
                log.error("serve: %s on %s has exited; see %s", server.name, server.node.name,
                          server.node.on_host(server.log))
        if len(gone) == len(kept.servers):
            raise HarnessError(f"every server of {case.name} ({model}) has exited; "
                               "nothing left to serve")
