"""Settings read from the environment."""

from __future__ import annotations

from satsrouter.settings import Settings


def test_upstream_name_and_dialect_follow_the_url_read_from_the_environment() -> None:
    s = Settings.from_env({"UPSTREAM_BASE_URL": "https://api.anthropic.com/v1"})
    assert (s.upstream_name, s.upstream_dialect) == ("anthropic", "anthropic")
    s = Settings.from_env({"UPSTREAM_BASE_URL": "http://127.0.0.1:9000/v1"})
    assert (s.upstream_name, s.upstream_dialect) == ("upstream", "openai")
    s = Settings.from_env({})
    assert (s.upstream_name, s.upstream_dialect) == ("openrouter", "openrouter")
    s = Settings.from_env({"UPSTREAM_BASE_URL": "http://x.example/v1", "UPSTREAM_NAME": "mine"})
    assert (s.upstream_name, s.upstream_dialect) == ("mine", "openai")
