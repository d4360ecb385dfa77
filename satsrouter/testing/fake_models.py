"""The fake upstream's model catalogue, in OpenRouter and Anthropic ``/v1/models`` shapes."""

from __future__ import annotations

import copy
import datetime
from typing import Any


def _model(
    model_id: str,
    name: str,
    *,
    created: int,
    context_length: int,
    max_completion_tokens: int,
    prompt: str,
    completion: str,
    tokenizer: str,
    input_modalities: list[str],
) -> dict[str, Any]:
    return {
        "id": model_id,
        "canonical_slug": model_id,
        "name": name,
        "created": created,
        "description": f"{name} (served by the satsrouter fake upstream)",
        "context_length": context_length,
        "architecture": {
            "modality": "+".join(input_modalities) + "->text",
            "input_modalities": input_modalities,
            "output_modalities": ["text"],
            "tokenizer": tokenizer,
            "instruct_type": None,
        },
        "pricing": {
            "prompt": prompt,
            "completion": completion,
            "request": "0",
            "image": "0",
            "web_search": "0",
            "internal_reasoning": "0",
        },
        "top_provider": {
            "context_length": context_length,
            "max_completion_tokens": max_completion_tokens,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": [
            "max_tokens",
            "temperature",
            "top_p",
            "stop",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "response_format",
            "tools",
            "tool_choice",
        ],
    }


