"""Command line of the harness; the nox sessions and scripts/run_test.sh call it.

    python -m harness single CASE...   run-single: prepare, run, decide, clean up (a subset of
                                       cases runs in group order, one prep per group)
    python -m harness group GROUP      run-all for SGLANG, VLLM or ALL
    python -m harness rerun            the cases that failed in the last run, in the same tree
    python -m harness merge DIR...     one run tree from the run/logs trees of several host pairs
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

from harness.run import cases as case_registry
from harness import redaction
from harness.errors import HarnessError, SettingsError
from harness.groups import run_order
from harness.layout import Layout
from harness.results.outcome import DEMO_LABEL, CaseResult, write_case_result, write_run_summary
from harness.results.status import Outcome
from harness.results.summary import failed_cases, read_run_summary
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
    "PREFLIGHT_MAX_BYTES": str(64 << 20),  # the pre-flight's ladder up to 64 MiB on loopback TCP
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def configure_logging(layout: Layout, *, append: bool = False) -> None:
    """Console for people (progress lines), run/logs/harness.log for the record; both pass
    every record through the secret filter (the token never reaches either). A rerun appends:
    the log of the run whose passes it keeps stays."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    Path(layout.logs).mkdir(parents=True, exist_ok=True)
    record = logging.FileHandler(Path(layout.logs) / "harness.log", mode="a" if append else "w")
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
    single = sub.add_parser("single", help="run one case, or several in group order (names "
                                           "with or without .sh/.py)")
    single.add_argument("cases", nargs="*", metavar="case")
    group = sub.add_parser("group", help="run every case of a group: SGLANG, VLLM or ALL")
    group.add_argument("group")
    sub.add_parser("demo", help="the SGLANG group on the built-in simulated cluster")
    sub.add_parser("rerun", help="run again the cases that failed in the last run "
                                 "(run/logs/run_summary.json), updating the same tree")
    merge = sub.add_parser("merge", help="merge the run/logs trees of several host pairs into "
                                         "one (summary, junit.xml, report, case dirs)")
    merge.add_argument("dirs", nargs="+", metavar="DIR", help="a run/logs dir (or a dir holding "
                                                               "run/logs)")
    merge.add_argument("--out", help="the merged tree (default: run/logs here); must not exist "
                                     "or be empty")
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
    if args.command == "merge":
        from harness.results.merge import merge_command
        return merge_command(args.dirs, args.out, default_out=Path(layout.logs))
    asked: list[str] = []
    earlier: list[dict] | None = None
    label = ""
    demo = args.command == "demo"
    try:
        if args.command == "single":
            if not args.cases:
                print("Usage: nox -s single -- <case> [<case>...]; known cases:\n"
                      + list_cases(), file=sys.stderr)
                return EXIT_BAD_INPUT
            asked = list(args.cases)
            cases = in_run_order([case_registry.resolve(name) for name in asked])
            label = " ".join(c.name for c in cases)
        elif args.command == "rerun":
            try:
                summary = read_run_summary(layout)
            except SettingsError as exc:
                raise SettingsError(f"nothing to rerun: {exc}") from None
            asked, earlier = failed_cases(summary), summary["cases"]
            label, demo = str(summary.get("group") or "rerun"), summary.get("group") == DEMO_LABEL
            if not asked:
                print(f"nothing to rerun: every case in {layout.run_summary} passed")
                return 0
            cases = in_run_order([case_registry.resolve(name) for name in asked])
        elif demo:
            cases = case_registry.group_cases("SGLANG")
            asked, label = [c.name for c in cases], DEMO_LABEL
        else:
            cases = case_registry.group_cases(args.group)
            asked, label = [c.name for c in cases], args.group.upper()
        settings = Settings.from_env({**os.environ, **DEMO_SETTINGS} if demo else os.environ)
        check_run_dir(layout)
    except SettingsError as exc:
        print(redaction.scrub(f"error: {exc}"), file=sys.stderr)
        _fail_asked(layout, asked, redaction.scrub(str(exc)), earlier, label)
        return EXIT_BAD_INPUT
    configure_logging(layout, append=earlier is not None)
    if earlier is not None:
        logging.getLogger(__name__).info("rerun of the %d case(s) that failed: %s", len(cases),
                                         " ".join(c.name for c in cases))
    from harness.run.runner import run_cases
    return run_cases(settings, cases, label, earlier=earlier)


def in_run_order(cases: list[case_registry.Case]) -> list[case_registry.Case]:
    """Each case once, in group order (SGLANG, then VLLM; the group's own order within)."""
    unique = {c.name: c for c in cases}.values()
    return sorted(unique, key=lambda c: run_order(c.group, c.order))


def _fail_asked(layout: Layout, names: list[str], reason: str,
                earlier: list[dict] | None = None, label: str = "") -> None:
    """Bad input still leaves a Fail result for each case that was asked for by a usable name,
    and a run summary saying so."""
    groups = {c.name: c.group for c in case_registry.discover().values()}
    results = []
    for name in names:
        bare = Path(name.strip()).name
        for suffix in (".sh", ".py"):
            bare = bare.removesuffix(suffix)
        if _SAFE_NAME.match(bare):
            results.append(CaseResult(bare, Outcome.FAILED, reason, group=groups.get(bare, "")))
    try:
        for result in results:
            write_case_result(layout, result)
        if results:
            write_run_summary(layout, results, group=label or " ".join(r.case for r in results),
                              pr_id=os.environ.get("PR_ID", ""), prep_s={}, duration_s=0.0,
                              earlier=earlier)
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
