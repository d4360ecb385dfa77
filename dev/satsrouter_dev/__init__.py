"""Test doubles and developer tools for satsrouter, kept out of the node's wheel.

See dev/pyproject.toml: the `satsrouter-dev` distribution, installed by `make`.
"""
