"""Model names clients actually send (Claude Code, the SDKs, the seed examples) resolve to the
catalogue's entries by the normalisation in `satsrouter/market/catalogue.py`."""

from __future__ import annotations

import anthropic
import openai
import pytest
from conftest import RunningNode, expected_cost, model_entry
from satsrouter_dev.fake_models import default_models
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet

from satsrouter.market.catalogue import Catalogue, UnknownModel, model_name, parse_models

# The fake upstream's OpenRouter catalogue, plus a second vendor's gpt-4o-mini (ambiguous).
CATALOGUE = Catalogue(
    parse_models(
        [
            *default_models(),
            {"id": "azure/gpt-4o-mini", "context_length": 128000, "pricing": {"prompt": "0"}},
        ]
    )
)

RESOLVED = {
    # The catalogue's own ids, and any case.
    "anthropic/claude-sonnet-4.5": "anthropic/claude-sonnet-4.5",
    "openai/gpt-4o": "openai/gpt-4o",
    "Anthropic/Claude-Sonnet-4.5": "anthropic/claude-sonnet-4.5",
    "GPT-4o": "openai/gpt-4o",
    # Anthropic's ids: family first, `-` between version digits, dates, aliases.
    "claude-opus-4-8": "anthropic/claude-opus-4.8",  # Claude Code 2.1's default
    "claude-opus-5-5": "anthropic/claude-opus-5.5",  # ... in 2.1.332, the version we pin
    "claude-sonnet-5-5": "anthropic/claude-sonnet-5.5",  # its `sonnet` alias
    "claude-haiku-5-5": "anthropic/claude-haiku-5.5",  # its `haiku` alias
    "claude-haiku-4-5-20251001": "anthropic/claude-haiku-4.5",  # its background model
    "claude-haiku-4-5": "anthropic/claude-haiku-4.5",
    "claude-sonnet-4-5": "anthropic/claude-sonnet-4.5",
    "claude-sonnet-4-5-20250929": "anthropic/claude-sonnet-4.5",
    "claude-sonnet-4-5@20250929": "anthropic/claude-sonnet-4.5",  # Vertex AI's form
    "claude-sonnet-4-5[1m]": "anthropic/claude-sonnet-4.5",  # Claude Code's 1M context
    "claude-sonnet-4-5-20250929[1m]": "anthropic/claude-sonnet-4.5",
    "anthropic/claude-sonnet-4-5": "anthropic/claude-sonnet-4.5",
    "anthropic/claude-sonnet-4-5-20250929": "anthropic/claude-sonnet-4.5",
    "claude-sonnet-4-20250514": "anthropic/claude-sonnet-4",
    "claude-sonnet-4-0": "anthropic/claude-sonnet-4",
    "claude-opus-4-1": "anthropic/claude-opus-4.1",
    "claude-opus-4-1-20250805": "anthropic/claude-opus-4.1",
    # The older order, version first: the same words as OpenRouter's ids.
    "claude-3-5-sonnet-latest": "anthropic/claude-3.5-sonnet",
    "claude-3-5-sonnet-20241022": "anthropic/claude-3.5-sonnet",
    "claude-3-7-sonnet-20250219": "anthropic/claude-3.7-sonnet",
    "claude-3-7-sonnet-latest": "anthropic/claude-3.7-sonnet",
    # OpenAI's ids without the prefix; a dated entry that exists is taken over the undated.
    "gpt-3.5-turbo": "openai/gpt-3.5-turbo",
    "gpt-4.1": "openai/gpt-4.1",
    "gpt-5": "openai/gpt-5",
    "gpt-4o-2024-08-06": "openai/gpt-4o-2024-08-06",
    "openai/gpt-4o-2024-08-06": "openai/gpt-4o-2024-08-06",
    "gpt-4o-20240806": "openai/gpt-4o-2024-08-06",
    "gpt-4o-2024-11-20": "openai/gpt-4o",  # no such dated entry: the undated one
    "openai/gpt-4o-mini-2024-07-18": "openai/gpt-4o-mini",  # the prefix settles it
    # Open models: separators between digits only.
    "llama-3.1-70b-instruct": "meta-llama/llama-3.1-70b-instruct",
    "llama-3-1-70b-instruct": "meta-llama/llama-3.1-70b-instruct",
    "gemini-2.5-pro": "google/gemini-2.5-pro",
    "gemini-2-5-flash": "google/gemini-2.5-flash",
    "mistral-large-latest": "mistralai/mistral-large",
    "deepseek-chat": "deepseek/deepseek-chat",
}
AMBIGUOUS = {"gpt-4o-mini": ["azure/gpt-4o-mini", "openai/gpt-4o-mini"]}
UNKNOWN = {
    # A wrong prefix is not dropped; the hint names what the bare name means.
    "openai/claude-sonnet-4.5": "anthropic/claude-sonnet-4.5",
    "claude-sonnet-4-6": "anthropic/claude-sonnet-4.5",
    "gpt-4": "openai/gpt-4o",
    "gpt-4o-mini-turbo": "openai/gpt-4o-mini",
}


@pytest.mark.parametrize(("name", "expected"), RESOLVED.items())
def test_names_resolve_to_the_catalogue_entry(name: str, expected: str) -> None:
    assert CATALOGUE.resolve(name).id == expected
    assert (model := CATALOGUE.get(name)) is not None and model.id == expected


@pytest.mark.parametrize(("name", "candidates"), AMBIGUOUS.items())
def test_ambiguous_names_list_the_candidates(name: str, candidates: list[str]) -> None:
    assert CATALOGUE.get(name) is None
    with pytest.raises(UnknownModel) as raised:
        CATALOGUE.resolve(name)
    assert raised.value.ambiguous and raised.value.candidates == candidates


