"""Hosts: where commands run and files live (this machine, the remote one over SSH), and nodes.

Owns `LocalHost`, `SSHHost` (with its config, keys and SFTP files), the project tree's sync,
the process marker and sweep, and `Node`: a host plus the place processes run on it. May import
the shared base only.
"""
