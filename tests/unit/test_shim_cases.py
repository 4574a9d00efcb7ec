"""scripts/run_test.sh carries each group's case names (it needs them before any Python runs);
they must stay the registry's, or a group's new case would get no `Fail` when nox cannot start."""
import shutil
import subprocess

import pytest

from harness.run import cases as registry
from tests.conftest import ROOT


@pytest.mark.parametrize("group,args", [("SGLANG", ["SGLANG"]), ("VLLM", ["VLLM"]), ("ALL", [])])
def test_shim_fails_exactly_the_registry_cases_of_a_group(tmp_path, group, args):
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "run_test.sh", tmp_path / "scripts" / "run_test.sh")
    bin_dir = tmp_path / "bin"  # the shim's tools only: no Python, nox or uv
    bin_dir.mkdir()
    for tool in ("date", "mkdir", "mv", "rm"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    done = subprocess.run([shutil.which("bash"), str(tmp_path / "scripts" / "run_test.sh"),
                           "run-all", *args], env={"PATH": str(bin_dir)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    written = {p.parent.name for p in (tmp_path / "run/logs").glob("*/test_results.json")}
    assert written == {c.name for c in registry.group_cases(group)}
