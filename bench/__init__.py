"""Benchmark of the satsrouter node against the fake upstream it proxies (`python -m bench`)."""
