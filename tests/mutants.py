"""Mutation testing of the code that decides a verdict: `nox -s mutants` (not part of CI).

mutmut 3 plants one small bug at a time (a flipped comparison, a dropped argument, a changed
constant) in the functions named in SCOPE and runs the unit tests that reach that function; a
mutant the tests do not notice "survived" and marks a missing test (or an equivalent mutant,
which no test can tell apart). This prints, per module and overall, the share of mutants killed,
and every survivor with its one-line change.

Everything runs in a snapshot of the project under .nox/mutants/ (other people keep editing the
working tree), at nice 10. The scope is by module path and function name, never by line number,
so it survives edits; a pattern that matches no function any more is reported, not ignored.

    python tests/mutants.py [--fail-under PERCENT] [--work DIR] [--only PATH ...]

`--only harness/hosts/ssh_config.py` mutates that SCOPE entry alone (a quick check of one
module's tests; the score of the whole scope needs the full run).
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PARTS = ("harness", "cases", "payloads", "sim", "scripts", "tests", "pyproject.toml",
                 "README.md", "noxfile.py", "tasks.py")
GOAL_PERCENT = 95.0

# What decides a verdict, by module and function ("name", "Class.method", globs allowed).
SCOPE: dict[str, tuple[str, ...]] = {
    # the verdict files and the run summary
    "harness/results/outcome.py": ("*",),
    # readiness: the rules, the wait on them, and the one wait loop they run in
    "harness/servers/server.py": ("LogLines.*", "HttpOk.*", "AnyOf.*", "OwnsPort.*", "log_line",
                           "Server.wait_ready", "Server._meet_rules", "Server._wait*",
                           "Server._check*",
                           "Server.follow_log", "sglang_ready", "app_startup_ready",
                           "router_ready", "start_all", "wait_all"),
    "harness/waiting.py": ("wait_until", "fan_out"),
    # the token: where it comes from, and that it is masked wherever it could be written
    "harness/prep/wheel.py": ("redact", "resolve_token", "gh_hostname", "gh_cli_token"),
    "harness/redaction.py": ("*",),
    # settings validation
    "harness/settings.py": ("Settings.from_env", "Settings.validate", "_parse", "_require_*"),
    # the reset's kill scope: which processes a reset may kill
    "harness/prep/reset.py": ("recorded_groups", "parse_facts", "is_run_process", "run_processes",
                         "kill_scope", "_kill_owned"),
    "harness/prep/gpu.py": ("cgroup_processes", "kill_processes", "_read"),
    # the verdict's words and the one "passed" rule; the run summary and JUnit made from it
    "harness/results/status.py": ("*",),
    "harness/results/summary.py": ("*",),
    "harness/results/junit.py": ("*",),
    # the answer checks of the cases, and which vLLM proxy a version runs
    "harness/run/answers.py": ("require_*", "chat_content"),
    "harness/vllm_version.py": ("*",),
    # the route to the remote host, and the command words every host builds
    "harness/hosts/ssh_config.py": ("resolve", "_jumps", "_port", "_identity_files"),
    "harness/hosts/argv.py": ("*",),
    # which cases a group runs, in what order; a case's declaration
    "harness/groups.py": ("*",),
    "harness/run/cases.py": ("Case.*", "group_cases", "resolve"),
}

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
NAME = re.compile(r"^\s+(?P<name>[\w.ǁ]+__mutmut_\d+): (?P<status>.+)$")


def module_name(path: str) -> str:
    return path[:-3].replace("/", ".")


def mutant_globs(path: str, patterns: tuple[str, ...]) -> list[str]:
    """mutmut's mutant names: `<module>.x_<function>__mutmut_<n>`, methods as
    `<module>.xǁ<Class>ǁ<method>__mutmut_<n>`."""
    module = module_name(path)
    globs = []
    for pattern in patterns:
        if pattern == "*":
            globs.append(f"{module}.*")
        elif "." in pattern:
            cls, _, method = pattern.partition(".")
            globs.append(f"{module}.xǁ{cls}ǁ{method}__mutmut_*")
        else:
            globs.append(f"{module}.x_{pattern}__mutmut_*")
    return globs


def function_of(name: str) -> str:
    """`harness.servers.server.xǁServerǁ_wait__mutmut_3` -> `Server._wait`."""
    tail = re.sub(r"__mutmut_\d+$", "", name.rsplit(".x", 1)[1])
    return tail.strip("ǁ").replace("ǁ", ".") if tail.startswith("ǁ") else tail[1:]


def snapshot(work: Path) -> Path:
    """A copy of the parts the unit tests need, taken once, before anything runs."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for part in PROJECT_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, work / part, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", ".pytest_cache"))
        else:
            shutil.copy2(src, work / part)
    return work