_DEFAULT_MODELS: list[dict[str, Any]] = [
    _model(
        "openai/gpt-4o-mini",
        "OpenAI: GPT-4o-mini",
        created=1721260800,
        context_length=128000,
        max_completion_tokens=16384,
        prompt="0.00000015",
        completion="0.0000006",
        tokenizer="GPT",
        input_modalities=["text", "image"],
    ),
    _model(
        "openai/gpt-4o",
        "OpenAI: GPT-4o",
        created=1715558400,
        context_length=128000,
        max_completion_tokens=16384,
        prompt="0.0000025",
        completion="0.00001",
        tokenizer="GPT",
        input_modalities=["text", "image"],
    ),
    _model(
        "anthropic/claude-3.5-sonnet",
        "Anthropic: Claude 3.5 Sonnet",
        created=1729555200,
        context_length=200000,
        max_completion_tokens=8192,
        prompt="0.000003",
        completion="0.000015",
        tokenizer="Claude",
        input_modalities=["text", "image"],
    ),
    _model(
        "test/cheap",
        "Test: Cheap",
        created=1700000000,
        context_length=8192,
        max_completion_tokens=1024,
        prompt="0.0000001",
        completion="0.0000002",
        tokenizer="Other",
        input_modalities=["text"],
    ),
    # Current models under their OpenRouter ids, at OpenRouter's list prices (Claude Opus
    # 4.8, the id Claude Code 2.1 asks for by default, priced like the other Opus 4 models).
    # Claude Code 2.1.332's default model (`claude-opus-5-5`) and its `haiku` alias.
    _model(
        "anthropic/claude-opus-5.5",
        "Anthropic: Claude Opus 5.5",
        created=1780272000,
        context_length=200000,
        max_completion_tokens=64000,
        prompt="0.000005",
        completion="0.000025",
        tokenizer="Claude",
        input_modalities=["text", "image"],
    ),
    _model(
        "anthropic/claude-haiku-5.5",
        "Anthropic: Claude Haiku 5.5",
        created=1780272000,
        context_length=200000,
        max_completion_tokens=64000,
        prompt="0.000001",
        completion="0.000005",
        tokenizer="Claude",
        input_modalities=["text", "image"],
    ),
    _model(
        "anthropic/claude-opus-4.8",
        "Anthropic: Claude Opus 4.8",
        created=1767225600,
        context_length=200000,
        max_completion_tokens=32000,
        prompt="0.000015",
        completion="0.000075",
        tokenizer="Claude",
        input_modalities=["text", "image"],
    ),
    _model(
        "anthropic/claude-opus-4.1",
        "Anthropic: Claude Opus 4.1",
        created=1754411591,
        context_length=200000,
        max_completion_tokens=32000,
        prompt="0.000015",
        completion="0.000075",
        tokenizer="Claude",
        input_modalities=["text", "image"],
    ),
    _model(
        "anthropic/claude-sonnet-4.5",
        "Anthropic: Claude Sonnet 4.5",
        created=1759161676,
        context_length=1000000,
        max_completion_tokens=64000,
        prompt="0.000003",
        completion="0.000015",
        tokenizer="Claude",
        input_modalities=["text", "image"],
    ),
    _model(
        "anthropic/claude-sonnet-4",
        "Anthropic: Claude Sonnet 4",
        created=1747930371,
        context_length=1000000,
        max_completion_tokens=64000,
        prompt="0.000003",
        completion="0.000015",
        tokenizer="Claude",
        input_modalities=["text", "image"],
    ),
    _model(
        "anthropic/claude-haiku-4.5",
        "Anthropic: Claude Haiku 4.5",
        created=1760547638,
        context_length=200000,
        max_completion_tokens=64000,
        prompt="0.000001",
        completion="0.000005",
        tokenizer="Claude",
        input_modalities=["text", "image"],
    ),
    _model(
        "anthropic/claude-3.7-sonnet",
        "Anthropic: Claude 3.7 Sonnet",
        created=1740422110,
        context_length=200000,
        max_completion_tokens=64000,
        prompt="0.000003",
        completion="0.000015",
        tokenizer="Claude",
        input_modalities=["text", "image"],
    ),
    _model(
        "openai/gpt-3.5-turbo",
        "OpenAI: GPT-3.5 Turbo",
        created=1685232000,
        context_length=16385,
        max_completion_tokens=4096,
        prompt="0.0000005",
        completion="0.0000015",
        tokenizer="GPT",
        input_modalities=["text"],
    ),
    _model(
        "openai/gpt-4o-2024-08-06",
        "OpenAI: GPT-4o (2024-08-06)",
        created=1722902400,
        context_length=128000,
        max_completion_tokens=16384,
        prompt="0.0000025",
        completion="0.00001",
        tokenizer="GPT",
        input_modalities=["text", "image"],
    ),
    _model(
        "openai/gpt-4.1",
        "OpenAI: GPT-4.1",
        created=1744651385,
        context_length=1047576,
        max_completion_tokens=32768,
        prompt="0.000002",
        completion="0.000008",
        tokenizer="GPT",
        input_modalities=["text", "image"],
    ),
    _model(
        "openai/gpt-5",
        "OpenAI: GPT-5",
        created=1754587413,
        context_length=400000,
        max_completion_tokens=128000,
        prompt="0.00000125",
        completion="0.00001",
        tokenizer="GPT",
        input_modalities=["text", "image"],
    ),
    _model(
        "google/gemini-2.5-pro",
        "Google: Gemini 2.5 Pro",
        created=1750169544,
        context_length=1048576,
        max_completion_tokens=65536,
        prompt="0.00000125",
        completion="0.00001",
        tokenizer="Gemini",
        input_modalities=["text", "image"],
    ),
    _model(
        "google/gemini-2.5-flash",
        "Google: Gemini 2.5 Flash",
        created=1750172488,
        context_length=1048576,
        max_completion_tokens=65535,
        prompt="0.0000003",
        completion="0.0000025",
        tokenizer="Gemini",
        input_modalities=["text", "image"],
    ),
    _model(
        "meta-llama/llama-3.1-70b-instruct",
        "Meta: Llama 3.1 70B Instruct",
        created=1721692800,
        context_length=131072,
        max_completion_tokens=16384,
        prompt="0.0000004",
        completion="0.0000004",
        tokenizer="Llama3",
        input_modalities=["text"],
    ),
    _model(
        "mistralai/mistral-large",
        "Mistral Large",
        created=1708905600,
        context_length=128000,
        max_completion_tokens=4096,
        prompt="0.000002",
        completion="0.000006",
        tokenizer="Mistral",
        input_modalities=["text"],
    ),
    _model(
        "deepseek/deepseek-chat",
        "DeepSeek: DeepSeek V3",
        created=1735241320,
        context_length=163840,
        max_completion_tokens=163840,
        prompt="0.0000003",
        completion="0.00000085",
        tokenizer="DeepSeek",
        input_modalities=["text"],
    ),
]


def default_models() -> list[dict[str, Any]]:
    """A fresh copy of the default model catalogue (OpenRouter ``/models`` entries)."""
    return copy.deepcopy(_DEFAULT_MODELS)


def anthropic_models(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The catalogue as Anthropic's ``/v1/models`` page (OpenRouter fields kept alongside)."""
    data = [anthropic_model(m) for m in models]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def anthropic_model(model: dict[str, Any]) -> dict[str, Any]:
    """One entry with Anthropic's ``type``, ``display_name`` and ``created_at`` added."""
    created = model.get("created")
    when = datetime.datetime.fromtimestamp(created if isinstance(created, int) else 0, datetime.UTC)
    return {
        **model,
        "type": "model",
        "display_name": model.get("name", model["id"]),
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
