"""harness.results.report: the HTML page built from a small run tree on tmp_path."""
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

from harness import redaction
from harness.layout import Layout
from harness.results.report import write_report
from harness.results.outcome import CaseResult, write_case_result, write_run_summary
from harness.results.status import Outcome
from harness.settings import Settings

TOKEN = "ghp_unitReportToken987654321"
EVIL = "<script>alert('x')</script>"


class Page(HTMLParser):
    """The tags, links and ids of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if attrs.get("href"):
            self.links.append(attrs["href"])
        if attrs.get("id"):
            self.ids.add(attrs["id"])

    def handle_data(self, data):
        self.text.append(data)


def span(host, kind, name, start, end, case="", ready=None, outcome="ok", log=None, detail=""):
    return {"run": "r1", "host": host, "case": case, "kind": kind, "name": name, "start": start,
            "ready": ready, "end": end, "outcome": outcome, "detail": detail, "log": log}


def small_tree(root: Path, monkeypatch) -> Path:
    monkeypatch.setattr(redaction, "_known", set())
    redaction.remember(TOKEN)
    layout = Layout.at(root)
    logs = Path(layout.logs)
    good = CaseResult("case_ok", Outcome.PASSED, duration_s=2.5, models={"Org/M": "Pass"})
    bad = CaseResult("case_bad", reason=f"decode exited {EVIL}", step="M: start", host="remote",
                     server="decode", duration_s=1.25, log_tail=f"Traceback {EVIL}\n{TOKEN}",
                     models={"Org/M": f"Fail: [step M: start] decode exited {EVIL}"})
    for result in (good, bad):
        write_case_result(layout, result)
    settings = Settings.from_env({"GITHUB_TOKEN": TOKEN, "PR_ID": "42"})
    write_run_summary(layout, [good, bad], group="SGLANG", pr_id="42", prep_s={},
                      duration_s=9.0, settings=settings.env_items())
    (logs / "case_bad" / "Org__M").mkdir(parents=True)
    (logs / "case_bad" / "Org__M" / "sglang server remote.log").write_text("crash\n")
    (logs / "case_ok" / "case_ok.log").write_text("ok\n")
    (logs / "harness.log").write_text("log\n")
    spans = [span("local", "prep", "run-dir", 100.0, 100.1),
             span("local", "prep", "pull-image", 100.1, 100.1, outcome="skipped",
                  detail="HARNESS_RUNTIME=host"),
             span("local", "payload", "payload", 101.0, 103.5, case="case_ok",
                  log="case_ok/case_ok.log"),
             span("remote", "server", "decode", 104.0, 105.0, case="case_bad",
                  outcome="failed", detail=EVIL, log="case_bad/Org__M/sglang server remote.log"),
             span("local", "server", "prefill", 104.0, 105.2, case="case_bad", ready=104.8,
                  outcome="ok", log="case_bad/Org__M/gone.log")]
    (logs / "timeline.jsonl").write_text("".join(json.dumps(s) + "\n" for s in spans))
    return logs


def test_the_page_says_what_failed_first_and_escapes_what_runs_wrote(tmp_path, monkeypatch):
    logs = small_tree(tmp_path, monkeypatch)
    html = write_report(logs).read_text()
    page = Page()
    page.feed(html)
    assert "script" not in page.tags and "<script" not in html  # nothing runs, nothing injected
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    text = "".join(page.text)
    assert text.index("FAILED: 1 of 2 cases failed") < text.index("case_ok")
    assert re.search(r'data-case="case_bad" data-status="Fail"', html)
    assert re.search(r'data-case="case_ok" data-status="Pass"', html)
    assert "Fail: decode exited" in text  # the per-model outcome, without the repeated [where]


def test_no_secret_on_the_page(tmp_path, monkeypatch):
    logs = small_tree(tmp_path, monkeypatch)
    html = write_report(logs).read_text()
    assert TOKEN not in html and "GITHUB_TOKEN" not in html
    assert "PR_ID" in html  # the settings are there, less the secret


def test_links_are_relative_and_resolve_in_a_copy(tmp_path, monkeypatch):
    logs = small_tree(tmp_path / "orig", monkeypatch)
    write_report(logs)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in logs.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(logs)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(logs)).write_bytes(path.read_bytes())
    page = Page()
    page.feed((copy / "report.html").read_text())
    files = set()
    for href in page.links:
        assert not re.match(r"^[a-z]+:|^/", href), href  # no scheme, no absolute path
        if href.startswith("#"):
            assert href[1:] in page.ids, href
            continue
        target = copy / unquote(href)
        assert target.is_file(), href
        files.add(target)
    expected = {p for p in copy.rglob("*") if p.is_file() and p.name != "report.html"}
    assert files == expected
    # a span whose log is not in the tree gets no link
    assert not any("gone.log" in href for href in page.links)


def test_timeline_bars_per_host_with_exact_times_on_hover(tmp_path, monkeypatch):
    logs = small_tree(tmp_path, monkeypatch)
    html = write_report(logs).read_text()
    sections = re.findall(r'<section class="host" data-host="(\w+)">(.*?)</section>', html, re.S)
    assert [host for host, _ in sections] == ["local", "remote"]
    local, remote = (body for _, body in sections)
    assert local.count('class="span') == 3 and remote.count('class="span') == 1
    assert 'class="span k-server s-failed"' in remote
    assert "skipped: pull-image (HARNESS_RUNTIME=host)" in local
    assert "ready 00:01:44.800 (+0.80s)" in local  # 104.8 s after the epoch, UTC
    assert '<rect class="up"' in local  # the server's ready -> stop part


def test_a_tree_without_summary_or_timeline_still_gets_a_page(tmp_path):
    logs = tmp_path / "logs"
    (logs / "c1").mkdir(parents=True)
    (logs / "c1" / "case_summary.json").write_text(json.dumps(
        {"case": "c1", "status": "Fail", "reason": "run did not finish"}))
    html = write_report(logs).read_text()
    assert "FAILED: 1 of 1 cases failed" in html and "No timeline was recorded" in html


def test_a_server_left_running_reaches_the_end_of_the_axis(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    spans = [span("local", "prep", "run-dir", 100.0, 110.0),
             span("remote", "server", "decode", 102.0, None, case="c", ready=103.0,
                  outcome="left running")]
    (logs / "timeline.jsonl").write_text("".join(json.dumps(s) + "\n" for s in spans))
    html = write_report(logs).read_text()
    bar = re.search(r's-running".*?<rect class="bar" x="([\d.]+)" y="\d+" width="([\d.]+)"',
                    html, re.S)
    assert bar and float(bar.group(1)) + float(bar.group(2)) == 1200.0
    assert "no end recorded" in html
