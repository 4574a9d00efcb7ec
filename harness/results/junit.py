"""`run/logs/junit.xml` for dashboards, made from `run_summary.json` alone (so a merged tree
gets one too).

A testsuite per group (SGLANG, VLLM), a testcase per case with its time; a failed case has a
`<failure>` whose message is the reason and whose text adds the failed step, host and server.
The file validates against the JUnit schema strict consumers check (Jenkins' xUnit plugin's
junit-10.xsd, the one pytest tests its own output against): a testcase has no properties and no
timestamp there, so when it started, where it failed and each model's outcome are lines of its
system-out, with its log tail; the suite's properties and timestamp say the rest.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.layout import RUN_SUMMARY_FILE
from harness.files import write_text_atomic
from harness.results.status import entry_passed

JUNIT_FILE = "junit.xml"
# Characters XML 1.0 cannot hold (control characters other than tab and newlines), which engine
# logs do contain (ANSI colours, progress bars' carriage returns are fine but NUL is not).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def write_junit(logs: Path) -> Path:
    """Write `logs/junit.xml` from `logs/run_summary.json`, atomically; its path."""
    summary = json.loads((logs / RUN_SUMMARY_FILE).read_text())
    root = ET.Element("testsuites", name="mooncake-e2e")
    suites: dict[str, ET.Element] = {}
    for entry in summary["cases"]:
        group = entry.get("group") or summary.get("group") or "cases"
        if group not in suites:
            suites[group] = ET.SubElement(root, "testsuite", name=group)
        _testcase(suites[group], group, entry)
    for suite in [*suites.values(), root]:
        _count(suite)
    for suite in suites.values():
        properties = ET.Element("properties")
        for name in ("group", "pr_id", "finished"):
            ET.SubElement(properties, "property", name=name, value=str(summary.get(name) or ""))
        suite.insert(0, properties)
    ET.indent(root)
    path = logs / JUNIT_FILE
    write_text_atomic(path, _clean(ET.tostring(root, encoding="unicode",
                                               xml_declaration=True)) + "\n")
    return path


def _testcase(suite: ET.Element, group: str, entry: dict) -> None:
    case = ET.SubElement(suite, "testcase", name=entry["case"], classname=group,
                         time=f"{float(entry.get('duration_s') or 0):.3f}")
    models = entry.get("models") or {}
    facts = [f"{k}: {entry[k]}" for k in ("started", "outcome", "step", "host", "server", "tree")
             if entry.get(k)]
    model_lines = [f"{m}: {outcome}" for m, outcome in models.items()]
    if not entry_passed(entry):
        reason = entry.get("reason") or "failed"
        where = [f"{k}: {entry[k]}" for k in ("step", "host", "server") if entry.get(k)]
        failure = ET.SubElement(case, "failure", message=reason.splitlines()[0],
                                type=entry.get("step") or "Fail")
        failure.text = "\n".join([reason, *where, *model_lines])
    out = facts + model_lines + ([f"log tail:\n{entry['log_tail']}"]
                                 if entry.get("log_tail") else [])
    if out:
        ET.SubElement(case, "system-out").text = "\n".join(out)


def _count(element: ET.Element) -> None:
    cases = element.iter("testcase")
    times = failures = tests = 0.0
    for case in cases:
        tests += 1
        failures += case.find("failure") is not None
        times += float(case.attrib["time"])  # every testcase is written with its time
    element.set("tests", str(int(tests)))
    element.set("failures", str(int(failures)))
    element.set("errors", "0")
    if element.tag == "testsuite":  # the schema has no `skipped` on <testsuites>
        element.set("skipped", "0")
    element.set("time", f"{times:.3f}")


def _clean(text: str) -> str:
    """The serialised tree, less what XML cannot hold (ElementTree writes it as it is)."""
    return _NOT_XML.sub("\N{REPLACEMENT CHARACTER}", text)
