"""The runner on this host (HARNESS_RUNTIME=host): results for every case, whatever happens."""
import http.server
import json
import sys
import threading

import pytest

from harness.run.cases import Case
from harness.errors import CaseFailed
from harness.layout import Layout
from harness.hosts.nodes import local_group_alive
from harness.run.runner import EXIT_INTERRUPTED, run_cases
from harness.settings import Settings

pytestmark = pytest.mark.integration


def settings(**extra):
    env = {"HARNESS_RUNTIME": "host", "HARNESS_SIM": "true", "CONTAINER_NAME": "unused",
           "TIMEOUT_STOP_S": "3", "PREFLIGHT": "false"}  # cases made up here: no Mooncake
    env.update(extra)
    return Settings.from_env(env)


def case(name, run, kind="single"):
    if kind == "double":  # declared per model: nothing of it may run in these tests
        return Case(name, "SGLANG", kind, 0, ("Org/M",), start_servers=run, check=run)
    return Case(name, "SGLANG", kind, 0, (), run)


def results(tmp_path):
    out = {}
    for path in (tmp_path / "run/logs").glob("*/test_results.json"):
        out[path.parent.name] = json.loads(path.read_text())["status"]
    return out


def summary(tmp_path, name):
    return json.loads((tmp_path / f"run/logs/{name}/case_summary.json").read_text())


def test_every_case_gets_a_result_and_failures_a_reason(tmp_path):
    def passes(ctx):
        pass

    def fails(ctx):
        with ctx.step("check answer"):
            raise CaseFailed("answer was wrong", host="local")

    def crashes(ctx):
        raise RuntimeError("bug in case")

    code = run_cases(settings(), [case("a", passes), case("b", fails), case("c", crashes)],
                     "SGLANG", Layout.at(tmp_path))
    assert code == 1
    assert results(tmp_path) == {"a": "Pass", "b": "Fail", "c": "Fail"}
    assert summary(tmp_path, "b")["step"] == "check answer"
    assert "answer was wrong" in summary(tmp_path, "b")["reason"]
    assert "bug in case" in summary(tmp_path, "c")["reason"]
    run_summary = json.loads((tmp_path / "run/logs/run_summary.json").read_text())
    assert [c["case"] for c in run_summary["cases"]] == ["a", "b", "c"]
    assert (tmp_path / "run/.shrc").exists()


def test_servers_a_case_started_are_stopped_when_it_fails(tmp_path):
    seen = {}

    def starts_then_fails(ctx):
        sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
        server = ctx.server("sleeper", ctx.local, sleep,
                            log=ctx.local.layout.case_logs("s") / "sleeper.log", ready=())
        server.start()
        seen["pgid"] = server.proc.pgid
        raise CaseFailed("no answer")

    assert run_cases(settings(), [case("s", starts_then_fails)], "SGLANG", Layout.at(tmp_path)) == 1
    assert not local_group_alive(seen["pgid"])
    assert not (tmp_path / "run/pids/s/sleeper.pid").exists()


def test_interrupt_fails_the_rest_and_exits_130(tmp_path):
    def interrupted(ctx):
        raise KeyboardInterrupt

    code = run_cases(settings(), [case("x", interrupted), case("y", lambda ctx: None)],
                     "SGLANG", Layout.at(tmp_path))
    assert code == EXIT_INTERRUPTED
    assert results(tmp_path) == {"x": "Fail", "y": "Fail"}
    assert "interrupted" in summary(tmp_path, "y")["reason"]


def test_double_case_without_addresses_fails_with_a_clear_reason(tmp_path):
    code = run_cases(settings(), [case("d", lambda ctx: None, kind="double")], "SGLANG",
                     Layout.at(tmp_path))
    assert code == 1
    assert "LOCAL_IP and REMOTE_IP" in summary(tmp_path, "d")["reason"]


def test_case_log_dir_is_emptied_at_its_start(tmp_path):
    stale = tmp_path / "run/logs/e/old.log"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an earlier run")
    assert run_cases(settings(), [case("e", lambda ctx: None)], "SGLANG", Layout.at(tmp_path)) == 0
    assert not stale.exists()
    assert results(tmp_path) == {"e": "Pass"}


def test_a_report_that_cannot_be_written_is_a_warning_not_a_verdict(tmp_path, monkeypatch,
                                                                     caplog):
    def broken(logs):
        raise ValueError("report bug")

    monkeypatch.setattr("harness.run.runner.write_report", broken)
    code = run_cases(settings(), [case("a", lambda ctx: None)], "SGLANG", Layout.at(tmp_path))
    assert code == 0 and results(tmp_path) == {"a": "Pass"}
    assert "could not write the HTML report: ValueError('report bug')" in caplog.text
    assert not (tmp_path / "run/logs/report.html").exists()


class Refuses(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # the name http.server calls
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"no")

    def log_message(self, *args):
        pass


def test_the_run_leaves_its_timeline_and_report(tmp_path):
    (tmp_path / "run/logs").mkdir(parents=True)
    (tmp_path / "run/logs/timeline.jsonl").write_text('{"an older run": 1}\n')
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{stub.server_port}/generate"

    def asks(ctx):
        ctx.each_model(["Org/M"], lambda ctx, model: ctx.post(url, {}, 5, model, server="stub"))

    try:
        code = run_cases(settings(), [Case("a", "SGLANG", "single", 0, ("Org/M",), asks)],
                         "SGLANG", Layout.at(tmp_path))
    finally:
        stub.shutdown()
    assert code == 0
    spans = [json.loads(line) for line in
             (tmp_path / "run/logs/timeline.jsonl").read_text().splitlines()]
    assert {s["kind"] for s in spans} == {"prep", "request"}  # the older run's line is gone
    [request] = [s for s in spans if s["kind"] == "request"]
    assert request["name"] == "Org/M: POST /generate" and request["outcome"] == "HTTP 500"
    assert request["log"] == "a/Org__M/curl_response.log"
    page = (tmp_path / "run/logs/report.html").read_text()
    assert 'data-case="a" data-status="Pass"' in page
    assert 'href="a/Org__M/curl_response.log"' in page
