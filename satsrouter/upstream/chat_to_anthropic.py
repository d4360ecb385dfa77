"""OpenAI chat completions → Anthropic Messages, for clients of an Anthropic-only upstream.

This module translates requests; replies and streams go back in `anthropic_to_chat`.

What a request becomes:
- `system` and `developer` messages, wherever they are, become the top-level `system`
  (Anthropic has no system turn), in order, one text block each.
- User content parts: `text`; `image_url` with a `data:` URL (a base64 image block) or an
  http(s) URL (a `url` image block); `file` carrying a base64 PDF (a document block).
- Assistant `tool_calls` become `tool_use` blocks (arguments parsed back to an object);
  `tool` messages become `tool_result` blocks in a user turn. Consecutive turns of one role
  are merged into one, so tool results answering one assistant turn share a user turn.
- `tools` (functions) become Anthropic tools with `input_schema`; `tool_choice` auto, none,
  required (`any`) or one function (`tool`); `parallel_tool_calls: false` becomes
  `disable_parallel_tool_use`.
- `max_tokens` / `max_completion_tokens` → `max_tokens`, which Anthropic requires: absent,
  the model's whole completion budget (which the node reserved), capped there when larger.
- `temperature` (capped at Anthropic's 1), `top_p`, `top_k` (OpenRouter's), `stop` →
  `stop_sequences`, `stream`, `user` (or `safety_identifier`) → `metadata.user_id`.
- `reasoning_effort` low/medium/high → `thinking` with a budget, only when that is simple:
  the budget fits under `max_tokens` and no sampling option or forced tool rules it out
  (Anthropic refuses thinking with those); otherwise the request goes without thinking.
  `reasoning_details` an assistant message carries (as `anthropic_to_chat` gives them)
  go back as its thinking blocks, signatures intact.
- `cache_control` on a content part is passed on (OpenRouter's convention for Claude).
- Refused with a TranslationError naming the parameter (a 400 before anything is
  reserved): what Anthropic cannot do — `n` > 1, `logprobs`, `top_logprobs`, a JSON
  `response_format`, `audio` or non-text `modalities`, `prediction`, `logit_bias`,
  non-zero penalties, the legacy `functions`, `web_search_options`, `plugins`, non-function
  tools and content parts Anthropic has no block for.
- Ignored, never an error: `seed`, `store`, `metadata`, `service_tier`,
  `prompt_cache_key`, `stream_options` (the node always meters the stream), `verbosity`.
"""

from __future__ import annotations

from typing import Any

from satsrouter.upstream.anthropic_response import TranslationError, tool_input_of

# Used when neither the request nor the catalogue gives a completion limit.
DEFAULT_MAX_TOKENS = 4096
# reasoning_effort → thinking budget; each maps back to the same effort in `anthropic._effort`.
THINKING_BUDGETS = {"low": 2048, "medium": 8192, "high": 24576}
# Anthropic's smallest thinking budget.
MIN_THINKING_BUDGET = 1024
# Efforts that ask for no thinking at all.
_NO_THINKING = frozenset({"none", "minimal"})
# Anthropic's temperature range ends at 1 where OpenAI's ends at 2.
MAX_TEMPERATURE = 1.0

# Parameters Anthropic has no way to honour: present (and not the harmless default), 400.
_REFUSED = ("audio", "prediction", "functions", "function_call", "web_search_options", "plugins")


def _refuse(name: str, why: str = "is not supported by this model's provider") -> TranslationError:
    return TranslationError(f"`{name}` {why} (it speaks the Anthropic Messages API).")


def _check_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise _refuse("n", "must be 1: several choices are not available from this provider")
    if body.get("logprobs") not in (None, False):
        raise _refuse("logprobs")
    if body.get("top_logprobs") is not None:
        raise _refuse("top_logprobs")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _refuse("response_format", "other than text is not supported by this provider")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise _refuse("modalities", "other than ['text'] is not supported by this provider")
    if body.get("logit_bias"):
        raise _refuse("logit_bias")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise _refuse(name)
    for name in _REFUSED:
        if body.get(name) is not None:
            raise _refuse(name)


