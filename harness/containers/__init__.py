"""Containers: the CI container of a host as a node, over the docker SDK or the remote docker CLI.

Owns what a container is (its spec), the engine interface and its two transports. May import
hosts and the shared base.
"""
