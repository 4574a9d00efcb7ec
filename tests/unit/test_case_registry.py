"""The case contract and the registry (harness.run.cases): a case by the name a person types,
a group's cases in run order, and what a declared case runs, with the context it is handed."""
from __future__ import annotations

import pytest

from harness.errors import SettingsError
from harness.run.cases import DOUBLE, SINGLE, Case, discover, group_cases, resolve


def single(name: str, group: str = "SGLANG", order: int = 0, run=lambda ctx: None) -> Case:
    return Case(name, group, SINGLE, order, (), run=run)


REGISTRY = {c.name: c for c in [
    single("test_pd", "SGLANG", 2), single("test_hicache", "SGLANG", 1),
    single("test_vllm_pd", "VLLM", 1), single("test_odd", "EXTRA", 0)]}


# --- resolve --------------------------------------------------------------------------------

@pytest.mark.parametrize("typed", [
    "test_pd", "test_pd.sh", "test_pd.py", "  test_pd.sh\n", "cases/test_pd.py",
    "scripts/test_pd.sh", "/work/main/cases/test_pd.py"])
def test_a_case_by_the_name_or_file_a_person_types(typed):
    assert resolve(typed, REGISTRY) is REGISTRY["test_pd"]


@pytest.mark.parametrize("typed", ["test_pd.SH", "test_pd.txt", "test_p", ".sh", "", "TEST_PD"])
def test_an_unknown_name_lists_the_known_cases_in_order(typed):
    with pytest.raises(SettingsError) as caught:
        resolve(typed, REGISTRY)
    assert caught.value.message == (f"unknown case {typed!r}; known cases: test_hicache, "
                                    "test_odd, test_pd, test_vllm_pd")


def test_resolve_reads_the_cases_package_when_given_no_registry():
    real = discover()["test_moe_mooncake"]
    assert resolve("test_moe_mooncake.sh") is real
    with pytest.raises(SettingsError, match="known cases: .*test_moe_mooncake"):
        resolve("test_pd")


# --- group_cases ----------------------------------------------------------------------------

@pytest.mark.parametrize("group,names", [
    ("SGLANG", ["test_hicache", "test_pd"]),
    ("sglang", ["test_hicache", "test_pd"]),
    ("VLLM", ["test_vllm_pd"]),
    ("all", ["test_hicache", "test_pd", "test_vllm_pd"]),   # SGLANG first, then VLLM
])
def test_a_groups_cases_in_run_order(group, names):
    assert [c.name for c in group_cases(group, REGISTRY)] == names


@pytest.mark.parametrize("group", ["EXTRA", "", "SGLANG,VLLM"])
def test_an_unknown_group_names_the_accepted_ones(group):
    with pytest.raises(SettingsError) as caught:
        group_cases(group, REGISTRY)
    assert caught.value.message == f"unknown group {group!r}; accepted: SGLANG, VLLM, ALL"


# --- Case -----------------------------------------------------------------------------------

class Ctx:
    """What the runner hands a case, as far as Case uses it."""
    prepared = None

    def each_model(self, models, body):
        for model in models:
            body(self, model)


def test_a_single_case_runs_its_run_with_the_context_it_is_handed():
    seen = []
    case = single("s", run=lambda ctx: seen.append(ctx))
    assert not case.double
    ctx = Ctx()
    case.execute(ctx)
    assert seen == [ctx]


def test_a_double_case_hands_every_step_the_runners_context():
    seen = []
    ctx = Ctx()
    case = Case("d", "VLLM", DOUBLE, 0, ("A/a",),
                before=lambda c: seen.append(("before", c)) or "shared",
                start_servers=lambda c, m: seen.append(("start", c)) or f"proxy of {m}",
                check=lambda c, m, front: seen.append(("check", c, front)))
    assert case.double
    case.execute(ctx)
    assert seen == [("before", ctx), ("start", ctx), ("check", ctx, "proxy of A/a")]
    assert ctx.prepared == "shared"


def test_a_double_case_without_before_leaves_prepared_alone():
    ctx = Ctx()
    ctx.prepared = "kept"
    Case("d", "VLLM", DOUBLE, 0, ("A/a",), start_servers=lambda c, m: m,
         check=lambda c, m, front: None).execute(ctx)
    assert ctx.prepared == "kept"


@pytest.mark.parametrize("kind,declared,missing", [
    (SINGLE, {"start_servers": lambda c, m: m, "check": lambda c, m, s: None}, "run"),
    (DOUBLE, {"run": lambda ctx: None}, "start_servers and check"),
    (DOUBLE, {"check": lambda c, m, s: None}, "start_servers and check"),
])
def test_a_case_missing_what_its_kind_needs_is_refused_naming_it(kind, declared, missing):
    with pytest.raises(TypeError) as caught:
        Case("c", "SGLANG", kind, 0, ("A/a",), **declared)
    assert str(caught.value) == f"case c: a {kind} case declares {missing}"
