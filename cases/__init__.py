"""One module per end-to-end case; each defines `CASE = harness.run.cases.Case(...)`."""
