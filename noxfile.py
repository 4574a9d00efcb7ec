"""Entry points. Sessions parse their arguments and call the harness (`python -m harness`).

A bare `nox` runs only what needs no Docker, GPU or remote host: lint and the unit tests.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "unit"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

ROOT = Path(__file__).resolve().parent
# nox gives a child 0.3 s after Ctrl-C before terminating it; the harness needs time to stop
# servers on both hosts and remove its containers (TIMEOUT_STOP_S is 10 s per server).
HARNESS_STOP = {"interrupt_timeout": 180.0, "terminate_timeout": 30.0}


def _forward_sigterm(signum: int, frame: object) -> None:
    """SIGTERM to nox takes Ctrl-C's path: the harness child gets SIGTERM, nox waits for it."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(") ")[2].split()
        except OSError:
            continue
        if fields and fields[1] == me:
            try:
                os.kill(int(stat.parent.name), signal.SIGTERM)
            except ProcessLookupError:
                pass
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _forward_sigterm)


def _install(session: nox.Session, *extras: str) -> None:
    if session.venv_backend == "none":  # `nox --no-venv`: the harness is already installed
        return
    if _simulated() and "demo" not in extras:  # what the simulated cluster runs on the host
        extras = (*extras, "demo")
    spec = f".[{','.join(extras)}]" if extras else "."
    # Where tests/provision.sh left its wheel cache, the 98 MB Mooncake wheel comes from there.
    wheels = Path(os.environ.get("HARNESS_CACHE", "/var/cache/mooncake-harness")) / "wheels"
    find_links = ["--find-links", str(wheels)] if wheels.is_dir() else []
    session.install(*find_links, "-e", spec)


def _simulated() -> bool:
    """HARNESS_SIM is a setting of every session, not only of `demo` (read as the harness
    reads a true/false setting)."""
    return os.environ.get("HARNESS_SIM", "").strip().lower() in ("1", "true", "yes", "on")


def _mark_unfinished(*args: str) -> None:
    """`Fail` for the asked cases before the install: a failed or killed `pip install` must not
    leave an earlier run's `Pass` standing (the harness writes them again when it starts)."""
    sys.path.insert(0, str(ROOT))
    from harness.results.verdict import mark_unfinished
    mark_unfinished(ROOT, args[0], list(args[1:]))


def _harness(session: nox.Session, *args: str) -> None:
    _mark_unfinished(*args)
    _install(session)
    session.run("python", "-m", "harness", *args, **HARNESS_STOP)


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks (ruff)."""
    session.install("ruff")
    session.run("ruff", "check", "harness", "cases", "payloads", "sim", "tests", "benchmarks",
                "noxfile.py", "tasks.py", *session.posargs)


@nox.session
def unit(session: nox.Session) -> None:
    """Unit tests: no Docker, sshd or GPU needed."""
    _install(session, "test")
    session.run("pytest", "tests/unit", "-q", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite: unit and integration (Docker engine, sshd, offline image)."""
    # The payload tests run the simulated cluster on this host, as the demo does.
    _install(session, "test", "demo")
    # `nox -s tests -- tests/unit` runs those; a bare `nox -s tests` (or only options) all.
    paths = [] if any(not arg.startswith("-") for arg in session.posargs) else ["tests"]
    # Three workers on CI's two cores (the tests mostly wait on servers); the tests that use a
    # real run's fixed addresses and ports share one worker (tests/conftest.py's scheduler).
    parallel = ["-n", "3"]
    session.run("pytest", *paths, "-ra", *parallel, *session.posargs, **HARNESS_STOP)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Timings: both hosts prepared at once, readiness and stop latency (needs provisioning)."""
    _install(session, "test")
    session.run("python", "benchmarks/bench.py", *session.posargs, **HARNESS_STOP)


@nox.session(default=False)
def faults(session: nox.Session) -> None:
    """Fault matrix: every simulator fault x component on the simulated cluster, as a table."""
    _install(session, "test", "demo")
    session.run("python", "benchmarks/faults.py", *session.posargs, **HARNESS_STOP)


@nox.session(default=False)
def single(session: nox.Session) -> None:
    """Run one case, or several in group order: nox -s single -- <case> [<case>...]."""
    if not session.posargs:
        _install(session)
        session.run("python", "-m", "harness", "list", silent=False)
        session.error("Usage: nox -s single -- <case> [<case>...]")
    _harness(session, "single", *session.posargs)


@nox.session(default=False)
def rerun(session: nox.Session) -> None:
    """Run again exactly the cases that failed in the last run (run/logs/run_summary.json)."""
    _mark_unfinished("rerun")  # only the cases to be rerun: the passes stay
    from harness.results.outcome import DEMO_LABEL
    from harness.results.verdict import last_summary
    last = last_summary(ROOT) or {}
    _install(session, *(("demo",) if last.get("group") == DEMO_LABEL else ()))
    session.run("python", "-m", "harness", "rerun", **HARNESS_STOP)


@nox.session(default=False)
def sglang(session: nox.Session) -> None:
    """Run-all for the SGLANG group."""
    _harness(session, "group", "SGLANG")


@nox.session(default=False)
def vllm(session: nox.Session) -> None:
    """Run-all for the VLLM group."""
    _harness(session, "group", "VLLM")


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The SGLANG group on the built-in simulated cluster: no GPU, Docker or second host."""
    _mark_unfinished("demo")
    _install(session, "demo")
    session.run("python", "-m", "harness", "demo", **HARNESS_STOP)


@nox.session(name="all", default=False)
def all_groups(session: nox.Session) -> None:
    """SGLANG group, then VLLM group."""
    _harness(session, "group", "ALL")


@nox.session(default=False)
def mutants(session: nox.Session) -> None:
    """Mutation testing (mutmut) of the code that decides a verdict, against the unit tests;
    prints the share of mutants killed and every survivor. Slow (minutes, at nice 10); not CI."""
    _install(session, "test")
    session.install("mutmut==3.8.1")  # the config keys and mutant names of tests/mutants.py
    session.run("python", "tests/mutants.py", *session.posargs)
