"""Command line of the harness; the nox sessions and scripts/run_test.sh call it.

    python -m harness single CASE      run-single: prepare, run, decide, clean up
    python -m harness group GROUP      run-all for SGLANG, VLLM or ALL
    python -m harness demo             the SGLANG group on the simulated cluster on this machine
    python -m harness list             the cases, in run order
    python -m harness settings         every setting with its default

Bad input gets one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from harness import cases as case_registry
from harness import redaction
from harness.errors import HarnessError, SettingsError
from harness.layout import Layout
from harness.results import CaseResult, write_case_result
from harness.settings import PROJECT_ROOT, Settings, help_text

EXIT_BAD_INPUT = 2
# The demo's cluster: two nodes on this machine, simulated engines, no Docker, SSH or GPU.
# Everything it relies on is set here; the simulator's knobs (HARNESS_SIM_FAULTS, ...) pass.
DEMO_SETTINGS = {
    "HARNESS_SIM": "true", "HARNESS_RUNTIME": "host", "HARNESS_REMOTE": "local",
    "LOCAL_IP": "127.0.0.1", "REMOTE_IP": "127.0.0.2",
    "REMOTE_TEST_DIR": "/tmp/mooncake_ci_demo/remote",
    "CONTAINER_NAME": "mooncake-ci-demo", "REMOTE_CONTAINER_NAME": "mooncake-ci-demo",
    "ARTIFACT_ID": "", "GIT_REPO": "", "MOONCAKE_WHEEL": "", "INSTALL_ERDMA": "false",
    "USE_MODELSCOPE": "false",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def configure_logging(layout: Layout) -> None:
    """Console for people (progress lines), run/logs/harness.log for the record; both pass
    every record through the secret filter (the token never reaches either)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    Path(layout.logs).mkdir(parents=True, exist_ok=True)
    record = logging.FileHandler(Path(layout.logs) / "harness.log", mode="w")
    record.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for handler in (console, record):
        handler.addFilter(redaction.SecretFilter())
        root.addHandler(handler)
    for noisy in ("urllib3", "docker", "paramiko"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness", description="Mooncake end-to-end CI harness",
        epilog="settings (environment variables):\n" + help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    single = sub.add_parser("single", help="run one case (name with or without .sh/.py)")
    single.add_argument("case", nargs="?")
    group = sub.add_parser("group", help="run every case of a group: SGLANG, VLLM or ALL")
    group.add_argument("group")
    sub.add_parser("demo", help="the SGLANG group on the built-in simulated cluster")
    sub.add_parser("list", help="list the cases in run order")
    sub.add_parser("settings", help="list every setting with its default")
    return parser


def list_cases() -> str:
    lines = []
    for case in case_registry.group_cases("ALL"):
        lines.append(f"  {case.name:<42} {case.group:<7} {case.kind:<7} {case.summary}")
    return "\n".join(lines)


def check_run_dir(layout: Layout) -> None:
    """run/ and run/logs must be directories this process can write: else one line now, rather
    than a traceback from the first log or result file."""
    probe = Path(layout.logs) / f".write-probe-{os.getpid()}"
    for path in (Path(layout.run), Path(layout.logs)):
        if path.exists() and not path.is_dir():
            raise SettingsError(f"cannot write the run directory: {path} is not a directory",
                                hint=f"move {path} away and run again")
    try:
        Path(layout.logs).mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise SettingsError(f"cannot write the run directory {layout.logs}: {why} "
                            f"({exc.filename or layout.logs})",
                            hint=f"make {layout.run} a writable directory, or remove what "
                                 "is in the way") from None


def main(argv: list[str] | None = None) -> int:
    redaction.remember_environ()
    args = _parser().parse_args(argv)
    if args.command == "list":
        print(list_cases())
        return 0
    if args.command == "settings":
        print(help_text())
        return 0
    layout = Layout.at(PROJECT_ROOT)
    asked: list[str] = []
    try:
        if args.command == "single":
            if not args.case:
                print("Usage: nox -s single -- <case>; known cases:\n" + list_cases(),
                      file=sys.stderr)
                return EXIT_BAD_INPUT
            asked = [args.case]
            cases = [case_registry.resolve(args.case)]
            label = cases[0].name
        elif args.command == "demo":
            cases = case_registry.group_cases("SGLANG")
            asked, label = [c.name for c in cases], "SGLANG (demo)"
        else:
            cases = case_registry.group_cases(args.group)
            asked, label = [c.name for c in cases], args.group.upper()
        environ = {**os.environ, **DEMO_SETTINGS} if args.command == "demo" else os.environ
        settings = Settings.from_env(environ)
        check_run_dir(layout)
    except SettingsError as exc:
        print(redaction.scrub(f"error: {exc}"), file=sys.stderr)
        _fail_asked(layout, asked, redaction.scrub(str(exc)))
        return EXIT_BAD_INPUT
    configure_logging(layout)
    from harness.runner import run_cases
    return run_cases(settings, cases, label)


def _fail_asked(layout: Layout, names: list[str], reason: str) -> None:
    """Bad input still leaves a Fail result for each case that was asked for by a usable name."""
    for name in names:
        bare = Path(name.strip()).name
        for suffix in (".sh", ".py"):
            bare = bare.removesuffix(suffix)
        if _SAFE_NAME.match(bare):
            try:
                write_case_result(layout, CaseResult(bare, reason=reason))
            except OSError:  # an unwritable run dir: the one line on stderr says so
                return


def run() -> None:
    try:
        sys.exit(main())
    except HarnessError as exc:  # an error outside a run (the runner maps those inside it)
        print(redaction.scrub(f"error: {exc}"), file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # the run tree became unwritable mid-run (disk full, removed)
        print(redaction.scrub(f"error: {exc.strerror or exc}: {exc.filename or ''}"),
              file=sys.stderr)
        sys.exit(1)