def _number(body: dict[str, Any], name: str) -> float | int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TranslationError(f"`{name}` must be a number.")
    return value


def _texts(content: Any, where: str) -> list[str]:
    """The text of a system, developer or tool message: a string or text parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise TranslationError(f"`{where}` must be a string or a list of text parts.")
    texts: list[str] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise TranslationError(f"`{where}.{i}` must be a text part.")
        if not isinstance(part.get("text"), str):
            raise TranslationError(f"`{where}.{i}.text` must be a string.")
        texts.append(part["text"])
    return texts


def _with_cache_control(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise TranslationError(f"`{where}.image_url.url` must be a URL.")
    if url.startswith("data:"):
        head, comma, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not comma or encoding != "base64" or not media_type:
            raise TranslationError(f"`{where}.image_url.url`: a data URL must be base64.")
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise TranslationError(f"`{where}.image_url.url` must be a data: or http(s) URL.")
    return _with_cache_control({"type": "image", "source": source}, part)


def _file_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file")
    file = file if isinstance(file, dict) else {}
    data = file.get("file_data")
    prefix = "data:application/pdf;base64,"
    if not isinstance(data, str) or not data.startswith(prefix):
        raise TranslationError(
            f"`{where}.file`: only a PDF given as file_data (a base64 data URL) is supported."
        )
    source = {"type": "base64", "media_type": "application/pdf", "data": data[len(prefix) :]}
    block: dict[str, Any] = {"type": "document", "source": source}
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"]
    return _with_cache_control(block, part)


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"`{where}` must be a string or a list of content parts.")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        at = f"{where}.{i}"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or not isinstance(kind, str):
            raise TranslationError(f"`{at}` must be a content part with a type.")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise TranslationError(f"`{at}.text` must be a string.")
            if part["text"]:  # Anthropic refuses empty text blocks
                blocks.append(_with_cache_control({"type": "text", "text": part["text"]}, part))
        elif kind == "image_url":
            blocks.append(_image_block(part, at))
        elif kind == "file":
            blocks.append(_file_block(part, at))
        else:
            raise TranslationError(f"`{at}`: content part type {kind!r} is not supported here.")
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or call.get("type", "function") != "function":
        raise TranslationError(f"`{where}` must be a function tool call.")
    call_id, name = call.get("id"), fn.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise TranslationError(f"`{where}` needs an id and a function name.")
    return {
        "type": "tool_use",
        "id": call_id,
        "name": name,
        "input": tool_input_of(fn.get("arguments")),
    }


def _thinking_blocks(details: Any) -> list[dict[str, Any]]:
    """Thinking blocks from the `reasoning_details` of an earlier answer; only signed ones
    (Anthropic refuses a thinking block without its signature)."""
    blocks: list[dict[str, Any]] = []
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        kind, text = detail.get("type"), detail.get("text")
        if kind == "reasoning.encrypted" and isinstance(detail.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": detail["data"]})
        elif kind == "reasoning.text" and isinstance(detail.get("signature"), str):
            thinking = text if isinstance(text, str) else ""
            blocks.append(
                {"type": "thinking", "thinking": thinking, "signature": detail["signature"]}
            )
    return blocks


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = _thinking_blocks(message.get("reasoning_details"))
    content = message.get("content")
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            key = "refusal" if kind == "refusal" else "text"
            if not isinstance(part, dict) or kind not in ("text", "refusal"):
                raise TranslationError(f"`{where}.content.{i}` must be a text or refusal part.")
            if not isinstance(part.get(key), str):
                raise TranslationError(f"`{where}.content.{i}.{key}` must be a string.")
            if part[key]:
                blocks.append(_with_cache_control({"type": "text", "text": part[key]}, part))
    elif content is not None:
        raise TranslationError(f"`{where}.content` must be a string, a list of parts or null.")
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise TranslationError(f"`{where}.tool_calls` must be a list.")
        blocks.extend(_tool_use(call, f"{where}.tool_calls.{i}") for i, call in enumerate(calls))
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"`{where}.tool_call_id` must be a non-empty string.")
    text = "\n\n".join(t for t in _texts(message.get("content"), f"{where}.content") if t)
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if text:
        block["content"] = text
    return block


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add blocks as a turn of `role`, merged into the last turn when it has the same role."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _conversation(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, turns) of the OpenAI `messages`."""
    if not isinstance(messages, list) or not messages:
        raise TranslationError("`messages` must be a non-empty list.")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise TranslationError(f"`{where}` must be an object.")
        role = message.get("role")
        if role in ("system", "developer"):
            for text in _texts(message.get("content"), f"{where}.content"):
                if text:
                    system.append({"type": "text", "text": text})
        elif role == "user":
            _append(turns, "user", _user_blocks(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, where))
        elif role == "tool":
            result = _tool_result(message, where)
            # Tool results come first in their user turn, as Anthropic requires.
            if turns and turns[-1]["role"] == "user":
                content = turns[-1]["content"]
                at = sum(1 for block in content if block["type"] == "tool_result")
                content.insert(at, result)
            else:
                turns.append({"role": "user", "content": [result]})
        else:
            raise TranslationError(
                f"`{where}.role` must be system, developer, user, assistant or tool."
            )
    if not turns:
        raise TranslationError("`messages` must hold at least one user or assistant message.")
    return system, turns


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("`tools` must be a list.")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise _refuse(f"tools.{i}", "must be a function tool for this provider")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise TranslationError(f"`tools.{i}.function.name` must be a non-empty string.")
        schema = fn.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise TranslationError(f"`tools.{i}.function.parameters` must be an object.")
        entry: dict[str, Any] = {"name": fn["name"], "input_schema": schema}
        if isinstance(fn.get("description"), str):
            entry["description"] = fn["description"]
        out.append(entry)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        out: dict[str, Any] = {"type": "auto"}
        if parallel is not False:
            return None  # Anthropic's default
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise TranslationError("`tool_choice` must be auto, none, required or a function by name.")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _max_tokens(body: dict[str, Any], model_cap: int | None, context: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TranslationError(f"`{name}` must be a positive integer.")
            # The reservation covers at most the model's cap: never let the upstream pass it.
            return min(value, model_cap) if model_cap else value
    return model_cap or min(DEFAULT_MAX_TOKENS, context)


def _stop(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise TranslationError("`stop` must be a string or a list of strings.")


def _thinking(body: dict[str, Any], out: dict[str, Any]) -> dict[str, Any] | None:
    effort = body.get("reasoning_effort")
    if effort is None or effort in _NO_THINKING:
        return None
    if effort not in THINKING_BUDGETS:
        raise TranslationError("`reasoning_effort` must be none, minimal, low, medium or high.")
    budget = min(THINKING_BUDGETS[effort], out["max_tokens"] - 1)
    forced = out.get("tool_choice", {}).get("type") in ("any", "tool")
    sampled = any(key in out for key in ("temperature", "top_p", "top_k"))
    if budget < MIN_THINKING_BUDGET or forced or sampled:
        return None
    return {"type": "enabled", "budget_tokens": budget}


def to_anthropic_request(
    body: dict[str, Any], model_id: str, max_completion_tokens: int | None, context_length: int
) -> dict[str, Any]:
    """Anthropic Messages body for an OpenAI chat body; TranslationError if it cannot be sent.

    `model_id` is the id the upstream knows; `max_completion_tokens` and `context_length`
    are the model's, from the catalogue (for `max_tokens` when the request has none).
    """
    _check_unsupported(body)
    system, turns = _conversation(body.get("messages"))
    out: dict[str, Any] = {"model": model_id, "messages": turns}
    if system:
        out["system"] = system
    out["max_tokens"] = _max_tokens(body, max_completion_tokens, context_length)
    temperature = _number(body, "temperature")
    if temperature is not None:
        out["temperature"] = min(max(temperature, 0), MAX_TEMPERATURE)
    for name in ("top_p", "top_k"):
        if (value := _number(body, name)) is not None:
            out[name] = value
    if body.get("stop") is not None and (stop := _stop(body["stop"])):
        out["stop_sequences"] = stop
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    if (thinking := _thinking(body, out)) is not None:
        out["thinking"] = thinking
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if body.get("stream") is True:
        out["stream"] = True
    return out
