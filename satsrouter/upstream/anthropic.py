"""Anthropic Messages ⇄ OpenAI chat completions, for upstreams that speak only OpenAI.

This module translates requests; replies are in `anthropic_response`, streams in
`anthropic_stream`, usage and local counts in `anthropic_usage` (all re-exported here).

Request fields that OpenAI chat has no equivalent for are dropped: `top_k`, `thinking`
(extended thinking needs Anthropic-signed blocks; earlier `thinking` blocks in the history
are dropped too), `cache_control` everywhere, `metadata` other than `user_id`,
`service_tier`, `container`, `mcp_servers`. The model id is copied unchanged; the caller
maps it. Server tools (web search, code execution, …) and file-id sources cannot be served
by an OpenAI upstream and raise `TranslationError`.
"""

from __future__ import annotations

from typing import Any

import orjson

from satsrouter.upstream.anthropic_response import (
    RAW_ARGUMENTS_KEY,
    TranslationError,
    anthropic_usage,
    stop_reason_of,
    to_anthropic_response,
    tool_input_of,
)
from satsrouter.upstream.anthropic_stream import StreamTranslator, error_event, sse_event
from satsrouter.upstream.anthropic_usage import (
    AnthropicStreamUsage,
    anthropic_text_of,
    count_anthropic_prompt_tokens,
    usage_from_anthropic,
)

__all__ = [
    "RAW_ARGUMENTS_KEY",
    "AnthropicStreamUsage",
    "StreamTranslator",
    "TranslationError",
    "anthropic_text_of",
    "anthropic_usage",
    "count_anthropic_prompt_tokens",
    "error_event",
    "sse_event",
    "stop_reason_of",
    "to_anthropic_response",
    "to_openai_request",
    "tool_input_of",
    "usage_from_anthropic",
]

# Text blocks of one system prompt or one assistant turn are joined into one OpenAI string.
_JOIN = "\n\n"
# Prefix of a tool result whose `is_error` is set: OpenAI tool messages have no error flag.
TOOL_ERROR_PREFIX = "Error: "
# Block types with no OpenAI equivalent that are safe to leave out of the history.
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        raise TranslationError(f"{where} must be a string or a list of content blocks")
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise TranslationError(f"{where}.{i} must be a content block with a type")
    return content


def _text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise TranslationError(f"{where}.text must be a string")
    return text


def _system(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts: list[str] = []
    for i, block in enumerate(_blocks(system, "system")):
        if block["type"] != "text":
            raise TranslationError(f"system.{i}: only text blocks are allowed")
        texts.append(_text(block, f"system.{i}"))
    return _JOIN.join(text for text in texts if text)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise TranslationError(f"{where}.source must be an object")
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise TranslationError(f"{where}.source needs media_type and data")
        url = f"data:{media};base64,{data}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise TranslationError(f"{where}: image source {kind!r} is not supported here")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and isinstance(source.get("data"), str):
        if source.get("type") == "text":
            return {"type": "text", "text": source["data"]}
        if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
            title = block.get("title")
            return {
                "type": "file",
                "file": {
                    "filename": title if isinstance(title, str) and title else "document.pdf",
                    "file_data": f"data:application/pdf;base64,{source['data']}",
                },
            }
    raise TranslationError(f"{where}: only text and base64 PDF documents are supported here")


def _user_part(block: dict[str, Any], where: str) -> dict[str, Any] | None:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": _text(block, where)}
    if kind == "image":
        return _image_part(block, where)
    if kind == "document":
        return _document_part(block, where)
    if kind in _DROPPED_BLOCKS:
        return None
    raise TranslationError(f"{where}: content block type {kind!r} is not supported here")


def _tool_result(
    block: dict[str, Any], where: str, extra_parts: list[dict[str, Any]]
) -> dict[str, Any]:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise TranslationError(f"{where}.tool_use_id must be a non-empty string")
    content = block.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for i, part in enumerate(_blocks(content, f"{where}.content")):
            if part["type"] == "text":
                texts.append(_text(part, f"{where}.content.{i}"))
            elif part["type"] == "image":
                # OpenAI tool messages carry text only: images ride in the user message that
                # follows the tool messages.
                extra_parts.append(_image_part(part, f"{where}.content.{i}"))
            else:
                raise TranslationError(
                    f"{where}.content.{i}: {part['type']!r} is not supported in a tool result"
                )
    text = _JOIN.join(texts)
    if block.get("is_error") is True:
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _user(content: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        if block["type"] == "tool_result":
            tool_messages.append(_tool_result(block, f"{where}.{i}", parts))
        else:
            part = _user_part(block, f"{where}.{i}")
            if part is not None:
                parts.append(part)
    out = tool_messages
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts or not tool_messages:
        out.append({"role": "user", "content": parts})
    return out


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name, tool_input = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise TranslationError(f"{where}: tool_use needs a string id and name")
    if not isinstance(tool_input, dict):
        raise TranslationError(f"{where}.input must be an object")
    raw = tool_input.get(RAW_ARGUMENTS_KEY)
    if len(tool_input) == 1 and isinstance(raw, str):
        arguments = raw  # the upstream's own unparsable arguments, returned verbatim
    else:
        arguments = orjson.dumps(tool_input).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _assistant(content: list[dict[str, Any]], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            texts.append(_text(block, f"{where}.{i}"))
        elif kind == "tool_use":
            calls.append(_tool_call(block, f"{where}.{i}"))
        elif kind not in _DROPPED_BLOCKS:
            raise TranslationError(f"{where}.{i}: {kind!r} is not supported in an assistant turn")
    text = _JOIN.join(t for t in texts if t)
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise TranslationError("messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise TranslationError(f"{where} must be an object")
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise TranslationError(f"{where}.role must be 'user' or 'assistant'")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "user":
            out.extend(_user(_blocks(content, f"{where}.content"), f"{where}.content"))
        else:
            out.append(_assistant(_blocks(content, f"{where}.content"), f"{where}.content"))
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise TranslationError(f"tools.{i} must be an object with a name")
        if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
            raise TranslationError(
                f"tools.{i}: server tool {tool.get('type') or tool['name']!r} is not "
                "available with this model"
            )
        fn: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, out: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise TranslationError("tool_choice must be an object")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise TranslationError("tool_choice.type must be auto, any, tool (with a name) or none")
    # OpenAI rejects parallel_tool_calls on a request without tools.
    if choice.get("disable_parallel_tool_use") is True and out.get("tools"):
        out["parallel_tool_calls"] = False


def to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI chat-completions body for an Anthropic Messages body; TranslationError if invalid."""
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    system = _system(body.get("system"))
    out["messages"] = ([{"role": "system", "content": system}] if system else []) + _messages(
        body.get("messages")
    )
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise TranslationError("max_tokens must be a positive integer")
        out["max_tokens"] = max_tokens
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise TranslationError("stop_sequences must be a list of strings")
        if stop:
            out["stop"] = stop
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TranslationError(f"{key} must be a number")
            out[key] = value
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], out)
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out
