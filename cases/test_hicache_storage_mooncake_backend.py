"""HiCache with the Mooncake storage backend: SGLang's HiCache storage tests on Mooncake."""
import logging

from harness.run.payload import run_payload
from harness.run.cases import SINGLE, Case, CaseContext
from harness.errors import CaseFailed
from harness.hosts.nodes import Node
from harness.servers.server import offline_env

log = logging.getLogger(__name__)
NAME = "test_hicache_storage_mooncake_backend"
PAYLOAD = "test_hicache_storage_mooncake_backend.py"
# The payload loads what the image's SGLang test tree names (DEFAULT_MODEL_NAME_FOR_TEST, the
# MLA class DEFAULT_MLA_MODEL_NAME_FOR_TEST); it says which at run time (`--models`).
MODELS: tuple[str, ...] = ()
MODEL_LINE = "[hicache] loads model: "


def payload_models(ctx: CaseContext, node: Node, pythonpath: list[str]) -> list[str]:
    """The models the payload will load, asked of the payload itself in the container. The
    simulator's faults are left out: they aim at the payload's run, not at this question."""
    env = {**ctx.sim_env(node), "HARNESS_SIM_FAULTS": "",
           "SGLANG_WORKSPACE": ctx.sglang_workspace(node)}
    done = node.exec(["python3", PAYLOAD, "--models"], env=env, pythonpath=pythonpath,
                     cwd=node.layout.payloads / "hicache", timeout=300, check=False)
    models = [line[len(MODEL_LINE):].strip() for line in done.output.splitlines()
              if line.startswith(MODEL_LINE)]
    if not done.ok or not models:
        raise CaseFailed(f"cannot read which models the HiCache payload loads from the image's "
                         f"SGLang test tree (status {done.exit_code}, {len(models)} model(s))",
                         host=node.name, log_tail=done.output[-2000:])
    return models


def run(ctx: CaseContext) -> None:
    node = ctx.local
    hicache_tests = f"{ctx.sglang_workspace(node)}/sglang/test/registered/hicache"
    pythonpath = ctx.pythonpath(node, hicache_tests)
    with ctx.step("check model cache"):
        models = payload_models(ctx, node, pythonpath)
        offline = offline_env(node, *models)
        log.info("%s: the payload loads %s; %s", NAME, ", ".join(models),
                 "all cached: offline" if offline else "not all cached: online")
    env = {**ctx.sim_env(node), **offline, "SGLANG_WORKSPACE": ctx.sglang_workspace(node),
           "HARNESS_PAYLOAD_LOG_DIR": str(node.layout.case_logs(NAME)),
           "TIMEOUT_STOP_S": str(ctx.settings.timeout_stop_s)}
    with ctx.step("run payload"):
        run_payload(ctx, ["python3", "-m", "pytest", "-v", "-s", "--tb=long", "-p",
                         "no:cacheprovider", PAYLOAD],
                        env=env, cwd=node.layout.payloads / "hicache", pythonpath=pythonpath)


CASE = Case(NAME, "SGLANG", SINGLE, 10, MODELS, run,
            "HiCache storage tests with the Mooncake backend (pytest payload)")
