"""The run's policy on stopping, one object owned by the run and passed down (SPEC §10): the
cancel token that Ctrl-C/SIGTERM sets, and KEEP_ON_FAILURE. Below the runner it is asked, and
the one thing it records (what a failure kept) is written where the keeping happens."""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.waiting import Cancel


@dataclass
class RunPolicy:
    cancel: Cancel = field(default_factory=Cancel)
    keep_on_failure: bool = False
    kept_servers: list | None = None   # a failed model's servers, left up for a person
    stopped_at: str | None = None      # the case whose failure stopped the run (containers stay)

    @property
    def keeps_failures(self) -> bool:
        """KEEP_ON_FAILURE=true and not stopping on Ctrl-C/SIGTERM (that still stops all)."""
        return self.keep_on_failure and not self.cancel.is_set()

    def keep_servers(self, servers: list) -> None:
        """A failed model's servers are not stopped: the run stops at its case."""
        self.kept_servers = list(servers)

    def stop_at(self, case: str) -> None:
        """The run stops at this case's failure; the containers stay up."""
        self.stopped_at = case

    @property
    def keeps_containers(self) -> bool:
        return self.stopped_at is not None
