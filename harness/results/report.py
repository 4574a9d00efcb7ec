"""run/logs/report.html: one self-contained page of a run, built only from the files in run/logs.

It reads `run_summary.json`, `<case>/case_summary.json`, `timeline.jsonl` (results.timeline) and
the list of files, so it can be rebuilt for a tree copied elsewhere or merged from several host
pairs: `write_report(logs_dir)`. The page has no script, no external CSS, fonts or images, and
every link is relative to run/logs, so it works from T-One's log browser, a laptop or file://.

What a person sees, top to bottom: the verdict (failed cases named, with their reasons), the
cases (status, duration, where it failed, per-model outcome, log tail), the timeline per host,
every log file, the settings (non-secret ones only; remembered secrets masked once more).
"""
from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path
from urllib.parse import quote

from harness import redaction
from harness.files import write_text_atomic
from harness.text import first_line
from harness.layout import CASE_SUMMARY_FILE, REPORT_FILE, RUN_SUMMARY_FILE, TIMELINE_FILE
from harness.results.report_timeline import Axis, axis_svg, case_bands, clock, host_svg
from harness.results.status import entry_passed
from harness.results.timeline import read_spans

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em 2em;color:#222}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.2em;margin:1.6em 0 .5em}
.verdict{padding:.6em 1em;border-radius:6px;font-size:1.15em;margin:.5em 0}
.verdict.fail{background:#fde2e1;border:1px solid #e45756}
.verdict.pass{background:#e3f4e1;border:1px solid #54a24b}
.verdict ul{margin:.3em 0 0;font-size:.85em}.meta{color:#555}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#f4f4f4}
tr.fail td:first-child{border-left:4px solid #e45756}
tr.pass td:first-child{border-left:4px solid #54a24b}
.status{font-weight:bold}.st-Pass{color:#2e7d32}.st-Fail{color:#c62828}
pre{background:#f7f7f7;padding:6px;overflow:auto;max-height:24em;font-size:12px}
.reason{white-space:pre-wrap;word-break:break-word}td.num{text-align:right;white-space:nowrap}
svg text{font:10px sans-serif;fill:#111;pointer-events:none}svg .ticklabel{fill:#555}
.host h3{margin:.6em 0 .2em;font-size:1em}.band.b0{fill:#f6f6f6}.band.b1{fill:#fff}
.grid,.tick{stroke:#ddd}.caseband rect{fill:#eee;stroke:#fff}.c-fail rect{fill:#f8c9c6}
.c-pass rect{fill:#cfe8cb}.bar{fill:#9aa5b1}.k-prep .bar{fill:#b8c2cc}.k-reset .bar{fill:#d6b28c}
.k-drain .bar{fill:#e8cf6a}.k-server .bar{fill:#a9c4e4}.k-server .up{fill:#4c78a8}
.k-request .bar{fill:#54a24b}.k-payload .bar{fill:#72b7b2}
.s-failed .bar,.s-failed .up{fill:#e45756}
.s-cancelled .bar{fill:#ccc;stroke:#888;stroke-dasharray:3}
.s-running .bar{stroke:#000;stroke-dasharray:2}
.legend span{display:inline-block;margin-right:.8em;font-size:12px}
.legend i{display:inline-block;width:1em;height:1em;margin-right:.3em;vertical-align:-.15em;
border-radius:2px}
.files ul{margin:.2em 0 .6em;columns:2}.files li{overflow-wrap:anywhere}
.skipped{color:#666;font-size:12px}
"""
LEGEND = (("prep", "#b8c2cc", "prep step"), ("reset", "#d6b28c", "reset"),
          ("drain", "#e8cf6a", "GPU drain wait"), ("server", "#a9c4e4", "server starting"),
          ("server up", "#4c78a8", "server ready \u2192 stop"),
          ("request", "#54a24b", "request"), ("payload", "#72b7b2", "payload"),
          ("failed", "#e45756", "failed"), ("cancelled", "#ccc", "cancelled"))


def write_report(logs: Path) -> Path:
    """Build `logs/report.html` from the files in `logs`; its path."""
    logs = Path(logs)
    page = redaction.scrub(build_report(logs))
    path = logs / REPORT_FILE
    write_text_atomic(path, page)
    return path


def build_report(logs: Path) -> str:
    summary = _load_json(logs / RUN_SUMMARY_FILE)
    cases = _cases(logs, summary)
    spans = read_spans(logs / TIMELINE_FILE)
    files = _log_files(logs)
    link = {name: quote(name) for name in files}
    title = f"Mooncake E2E run: {summary.get('group') or 'run'}"
    body = [f"<h1>{escape(title)}</h1>", _verdict(summary, cases),
            "<h2>Cases</h2>", _cases_table(cases, spans, link),
            "<h2>Mooncake pre-flight</h2>", _preflight(summary.get("mooncake_preflight"), link),
            "<h2>Timeline</h2>", _timeline(spans, cases, link),
            "<h2>Log files</h2>", _files(files, link),
            "<h2>Settings</h2>", _settings(summary.get("settings"))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


# --- reading the tree --------------------------------------------------------------------------
def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cases(logs: Path, summary: dict) -> list[dict]:
    """The run summary's cases; without a run summary, every case_summary.json in the tree."""
    listed = [c for c in summary.get("cases", []) if isinstance(c, dict) and c.get("case")]
    if listed:
        return listed
    found = [_load_json(p) for p in sorted(logs.glob(f"*/{CASE_SUMMARY_FILE}"))]
    return [c for c in found if c.get("case")]


def _log_files(logs: Path) -> list[str]:
    """Every file under `logs` (relative POSIX paths), but the report and temporary files."""
    out = []
    for path in sorted(logs.rglob("*")):
        rel = path.relative_to(logs).as_posix()
        if path.is_file() and rel != REPORT_FILE and not path.name.startswith("."):
            out.append(rel)
    return out


# --- the sections ------------------------------------------------------------------------------
def _verdict(summary: dict, cases: list[dict]) -> str:
    failed = [c for c in cases if not entry_passed(c)]
    ok = bool(cases) and not failed
    head = (f"PASSED: all {len(cases)} cases passed" if ok else
            f"FAILED: {len(failed)} of {len(cases)} cases failed" if cases else
            "FAILED: no case results")
    items = "".join(f"<li><b>{escape(c['case'])}</b>: {escape(first_line(c.get('reason')))}"
                    "</li>" for c in failed)
    meta = [f"finished {summary['finished']}" if summary.get("finished") else "",
            f"took {summary['duration_s']:.1f}s" if _is_num(summary.get("duration_s")) else "",
            f"PR {summary['pr_id']}" if summary.get("pr_id") else ""]
    return (f'<div class="verdict {"pass" if ok else "fail"}" id="verdict">{escape(head)}'
            f'{f"<ul>{items}</ul>" if items else ""}</div>'
            f'<div class="meta">{escape(" · ".join(m for m in meta if m))}</div>')


def _cases_table(cases: list[dict], spans: list[dict], link: dict[str, str]) -> str:
    rows = ["<table id=\"cases\"><tr><th>case</th><th>status</th><th>duration</th>"
            "<th>failed at</th><th>reason</th><th>models</th><th>logs</th></tr>"]
    for case in cases:
        name, status = str(case["case"]), str(case.get("status", ""))
        where = " / ".join(f"{k} {case[k]}" for k in ("step", "host", "server") if case.get(k))
        server_log = _server_log(case, spans, link)
        if server_log:
            where += f' (<a href="{escape(server_log[1])}">{escape(server_log[0])}</a>)'
        reason = escape(_without_where(str(case.get("reason") or "")))  # "failed at" says it
        if case.get("log_tail"):
            reason += ("<details><summary>log tail</summary>"
                       f"<pre>{escape(str(case['log_tail']))}</pre></details>")
        if case.get("cleanup_errors"):
            reason += "<br>cleanup: " + escape("; ".join(map(str, case["cleanup_errors"])))
        models = "".join(f'<li>{escape(str(m))}: <span class="st-{_st(o)}" '
                         f'title="{escape(str(o))}">{escape(_model_outcome(o))}</span></li>'
                         for m, o in (case.get("models") or {}).items())
        logs = (f'<a href="#logs-{quote(name)}">logs</a>'
                if any(n.startswith(name + "/") for n in link) else "")
        duration = f"{case['duration_s']:.1f}s" if _is_num(case.get("duration_s")) else ""
        rows.append(
            f'<tr class="case {_st(status).lower()}" data-case="{escape(name)}" '
            f'data-status="{escape(status)}"><td>{escape(name)}</td>'
            f'<td class="status st-{_st(status)}">{escape(status)}</td>'
            f'<td class="num">{duration}</td><td>{where}</td>'
            f'<td class="reason">{reason}</td><td><ul>{models}</ul></td>'
            f'<td>{logs}</td></tr>')
    rows.append("</table>")
    return "".join(rows)


def _server_log(case: dict, spans: list[dict], link: dict[str, str]) -> tuple[str, str] | None:
    """The log of the server the case failed at, when the timeline knows it."""
    if not case.get("server"):
        return None
    for span in spans:
        if (span.get("case") == case["case"] and span.get("name") == case["server"]
                and span.get("host") == case.get("host") and span.get("log") in link):
            return Path(span["log"]).name, link[span["log"]]
    return None


def _timeline(spans: list[dict], cases: list[dict], link: dict[str, str]) -> str:
    if not spans:
        return "<p>No timeline was recorded (no timeline.jsonl).</p>"
    shown = [s for s in spans if s.get("outcome") != "skipped"]
    axis = Axis.around(shown or spans)
    bands = case_bands(shown)
    status = {str(c["case"]): str(c.get("status", "")) for c in cases}
    # a swatch beside each label, so the text keeps the page's own contrast
    legend = "".join(f'<span><i style="background:{color}"></i>{escape(label)}</span>'
                     for _, color, label in LEGEND)
    out = [f'<div class="legend">{legend}</div>',
           f'<p class="meta">from {clock(axis.t0)} to {clock(axis.t1)} UTC '
           f'({axis.t1 - axis.t0:.1f}s); hover a bar for its exact times, click it for its '
           "log</p>", axis_svg(axis, bands, status)]
    runs = sorted({str(s.get("run", "")) for s in spans})
    for run in runs:
        for host in sorted({str(s.get("host", "")) for s in spans if s.get("run", "") == run},
                           key=lambda h: (h != "local", h)):
            mine = [s for s in shown if s.get("run", "") == run and s.get("host") == host]
            skipped = [s for s in spans if s.get("run", "") == run and s.get("host") == host
                       and s.get("outcome") == "skipped"]
            label = host + (f" (run {run})" if len(runs) > 1 else "")
            note = "".join(f"{escape(str(s.get('name')))} ({escape(str(s.get('detail', '')))}); "
                           for s in skipped)
            out.append(f'<section class="host" data-host="{escape(host)}">'
                       f"<h3>{escape(label)}</h3>{host_svg(mine, axis, bands, link, label)}"
                       + (f'<div class="skipped">skipped: {note}</div>' if note else "")
                       + "</section>")
    return "".join(out)


def _files(files: list[str], link: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {}
    for name in files:
        top = name.split("/", 1)[0] if "/" in name else ""
        groups.setdefault(top, []).append(name)
    out = ['<div class="files">']
    for top, names in sorted(groups.items()):
        out.append(f'<h3 id="logs-{quote(top)}">{escape(top or "run")}</h3><ul>')
        out += [f'<li><a href="{escape(link[n])}">{escape(n)}</a></li>' for n in names]
        out.append("</ul>")
    out.append("</div>")
    return "".join(out)


def _preflight(found: object, link: dict[str, str]) -> str:
    """What the pre-flight found: build, protocol, memory and route, then a row per size;
    or why it was skipped, or what failed."""
    if not isinstance(found, dict) or not found:
        return "<p>No Mooncake pre-flight in this run.</p>"
    logs = [f'<a href="{escape(link[n])}">{escape(n.rsplit("/", 1)[-1])}</a>'
            for n in link if n.startswith("mooncake_preflight/")]
    facts = ", ".join(escape(str(found[k])) for k in ("build", "protocol", "memory", "route")
                      if found.get(k))
    head = f"<p>{facts}" + (f" &middot; logs: {' '.join(logs)}" if logs else "") + "</p>"
    if found.get("skipped"):
        return head + f"<p>Skipped: {escape(str(found['skipped']))}</p>"
    if not found.get("ok"):
        return head + f'<p class="verdict fail">FAILED: {escape(str(found.get("error")))}</p>'
    rows = "".join(
        f"<tr><td>{row['bytes']:,} B</td><td>{row['write_gbps']}</td><td>{row['write_ms']}</td>"
        f"<td>{row['read_gbps']}</td><td>{row['read_ms']}</td></tr>"
        for row in found.get("sizes") or [] if isinstance(row, dict))
    store = found.get("store") or {}
    tail = (f"<p>Store ({store.get('bytes', 0):,} B through {escape(str(store.get('master')))}): "
            f"put {store.get('put_ms')} ms there, get {store.get('get_ms')} ms here</p>"
            if store else "")
    return (head + '<table id="preflight"><tr><th>size</th><th>write GB/s</th><th>write ms</th>'
            f"<th>read GB/s</th><th>read ms</th></tr>{rows}</table>" + tail)


def _settings(settings: object) -> str:
    if not isinstance(settings, dict) or not settings:
        return "<p>The run summary does not record the settings.</p>"
    rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(redaction.scrub(str(v)))}</td></tr>"
                   for k, v in sorted(settings.items())
                   if k not in redaction.SECRET_ENV_NAMES)
    return f'<table id="settings"><tr><th>setting</th><th>value</th></tr>{rows}</table>'


def _model_outcome(outcome: object) -> str:
    """`Fail: [step ..., host ...] message` shown as `Fail: message` (the case's row already
    says where); the whole text is the hover text."""
    text = first_line(outcome)
    verdict, sep, rest = text.partition(": ")
    shown = f"{verdict}{sep}{_without_where(rest)}"
    return shown if len(shown) <= 160 else shown[:159] + "\u2026"


def _without_where(text: str) -> str:
    """A reason without its leading `[step ..., host ..., server ...]`."""
    return re.sub(r"^\[(step|host|server) [^\]]*\]\s*", "", text)


def _st(status: object) -> str:
    text = str(status)
    return "Pass" if text == "Pass" else "Fail"


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
