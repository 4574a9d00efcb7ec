"""`python -m harness merge DIR... [--out OUT]`: one run tree from the trees of several host pairs.

Each host pair (a T-One job or a CI-matrix job) runs a subset with `nox -s single -- <cases>` and
keeps its `run/logs`. The merge copies every tree's case dirs into OUT, keeps each tree's
`harness.log` as `harness-<n>.log` (n: the tree's place on the command line, from 1), appends
their `timeline.jsonl` files into one, and writes one `run_summary.json`, `junit.xml` and
`report.html` for all of them. A case found in two trees is an error naming both: nothing is
chosen silently, and nothing is written.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import SettingsError
from harness.groups import GROUPS, run_order
from harness.layout import RUN_SUMMARY_FILE
from harness.results.report import write_report
from harness.files import write_text_atomic
from harness.results.status import all_passed, entry_passed
from harness.results.summary import read_summary_file, write_summary
from harness.settings import PROJECT_ROOT

EXIT_BAD_INPUT = 2
TIMELINE_FILE = "timeline.jsonl"


@dataclass
class Tree:
    """One host pair's `run/logs` (n: its place on the command line, from 1)."""
    n: int
    given: Path
    logs: Path
    summary: dict


def merge_command(dirs: list[str], out: str | None, *, default_out: Path) -> int:
    """The CLI's merge: 0 when every merged case passed, 1 when some did not, 2 when nothing
    could be merged (a bad dir, a case in two trees, an OUT in the way): one line on stderr."""
    try:
        logs = merge_trees([Path(d) for d in dirs], Path(out) if out else default_out)
    except SettingsError as exc:
        print(f"error: merge: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    summary = json.loads((logs / RUN_SUMMARY_FILE).read_text())
    cases = summary["cases"]
    passed = sum(entry_passed(c) for c in cases)
    print(f"merged {len(dirs)} run trees into {logs}: {passed} of {len(cases)} cases passed")
    return 0 if summary["passed"] else 1


def merge_trees(dirs: list[Path], out: Path) -> Path:
    """Merge the run trees `dirs` into `out` (which must not exist or be empty); `out`."""
    trees = [_read_tree(n, d) for n, d in enumerate(dirs, start=1)]
    _refuse_duplicates(trees)
    _check_out(out, trees)
    out.mkdir(parents=True, exist_ok=True)
    for tree in trees:
        for entry in tree.summary["cases"]:
            source = tree.logs / entry["case"]
            if source.is_dir():
                shutil.copytree(source, out / entry["case"], symlinks=True)
        if (tree.logs / "harness.log").is_file():
            shutil.copy2(tree.logs / "harness.log", out / f"harness-{tree.n}.log")
    _join_timelines(trees, out)
    write_summary(out, merged_summary(trees))
    write_report(out)
    return out


def _read_tree(n: int, given: Path) -> Tree:
    """A run/logs dir; a dir holding run/logs (an artifact of the whole project) is taken too."""
    if not given.is_dir():
        raise SettingsError(f"{given} is not a directory")
    logs = given
    if not (logs / RUN_SUMMARY_FILE).exists() and (given / "run" / "logs").is_dir():
        logs = given / "run" / "logs"
    if not (logs / RUN_SUMMARY_FILE).exists():
        raise SettingsError(f"{given} is not a run tree: no {RUN_SUMMARY_FILE} in it "
                            "(give the run/logs dir of each host pair)")
    return Tree(n, given, logs.resolve(), read_summary_file(logs / RUN_SUMMARY_FILE))


def _refuse_duplicates(trees: list[Tree]) -> None:
    seen: dict[str, Tree] = {}
    for tree in trees:
        for entry in tree.summary["cases"]:
            first = seen.setdefault(entry["case"], tree)
            if first is not tree:
                raise SettingsError(f"case {entry['case']} is in two trees, {first.given} and "
                                    f"{tree.given}: leave one of them out")


def _check_out(out: Path, trees: list[Tree]) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SettingsError(f"the output {out} exists and is not an empty directory "
                            "(give --out a new path, or move it away)")
    resolved = out.resolve()
    for tree in trees:
        if resolved == tree.logs or tree.logs in resolved.parents:
            raise SettingsError(f"the output {out} lies in the tree {tree.logs}")


def merged_summary(trees: list[Tree]) -> dict:
    """One summary: every tree's cases in run order (each tagged with its tree), the trees'
    own labels, durations and prep times under `trees`."""
    cases = [{**entry, "tree": str(tree.logs)} for tree in trees
             for entry in tree.summary["cases"]]
    cases.sort(key=_run_order())
    finished = [t.summary.get("finished") for t in trees]
    pr_ids = sorted({str(t.summary.get("pr_id") or "") for t in trees} - {""})
    return {
        "group": " + ".join(str(t.summary.get("group") or "") for t in trees),
        "pr_id": ",".join(pr_ids),
        "finished": None if None in finished else max(finished),
        "duration_s": max(float(t.summary.get("duration_s") or 0) for t in trees),
        "prep_s": {f"{t.n}:{step}": s for t in trees
                   for step, s in (t.summary.get("prep_s") or {}).items()},
        "passed": all_passed(cases),
        "cases": cases,
        "trees": [{"n": t.n, "logs": str(t.logs), "harness_log": f"harness-{t.n}.log",
                   **{k: t.summary.get(k) for k in ("group", "pr_id", "finished",
                                                     "duration_s")}} for t in trees],
    }


def _run_order():
    """Sort key: group order, then the case's order in its group; unknown cases last."""
    from harness.results.verdict import declared_cases
    rank = {name: run_order(group, order)
            for name, group, order in declared_cases(PROJECT_ROOT / "cases")}
    return lambda entry: rank.get(entry["case"], (len(GROUPS) + 1, 0))


def _join_timelines(trees: list[Tree], out: Path) -> None:
    """Concatenate the trees' timeline.jsonl files (one JSON object a line); none: no file."""
    parts = [(t.logs / TIMELINE_FILE).read_text() for t in trees
             if (t.logs / TIMELINE_FILE).is_file()]
    if parts:
        write_text_atomic(out / TIMELINE_FILE, "".join(
            p if p.endswith("\n") or not p else p + "\n" for p in parts))
