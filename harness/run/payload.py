"""A single-host case's payload: its command run in the background into `<case>.log`, echoed
on the console as the old scripts' `tee` did, and waited for."""
from __future__ import annotations

import time
from pathlib import PurePosixPath
from typing import Mapping, Sequence

from harness.errors import CaseFailed, ServerExited, tail
from harness.hosts.nodes import Node
from harness.run.cases import CaseContext
from harness.servers.server import LogFollower
from harness.waiting import wait_until


def run_payload(ctx: CaseContext, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                pythonpath: Sequence[str] = (), cwd: object = None,
                node: Node | None = None) -> None:
    """Run a single-host case's command in the background into `<case>.log`; wait for it.

    Running it as a spawned group (not a blocking exec) lets Ctrl-C stop it and everything
    it started, inside a container too.
    """
    node = node or ctx.local
    log_path = node.layout.case_log(ctx.case.name)
    server = ctx.server("payload", node, argv, log=log_path, ready=(), env=env,
                        pythonpath=pythonpath, cwd=cwd, kind="payload")
    server.start()
    proc = server.proc
    assert proc is not None
    next_alive_check = time.monotonic() + 1.0
    echo = _ConsoleEcho(node, log_path)

    def finished() -> tuple[bool, str]:
        nonlocal next_alive_check
        echo.more()
        if proc.exit_code() is not None:
            echo.rest()
            return True, ""
        if time.monotonic() >= next_alive_check:
            next_alive_check = time.monotonic() + 1.0
            if not node.alive(proc.pgid) and proc.exit_code() is None:
                raise ServerExited("payload is gone without an exit status (killed?)",
                                   host=node.name, log_tail=server.log_tail())
        return False, "still running"

    try:
        done, _, _ = wait_until(finished, timeout_s=ctx.settings.timeout_case_s,
                                awaited=f"the payload on {node.name}", cancel=ctx.cancel,
                                detail=server.last_log_line)
    except BaseException as exc:
        if server.span is not None:
            server.span.failed(exc)
        raise
    if server.span is not None:  # the payload's span ends when it exits, not at its stop
        code = proc.exit_code()
        server.span.close("timed out" if not done else "ok" if code == 0 else f"exit {code}")
    if not done:
        raise CaseFailed(f"payload still running after {ctx.settings.timeout_case_s:.0f}s",
                         host=node.name, log_tail=server.log_tail())
    code = proc.exit_code()
    # The stop registered above still runs: it ends anything the payload left in its group.
    if code != 0:
        raise CaseFailed(f"payload exited with status {code}", host=node.name,
                         log_tail=tail(server.log_tail(40), 40),
                         hint=f"see {log_path.name} in the case's log dir")


class _ConsoleEcho:
    """A payload's output on the console as well as in `<case>.log`, as the old scripts' `tee`
    did (T-One's job log is the console): what the log gained since the last look, by lines."""

    def __init__(self, node: Node, log_path: PurePosixPath) -> None:
        self.log = LogFollower(node, log_path)

    def more(self) -> None:
        lines = self.log.new_lines()
        if lines:
            print(lines, flush=True)

    def rest(self) -> None:
        self.more()
        if self.log.partial:
            print(self.log.partial, flush=True)
            self.log.partial = ""
