"""Anthropic Messages ⇄ OpenAI chat completions, for upstreams that speak only OpenAI.

This module translates requests; replies are in `anthropic_response`, streams in
`anthropic_stream`, usage and local counts in `anthropic_usage` (all re-exported here).

What a request becomes (`dialect` "openrouter" is OpenAI chat plus OpenRouter's extensions):
- `system`, and `system`-role entries anywhere in `messages` (Claude Code sends these for
  models it does not know), become OpenAI system messages in the same order.
- `output_config.format` (and the older beta `output_format`) of type `json_schema` becomes
  `response_format` with that schema.
- `thinking` (`enabled` with a budget, or `adaptive`) becomes OpenRouter's `reasoning`, or
  `reasoning_effort` for an OpenAI model whose catalogue entry lists it (others would refuse
  the request); reasoning comes back as `thinking` blocks (only their signature with
  `display: "omitted"`). Earlier `thinking` blocks with an upstream signature go back to
  OpenRouter as `reasoning_details`; without one they are dropped.
- Tools with `defer_loading` stay hidden from the model until a tool search's `tool_reference`
  result names them, as Anthropic does.
- The server tool `web_search_*` becomes OpenRouter's web plugin; an OpenAI upstream has no
  equivalent, so such a request (like any other server tool) is refused with a 400.
- `top_k` goes to OpenRouter only; `metadata.user_id` becomes `user` (a digest when longer
  than OpenAI allows).
- Ignored, never an error: `cache_control` everywhere, `context_management`, `service_tier`,
  `container`, `mcp_servers`, other `metadata`, and `anthropic-beta` headers.
"""

from __future__ import annotations

import hashlib
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
    "thinking_display",
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


def _system(system: Any, where: str = "system") -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts: list[str] = []
    for i, block in enumerate(_blocks(system, where)):
        if block["type"] != "text":
            raise TranslationError(f"{where}.{i}: only text blocks are allowed")
        texts.append(_text(block, f"{where}.{i}"))
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
            elif part["type"] == "tool_reference" and isinstance(part.get("tool_name"), str):
                # A tool search's answer: the named deferred tool is sent from now on.
                texts.append(f"Tool {part['tool_name']} is now available.")
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


def _reasoning_detail(block: dict[str, Any], index: int) -> dict[str, Any] | None:
    """OpenRouter's `reasoning_details` entry for a thinking block it signed, else None."""
    if block["type"] == "redacted_thinking" and isinstance(block.get("data"), str):
        return {"type": "reasoning.encrypted", "data": block["data"], "index": index}
    signature = block.get("signature")
    if block["type"] == "thinking" and isinstance(signature, str) and signature:
        text = block.get("thinking")
        return {
            "type": "reasoning.text",
            "text": text if isinstance(text, str) else "",
            "signature": signature,
            "index": index,
        }
    return None


