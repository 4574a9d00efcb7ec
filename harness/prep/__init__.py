"""Preparation: the run's environment (both hosts' nodes), the per-host steps of SPEC §5, the
wheel, and the reset between cases with its GPU readings (SPEC §8).

May import containers, servers, hosts, results and the shared base; never the run layer.
"""
