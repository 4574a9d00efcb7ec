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
    preflight = _preflight_suite(root, summary.get("mooncake_preflight"))
    for suite in [*suites.values(), *preflight, root]:
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


def _preflight_suite(root: ET.Element, found: dict | None) -> list[ET.Element]:
    """The Mooncake pre-flight as its own suite with one testcase, `mooncake_preflight`: a
    failure says what failed, a skip why; its figures are the suite's properties (one per
    size and direction, so dashboards can plot them) and lines of its system-out."""
    if not found:
        return []
    suite = ET.SubElement(root, "testsuite", name="mooncake_preflight")
    properties = ET.SubElement(suite, "properties")
    lines = []
    for key in ("build", "protocol", "memory", "route"):
        ET.SubElement(properties, "property", name=key, value=str(found.get(key) or ""))
        if found.get(key):
            lines.append(f"{key}: {found[key]}")
    for row in found.get("sizes") or []:
        for verb in ("write", "read"):
            for unit in ("gbps", "ms"):
                ET.SubElement(properties, "property", name=f"{verb}_{unit}_{row['bytes']}",
                              value=str(row[f"{verb}_{unit}"]))
        lines.append(f"{row['bytes']} bytes: write {row['write_gbps']} GB/s {row['write_ms']} "
                     f"ms, read {row['read_gbps']} GB/s {row['read_ms']} ms")
    store = found.get("store") or {}
    for key in ("put_ms", "get_ms"):
        if key in store:
            ET.SubElement(properties, "property", name=f"store_{key}", value=str(store[key]))
            lines.append(f"store {key}: {store[key]}")
    case = ET.SubElement(suite, "testcase", name="mooncake_preflight", classname="mooncake",
                         time=f"{float(found.get('duration_s') or 0):.3f}")
    if found.get("skipped"):
        ET.SubElement(case, "skipped", message=found["skipped"])
    elif not found.get("ok"):
        error = found.get("error") or "failed"
        ET.SubElement(case, "failure", message=error.splitlines()[0], type="preflight").text = error
    if lines:
        ET.SubElement(case, "system-out").text = "\n".join(lines)
    return [suite]


def _count(element: ET.Element) -> None:
    cases = element.iter("testcase")
    times = failures = tests = skipped = 0.0
    for case in cases:
        tests += 1
        failures += case.find("failure") is not None
        skipped += case.find("skipped") is not None
        times += float(case.attrib["time"])  # every testcase is written with its time
    element.set("tests", str(int(tests)))
    element.set("failures", str(int(failures)))
    element.set("errors", "0")
    if element.tag == "testsuite":  # the schema has no `skipped` on <testsuites>
        element.set("skipped", str(int(skipped)))
    element.set("time", f"{times:.3f}")


def _clean(text: str) -> str:
    """The serialised tree, less what XML cannot hold (ElementTree writes it as it is)."""
    return _NOT_XML.sub("\N{REPLACEMENT CHARACTER}", text)