def configure(work: Path) -> None:
    """Mutate only SCOPE's files: `only_mutate` into the snapshot's [tool.mutmut] table."""
    pyproject = work / "pyproject.toml"
    text = pyproject.read_text()
    if "\n[tool.mutmut]\n" not in text:
        raise SystemExit("mutants: pyproject.toml has no [tool.mutmut] table")
    files = ", ".join(f'"{path}"' for path in SCOPE)
    pyproject.write_text(text.replace("\n[tool.mutmut]\n",
                                      f"\n[tool.mutmut]\nonly_mutate = [{files}]\n", 1))


def mutmut(work: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, text=True,
                          stdout=subprocess.PIPE if capture else None, check=False)


def statuses(work: Path) -> dict[str, str]:
    done = mutmut(work, "results", "--all", "true", capture=True)
    found = {}
    for line in done.stdout.splitlines():
        match = NAME.match(line)
        if match:
            found[match["name"]] = match["status"]
    return found


def in_scope(name: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def changed_line(work: Path, name: str) -> str:
    """The mutant's change as `- old` / `+ new`, from `mutmut show`."""
    diff = mutmut(work, "show", name, capture=True).stdout.splitlines()
    minus = [line[1:].strip() for line in diff if line.startswith("-") and
             not line.startswith("---")]
    plus = [line[1:].strip() for line in diff if line.startswith("+") and
            not line.startswith("+++")]
    return f"- {' | '.join(minus)[:150]}\n        + {' | '.join(plus)[:150]}"


def report(work: Path, found: dict[str, str]) -> float:
    rows, survivors, unmatched = [], [], []
    total = Counter()
    for path, patterns in SCOPE.items():
        globs = mutant_globs(path, patterns)
        mine = {n: s for n, s in found.items() if in_scope(n, globs)}
        functions = {function_of(n) for n in mine}
        for pattern in patterns:
            if pattern != "*" and not any(fnmatch.fnmatchcase(f, pattern) for f in functions):
                unmatched.append(f"{path}: {pattern}")
        counts = Counter("killed" if s in KILLED else s for s in mine.values())
        total.update(counts)
        killed = counts["killed"]
        rows.append((path, len(mine), killed, counts["survived"], counts["no tests"]))
        survivors += [(n, s) for n, s in sorted(mine.items()) if s not in KILLED]
    print("\nmodule                   mutants  killed  survived  no-tests   killed %")
    for path, count, killed, survived, untested in rows:
        share = 100.0 * killed / count if count else 0.0
        print(f"{path:<24} {count:>7} {killed:>7} {survived:>9} {untested:>9} {share:>9.1f}")
    count = sum(total.values())
    share = 100.0 * total["killed"] / count if count else 0.0
    print(f"{'all':<24} {count:>7} {total['killed']:>7} {total['survived']:>9} "
          f"{total['no tests']:>9} {share:>9.1f}")
    if unmatched:
        print("\npatterns in SCOPE that match no function any more (renamed? moved?):")
        print("\n".join(f"  {u}" for u in unmatched))
    if survivors:
        print(f"\n{len(survivors)} mutants not killed (`mutmut show NAME` in {work} for the "
              "diff):")
        for name, status in survivors:
            print(f"  [{status}] {name}\n        {changed_line(work, name)}")
    print(f"\nmutants killed: {total['killed']} of {count} = {share:.1f}% "
          f"(goal >= {GOAL_PERCENT:.0f}%)")
    return share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".nox" / "mutants" / "work",
                        help="where the snapshot and mutmut's files go (emptied first)")
    parser.add_argument("--fail-under", type=float, default=0.0,
                        help="exit 1 when the share killed is below this percentage")
    parser.add_argument("--only", nargs="+", metavar="PATH", choices=sorted(SCOPE),
                        help="mutate only these SCOPE entries")
    args = parser.parse_args(argv)
    if args.only:
        for path in set(SCOPE) - set(args.only):
            del SCOPE[path]
    os.nice(10)  # the machine is shared: mutation runs yield to everyone else
    started = time.monotonic()
    work = snapshot(args.work)
    configure(work)
    globs = [g for path, patterns in SCOPE.items() for g in mutant_globs(path, patterns)]
    print(f"mutants: snapshot in {work}; mutating {', '.join(SCOPE)}", flush=True)
    done = mutmut(work, "run", *globs)
    if done.returncode != 0:
        print(f"mutants: mutmut run exited {done.returncode}", file=sys.stderr)
        return 2
    share = report(work, statuses(work))
    print(f"mutants: {time.monotonic() - started:.0f}s")
    return 1 if share < args.fail_under else 0


if __name__ == "__main__":
    sys.exit(main())
