"""Servers: a process launched into a log file, its readiness rules, its stop (SPEC §6).

May import hosts, results (the timeline) and the shared base.
"""
