"""The case groups and their run order (SPEC §7), defined once. Standard library only: the nox
sessions read it before the harness's dependencies are installed."""
from __future__ import annotations

GROUPS = ("SGLANG", "VLLM")   # run-all with no group: SGLANG, then VLLM
ALL = "ALL"


def groups_for(group: str) -> tuple[str, ...]:
    """The groups `group` names, in run order (`ALL`: every group); () for an unknown name."""
    group = group.upper()
    if group == ALL:
        return GROUPS
    return (group,) if group in GROUPS else ()


def run_order(group: str, order: int) -> tuple[int, int]:
    """Sort key of a case: its group's place, then its order in the group; unknown groups last."""
    return (GROUPS.index(group) if group in GROUPS else len(GROUPS), order)
