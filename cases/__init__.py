"""One module per end-to-end case; each defines `CASE = harness.cases.Case(...)`."""
