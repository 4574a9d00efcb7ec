"""Every path of the run tree (SPEC §4), in one place.

A `Layout` is the project tree seen from one place: the local host (the checkout), a container
(`/test_run`, through the bind mount) or the remote host (`REMOTE_TEST_DIR`). The same relative
paths hold in every view, so `layout.view(root)` is all it takes to translate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

CONTAINER_ROOT = PurePosixPath("/test_run")
RESULTS_FILE = "test_results.json"
CASE_SUMMARY_FILE = "case_summary.json"
RUN_SUMMARY_FILE = "run_summary.json"
TIMELINE_FILE = "timeline.jsonl"
REPORT_FILE = "report.html"


def model_dir_name(model: str) -> str:
    """`Org/Model` becomes `Org__Model` (the log directory of one model)."""
    return model.replace("/", "__")


@dataclass(frozen=True)
class Layout:
    root: PurePosixPath

    @classmethod
    def at(cls, root: object) -> "Layout":
        return cls(PurePosixPath(str(root)))

    def view(self, root: object) -> "Layout":
        """The same tree under another root (a container's /test_run, the remote dir)."""
        return Layout.at(root)

    def translate(self, path: object, other: "Layout") -> PurePosixPath:
        """`path` (under this view's root) as `other` sees it."""
        return other.root / PurePosixPath(str(path)).relative_to(self.root)

    # --- the tree -----------------------------------------------------------------------------
    @property
    def run(self) -> PurePosixPath:
        return self.root / "run"

    @property
    def shrc(self) -> PurePosixPath:
        return self.run / ".shrc"

    @property
    def whls(self) -> PurePosixPath:
        return self.run / "whls"

    @property
    def logs(self) -> PurePosixPath:
        return self.run / "logs"

    @property
    def pids(self) -> PurePosixPath:
        return self.run / "pids"

    @property
    def run_summary(self) -> PurePosixPath:
        return self.logs / RUN_SUMMARY_FILE

    @property
    def timeline(self) -> PurePosixPath:
        return self.logs / TIMELINE_FILE

    @property
    def report(self) -> PurePosixPath:
        return self.logs / REPORT_FILE

    @property
    def payloads(self) -> PurePosixPath:
        return self.root / "payloads"

    @property
    def sim_site(self) -> PurePosixPath:
        """Put first on PYTHONPATH when HARNESS_SIM=true: the simulated engines."""
        return self.root / "sim" / "site"

    @property
    def sim_mooncake_master(self) -> PurePosixPath:
        """The real mooncake_master where it can run, else the simulator's stand-in."""
        return self.root / "sim" / "bin" / "mooncake_master"

    @property
    def sim_workspace(self) -> PurePosixPath:
        """Plays the image's SGLang workspace (its test tree) when HARNESS_SIM=true."""
        return self.root / "sim" / "workspace"

    def case_logs(self, case: str) -> PurePosixPath:
        return self.logs / case

    def case_log(self, case: str) -> PurePosixPath:
        """A single-host case's whole command output."""
        return self.case_logs(case) / f"{case}.log"

    def results_file(self, case: str) -> PurePosixPath:
        return self.case_logs(case) / RESULTS_FILE

    def case_summary(self, case: str) -> PurePosixPath:
        return self.case_logs(case) / CASE_SUMMARY_FILE

    def model_logs(self, case: str, model: str) -> PurePosixPath:
        return self.case_logs(case) / model_dir_name(model)

    def case_pids(self, case: str) -> PurePosixPath:
        return self.pids / case

    def pid_file(self, case: str, service: str) -> PurePosixPath:
        return self.case_pids(case) / f"{service}.pid"

    def exit_file(self, case: str, service: str) -> PurePosixPath:
        """Written with the exit status when a spawned service exits on its own."""
        return self.case_pids(case) / f"{service}.exit"

    def path_entries(self) -> dict[str, str]:
        """The path-valued `.shrc` entries for this view."""
        return {"BASE_DIR": str(self.root), "TEST_RUN_DIR": str(self.run),
                "TEST_RESULT_DIR": str(self.logs)}
