"""The run: run-single and run-all, the case contract and registry, the engines' command lines,
the answer checks, keep-on-failure and `invoke serve`.

The top layer: may import every other layer. Only `harness.cli` and `tasks.py` import it.
"""
