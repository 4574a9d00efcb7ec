"""The HTML report of a demo run with a crashing decode server, opened in a real browser.

Debian's chromium, driven by Playwright (from PyPI) through `executable_path`: Playwright's own
browser download is not reachable from CI. The run's logs are copied elsewhere and the run tree
removed first, so every link has to be relative to work.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import missing
from tests.simproc import demo_env

pytestmark = pytest.mark.integration
CASES = {"test_hicache_storage_mooncake_backend": "Pass",
         "test_disaggregation_different_tp": "Pass",
         "test_1p1d_erdma": "Fail", "test_epd_sglang": "Fail", "test_moe_mooncake": "Pass"}
TOKEN = "ghp_reportTestToken0123456789"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        missing("no chromium on PATH (tests/provision.sh installs Debian's)")
    return path


def open_in_chromium(page_file: Path) -> dict:
    """Load the page offline; what a reader of it would check, collected in the browser."""
    from playwright.sync_api import sync_playwright

    # As root (CI runs .ci/run as root) chromium refuses to start without --no-sandbox.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    seen: dict = {"console": [], "requests": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=args)
        try:
            page = browser.new_page()
            page.on("console", lambda msg: seen["console"].append((msg.type, msg.text)))
            page.on("pageerror", lambda exc: seen["console"].append(("pageerror", str(exc))))
            page.on("request", lambda request: seen["requests"].append(request.url))
            page.goto(page_file.as_uri())
            seen["rows"] = page.eval_on_selector_all(
                "tr.case", "rows => rows.map(r => [r.dataset.case, r.dataset.status, "
                "r.innerText])")
            seen["bars"] = page.eval_on_selector_all(
                "section.host g.span", "gs => gs.map(g => [g.closest('section').dataset.host, "
                "g.dataset.kind, g.dataset.outcome, g.querySelector('title').textContent])")
            seen["links"] = page.eval_on_selector_all(
                "a[href]", "as => as.map(a => new URL(a.getAttribute('href'), "
                "document.baseURI).href)")
            seen["ids"] = page.eval_on_selector_all("[id]", "els => els.map(e => e.id)")
            seen["first"] = page.inner_text("#verdict")
            seen["axe"] = accessibility_audit(page)
        finally:
            browser.close()
    return seen


WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def accessibility_audit(page) -> list[str]:
    """axe-core's WCAG 2 A/AA rules on the loaded page (its script, as axe-playwright-python
    ships it, injected inline: the page still makes no request); one line per violation."""
    from axe_playwright_python.base import AXE_SCRIPT
    page.add_script_tag(content=AXE_SCRIPT)
    found = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})",
                          WCAG_TAGS)
    return [f"{v['id']} ({v['impact']}): {v['help']}: "
            + ", ".join(str(n["target"]) for n in v["nodes"][:5]) for v in found["violations"]]


def test_report_of_a_decode_crash_opens_offline_in_chromium(project, tmp_path):
    env = demo_env(tmp_path / "remote-host" / "project", HARNESS_SIM_FAULTS="decode:crash",
                   GITHUB_TOKEN=TOKEN)
    done = subprocess.run([sys.executable, "-m", "harness", "demo"], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert done.returncode == 1, done.stdout[-4000:]
    logs = tmp_path / "laptop" / "logs"
    shutil.copytree(project / "run" / "logs", logs)
    shutil.rmtree(project / "run")  # only the copy is left for the links to point at
    page_file = logs / "report.html"
    assert TOKEN not in page_file.read_text()

    seen = open_in_chromium(page_file)

    assert seen["first"].startswith("FAILED: 2 of 5 cases failed")
    assert {case: status for case, status, _ in seen["rows"]} == CASES
    for _, status, text in seen["rows"]:
        if status == "Fail":
            assert "server decode" in text and "decode exited with status 1" in text, text
    hosts = {host for host, *_ in seen["bars"]}
    assert hosts == {"local", "remote"}
    decode = [b for b in seen["bars"] if b[0] == "remote" and b[1] == "server"]
    assert decode and all(outcome == "failed" for _, _, outcome, _ in decode)
    assert all("start " in title and "UTC" in title for *_, title in seen["bars"])
    assert {"payload", "server", "reset", "drain"} <= {kind for _, kind, *_ in seen["bars"]}

    linked = set()
    for url in seen["links"]:
        parts = urlsplit(url)
        assert parts.scheme == "file", url
        target = Path(unquote(parts.path))
        if target == page_file:  # a link within the page
            assert parts.fragment in seen["ids"], url
            continue
        assert target.is_file() and logs in target.parents, url
        linked.add(target)
    every_log = {p for p in logs.rglob("*") if p.is_file() and p != page_file}
    assert every_log - linked == set()

    assert seen["axe"] == [], "\n".join(seen["axe"])  # WCAG 2 A and AA, by axe-core
    assert [c for c in seen["console"] if c[0] in ("error", "pageerror")] == []
    assert seen["requests"] == [page_file.as_uri()]  # the page itself, nothing else