@pytest.mark.parametrize(("name", "hint"), UNKNOWN.items())
def test_unknown_names_suggest_close_ones(name: str, hint: str) -> None:
    assert CATALOGUE.get(name) is None
    with pytest.raises(UnknownModel) as raised:
        CATALOGUE.resolve(name)
    assert not raised.value.ambiguous and hint in raised.value.candidates


def test_digit_separators_only_between_digits() -> None:
    def key(name: str) -> str:
        parsed = model_name(name)
        assert parsed is not None
        return parsed.key

    assert key("gpt-4o") == "gpt-4o" and key("o3-mini") == "o3-mini"
    assert key("llama-3.1-70b") == key("llama-3-1-70b") == "llama-3.1.70b"
    assert key("gpt-4-0613") != key("gpt-4")  # a snapshot, not a date: kept
    assert key("gpt-3.5-turbo-0125") != key("gpt-3.5-turbo")
    assert key("mistral-7b-instruct-v0.1") == "mistral-7b-instruct-v0.1"
    assert key("gemini-2.0-flash") == key("gemini-2-flash")
    assert key("llama3.1:latest") == key("llama3.1")  # Ollama's tag
    assert model_name("x" * 500) is None and model_name("[1m]") is None


def test_an_anthropic_upstreams_dated_ids() -> None:
    """Anthropic lists dated ids without a prefix; OpenRouter-style names still find them."""
    catalogue = Catalogue(
        parse_models(
            [
                {"id": model_id, "context_length": 200000}
                for model_id in (
                    "claude-sonnet-4-5-20250929",
                    "claude-3-5-sonnet-20240620",
                    "claude-3-5-sonnet-20241022",
                )
            ]
        )
    )
    resolved = {
        "anthropic/claude-sonnet-4.5": "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
        "claude-3-5-sonnet-latest": "claude-3-5-sonnet-20241022",  # the newest
        "anthropic/claude-3.5-sonnet": "claude-3-5-sonnet-20241022",
        "claude-3-5-sonnet-20240620": "claude-3-5-sonnet-20240620",
        "claude-3.5-sonnet@2024-06-20": "claude-3-5-sonnet-20240620",
    }
    assert {name: catalogue.resolve(name).id for name in resolved} == resolved


def test_operator_aliases_win_over_derived_names() -> None:
    models = parse_models(default_models())
    catalogue = Catalogue(
        models,
        {
            "claude-opus-4-8": "anthropic/claude-haiku-4.5",  # an operator's cheaper default
            "Fast": "test/cheap",
            "gone": "nobody/nothing",
        },
    )
    # The alias answers to its normalised forms too; the exact catalogue id still wins.
    for name in ("claude-opus-4-8", "claude-opus-4.8", "claude-opus-4-8[1m]"):
        assert catalogue.resolve(name).id == "anthropic/claude-haiku-4.5"
    assert catalogue.resolve("anthropic/claude-opus-4.8").id == "anthropic/claude-opus-4.8"
    assert catalogue.resolve("Fast").id == catalogue.resolve("fast").id == "test/cheap"
    with pytest.raises(UnknownModel):
        catalogue.resolve("gone")  # an alias to a model not served is dropped
    # An alias also settles an ambiguous name.
    both = [*models, *parse_models([{"id": "azure/gpt-4o-mini", "context_length": 10}])]
    assert Catalogue(both).get("gpt-4o-mini") is None
    settled = Catalogue(both, {"gpt-4o-mini": "azure/gpt-4o-mini"})
    assert settled.resolve("GPT-4o-mini").id == "azure/gpt-4o-mini"


async def test_clients_names_reach_the_upstream_as_catalogue_ids(
    node: RunningNode, upstream: FakeUpstream, user_wallet: TestWallet
) -> None:
    """No models file: Claude Code's and the OpenAI examples' names are served and priced as
    the catalogue's entries, and the upstream is asked for the catalogue's id."""
    (token,) = await user_wallet.mint_tokens(100)
    claude = anthropic.AsyncAnthropic(base_url=node.api, api_key=token, max_retries=0)
    for asked, served in (
        ("claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4.5"),
        ("claude-opus-4-8", "anthropic/claude-opus-4.8"),
        ("claude-haiku-4-5-20251001", "anthropic/claude-haiku-4.5"),
    ):
        message = await claude.messages.create(
            model=asked, max_tokens=20, messages=[{"role": "user", "content": "hello there"}]
        )
        assert upstream.stats["last_request"]["model"] == served
        assert message.model == asked  # the translated reply names what the client asked
        usage = message.usage
        expected = expected_cost(model_entry(served), usage.input_tokens, usage.output_tokens)
        assert (usage.model_extra or {})["cost"]["total_msats"] == expected

    chat = openai.AsyncOpenAI(base_url=node.api, api_key=token, max_retries=0)
    for asked, served in (("gpt-4o", "openai/gpt-4o"), ("gpt-3.5-turbo", "openai/gpt-3.5-turbo")):
        reply = await chat.chat.completions.create(
            model=asked, max_tokens=20, messages=[{"role": "user", "content": "hello there"}]
        )
        assert upstream.stats["last_request"]["model"] == served
        assert reply.model == served  # the upstream's answer, passed through
        assert reply.usage is not None
        expected = expected_cost(
            model_entry(served), reply.usage.prompt_tokens, reply.usage.completion_tokens
        )
        assert (reply.usage.model_extra or {})["cost"]["total_msats"] == expected

    retrieved = await chat.models.retrieve("claude-sonnet-4-5")
    assert retrieved.id == "anthropic/claude-sonnet-4.5"
    await node.check_invariants()