def _assistant(content: list[dict[str, Any]], where: str, dialect: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            texts.append(_text(block, f"{where}.{i}"))
        elif kind == "tool_use":
            calls.append(_tool_call(block, f"{where}.{i}"))
        elif kind in _DROPPED_BLOCKS:
            if dialect == "openrouter" and (detail := _reasoning_detail(block, len(details))):
                details.append(detail)
        else:
            raise TranslationError(f"{where}.{i}: {kind!r} is not supported in an assistant turn")
    text = _JOIN.join(t for t in texts if t)
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    if details:
        message["reasoning_details"] = details
    return message


def _messages(raw: Any, dialect: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise TranslationError("messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise TranslationError(f"{where} must be an object")
        role, content = message.get("role"), message.get("content")
        if role == "system":
            # A mid-conversation system entry (Claude Code's beta): OpenAI chat allows a
            # system message anywhere, so it stays where the client put it.
            if system := _system(content, f"{where}.content"):
                out.append({"role": "system", "content": system})
        elif role not in ("user", "assistant"):
            raise TranslationError(f"{where}.role must be 'user', 'assistant' or 'system'")
        elif isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "user":
            out.extend(_user(_blocks(content, f"{where}.content"), f"{where}.content"))
        else:
            blocks = _blocks(content, f"{where}.content")
            out.append(_assistant(blocks, f"{where}.content", dialect))
    return out


def _referenced_tools(messages: Any) -> set[str]:
    """Names of deferred tools a tool search has loaded (`tool_reference` in tool results)."""
    names: set[str] = set()
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            inner = block.get("content") if isinstance(block, dict) else None
            for part in inner if isinstance(inner, list) else ():
                if isinstance(part, dict) and part.get("type") == "tool_reference":
                    names.add(str(part.get("tool_name")))
    return names


def _tools(tools: Any, dialect: str, loaded: set[str], out: dict[str, Any]) -> None:
    """OpenAI `tools` for the client's own tools; web search as OpenRouter's web plugin.

    A tool with `defer_loading` is hidden from the model, as Anthropic does, until a tool
    search loads it (`loaded`).
    """
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list")
    functions: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise TranslationError(f"tools.{i} must be an object with a name")
        if tool.get("defer_loading") is True and tool["name"] not in loaded:
            continue
        kind = tool.get("type")
        if isinstance(kind, str) and kind.startswith("web_search_") and dialect == "openrouter":
            # The plugin runs once per request, within the searches reserved for `max_uses`;
            # it has no domain filters, so `allowed_domains`/`blocked_domains` cannot be kept.
            out["plugins"] = [{"id": "web"}]
            continue
        if kind not in (None, "custom") or "input_schema" not in tool:
            raise TranslationError(
                f"tools.{i}: the server tool {kind or tool['name']!r} is not available "
                "from this model's provider"
            )
        fn: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        functions.append({"type": "function", "function": fn})
    if functions:
        out["tools"] = functions


# OpenAI refuses a longer `user`; Claude Code's user ids are longer (account and session).
_MAX_USER_ID = 64


def _user_id(user_id: str) -> str:
    """The client's user id, or a stable digest of it when it is too long for OpenAI."""
    if len(user_id) <= _MAX_USER_ID:
        return user_id
    return "sha256:" + hashlib.sha256(user_id.encode()).hexdigest()[:32]


def thinking_display(body: dict[str, Any]) -> str | None:
    """How reasoning comes back: None (thinking off: left out), "summarized" or "omitted"
    (thinking blocks that carry only the upstream's signature, as Claude Code asks)."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive"):
        return None
    return "omitted" if thinking.get("display") == "omitted" else "summarized"


# Anthropic's effort levels → OpenAI/OpenRouter's (which stop at "high").
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


def _effort(body: dict[str, Any], budget: int | None) -> str | None:
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if isinstance(effort, str) and effort in _EFFORTS:
        return _EFFORTS[effort]
    if budget is None:
        return None
    # A thinking budget read as an effort: Anthropic's minimum is 1024 tokens.
    return "low" if budget <= 4096 else "medium" if budget <= 16384 else "high"


def _thinking(body: dict[str, Any], dialect: str, reasoning_effort: bool) -> dict[str, Any]:
    if thinking_display(body) is None:
        return {}
    thinking = body["thinking"]
    budget = thinking.get("budget_tokens")
    if budget is not None and (
        not isinstance(budget, int) or isinstance(budget, bool) or budget < 1
    ):
        raise TranslationError("thinking.budget_tokens must be a positive integer")
    effort = _effort(body, budget)
    if dialect == "openrouter":
        if budget is not None:
            return {"reasoning": {"max_tokens": budget}}
        return {"reasoning": {"effort": effort} if effort else {"enabled": True}}
    if reasoning_effort:
        return {"reasoning_effort": effort or "medium"}
    return {}


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        fmt = body.get("output_format")  # the structured-outputs beta's spelling
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise TranslationError("output_config.format.type must be 'json_schema'")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise TranslationError("output_config.format.schema must be an object")
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


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


def to_openai_request(
    body: dict[str, Any], dialect: str = "openai", reasoning_effort: bool = False
) -> dict[str, Any]:
    """OpenAI chat-completions body for an Anthropic Messages body; TranslationError if invalid.

    `dialect` is "openai" or "openrouter"; `reasoning_effort` says whether the model accepts
    OpenAI's `reasoning_effort` (OpenRouter takes `reasoning` for every model).
    """
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    system = _system(body.get("system"))
    out["messages"] = ([{"role": "system", "content": system}] if system else []) + _messages(
        body.get("messages"), dialect
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
    for key in ("temperature", "top_p", "top_k"):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TranslationError(f"{key} must be a number")
            if key != "top_k" or dialect == "openrouter":  # OpenAI has no top_k
                out[key] = value
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = _user_id(metadata["user_id"])
    out.update(_thinking(body, dialect, reasoning_effort))
    if "reasoning_effort" in out and "max_tokens" in out:
        # OpenAI's reasoning models refuse `max_tokens`.
        out["max_completion_tokens"] = out.pop("max_tokens")
    if (response_format := _response_format(body)) is not None:
        out["response_format"] = response_format
    if body.get("tools"):
        _tools(body["tools"], dialect, _referenced_tools(body.get("messages")), out)
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], out)
        if "tools" not in out:
            # Only server tools (now a plugin), or none: OpenAI refuses a choice without tools.
            out.pop("tool_choice", None)
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out
