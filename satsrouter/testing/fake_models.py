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
