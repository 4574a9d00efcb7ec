"""The case groups and their run order (harness.groups), as run-all, merge and the verdict
written before the harness is installed read them."""
from __future__ import annotations

import pytest

from harness.groups import ALL, GROUPS, groups_for, run_order


@pytest.mark.parametrize("asked,groups", [
    ("SGLANG", ("SGLANG",)), ("vllm", ("VLLM",)), ("Vllm", ("VLLM",)),
    ("ALL", ("SGLANG", "VLLM")), ("all", ("SGLANG", "VLLM")),
])
def test_the_groups_a_name_stands_for_in_run_order(asked, groups):
    assert groups_for(asked) == groups


@pytest.mark.parametrize("asked", ["", "BOGUS", "SGLANG,VLLM", "SGLANG VLLM", "cases"])
def test_an_unknown_group_name_stands_for_no_group(asked):
    assert groups_for(asked) == ()


def test_all_names_every_group():
    assert groups_for(ALL) == GROUPS == ("SGLANG", "VLLM")


def test_cases_sort_by_group_then_their_order_and_unknown_groups_last():
    cases = [("VLLM", 1), ("EXTRA", 0), ("SGLANG", 3), ("VLLM", 0), ("SGLANG", 1), ("", 2)]
    ordered = sorted(cases, key=lambda c: run_order(*c))
    assert ordered == [("SGLANG", 1), ("SGLANG", 3), ("VLLM", 0), ("VLLM", 1),
                       ("EXTRA", 0), ("", 2)]
    assert run_order("EXTRA", 0) == run_order("other", 0) > run_order("VLLM", 99)
