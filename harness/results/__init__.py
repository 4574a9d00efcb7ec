"""Results: what a run leaves under `run/logs` (SPEC §4) and everything that reads it back.

Owns case outcomes, the run summary, `test_results.json`, JUnit, the HTML report, the
timeline, merge and the verdict written before the harness runs. May import only the shared
base (`harness.settings`, `harness.layout`, `harness.errors`, `harness.files`, ...): a run tree is
read and written here without any host, container or server.
"""
