"""The Anthropic Messages API for the fake upstream (``dialect="anthropic"``).

``POST /v1/messages``: ``model``, ``messages`` and ``max_tokens`` are required
(missing ``max_tokens`` → 400 ``invalid_request_error``); ``system`` (a string or
text blocks), ``tools``, ``tool_choice`` and ``stream`` optional. Errors use
Anthropic's body ``{"type": "error", "error": {"type", "message"}}``; a wrong
``x-api-key`` is 401 ``authentication_error``.

``input_tokens`` (the formula; ``prompt_tokens`` overrides it) is::

    Σ over messages (4 + words of its string content or of its text blocks)
      + words of system

(image, tool_use and tool_result blocks count 0). With ``cache_read_tokens: K``,
min(K, formula) moves to ``cache_read_input_tokens``, and with ``cache_write_tokens: W``
min(W, what is left) to ``cache_creation_input_tokens``, so that the three add up to
the formula; both are 0 by default.

Reply: text ``"w1 … wN"``, N = ``completion_tokens`` capped by ``max_tokens``
(``stop_reason`` ``max_tokens`` when capped, else ``end_turn``). Tool call: when
``tools`` is non-empty, ``tool_choice`` is not ``{"type": "none"}`` and the last
message carries no ``tool_result`` block, the reply is one ``tool_use`` block for the
first tool with input ``{"query": "w1 w2"}``, ``stop_reason: "tool_use"`` and
``output_tokens`` = 5 (``TOOL_CALL_TOKENS``, not capped); the ``tool_call`` behaviour
turns calls off or scripts one (name and input, streamed in two halves).

Stream: ``event:`` + ``data:`` pairs message_start (usage with the input counts and
``output_tokens: 1``), content_block_start, ping, content_block_delta (a
``text_delta`` per word, or four ``input_json_delta`` fragments
``{"query": "`` · ``w1`` · `` w2`` · ``"}``), content_block_stop, message_delta
(stop_reason, ``usage.output_tokens`` = N), message_stop. ``drop_midstream`` closes
after ``fail_after_chunks`` content_block_delta events.

``omit_usage``: Anthropic always sends ``usage``, so the fake keeps the object with
every count 0 (input, output, cache) — the node has to treat all-zero usage as missing.

``POST /v1/messages/count_tokens`` → ``{"input_tokens": formula}``; behaviour
``count_tokens: false`` makes it 404 ``not_found_error`` (an upstream without it).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from satsrouter_dev.fake_core import (
    TOOL_CALL_INPUT,
    TOOL_CALL_TOKENS,
    Host,
    Plan,
    anthropic_error,
    choose_tool,
    read_json,
    reply_length,
    send_body,
    send_events,
    start_reply,
    tool_call_fragments,
    typed_sse,
    word_count,
    words,
)


def _text_words(content: object) -> int:
    if isinstance(content, str):
        return word_count(content)
    if not isinstance(content, list):
        return 0
    return sum(
        word_count(block.get("text"))
        for block in content
        if isinstance(block, dict) and block.get("type") == "text"
    )


def input_tokens_of(messages: object, system: object = None) -> int:
    """The documented Anthropic input token formula (before moving any to the cache)."""
    total = _text_words(system)
    if isinstance(messages, list):
        for message in messages:
            total += 4 + _text_words(message.get("content") if isinstance(message, dict) else None)
    return total


def _is_tool_result(message: object) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _tool_name(body: dict[str, Any], plan: Plan) -> tuple[str, str | None] | None:
    """The tool the reply calls and its scripted arguments, or None for a text reply."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list):
        return None
    if isinstance(choice, dict) and choice.get("type") == "none":
        return None
    declared = []
    for tool in tools:
        name = tool.get("name") if isinstance(tool, dict) else None
        declared.append(name if isinstance(name, str) else "tool")
    messages = body.get("messages")
    results = [_is_tool_result(m) for m in messages] if isinstance(messages, list) else []
    return choose_tool(
        plan, declared, answered=bool(results) and results[-1], any_answer=any(results)
    )


def _validate(body: dict[str, Any], *, need_max_tokens: bool) -> web.Response | None:
    model = body.get("model")
    messages = body.get("messages")
    max_tokens = body.get("max_tokens")
    if not isinstance(model, str) or not model:
        return anthropic_error(400, "model: Field required")
    if not isinstance(messages, list):
        return anthropic_error(400, "messages: Field required")
    if need_max_tokens and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        return anthropic_error(400, "max_tokens: Field required")
    return None


def _input_counts(plan: Plan, body: dict[str, Any]) -> tuple[int, int, int]:
    """(input_tokens, cache_read_input_tokens, cache_creation_input_tokens)."""
    total = plan.prompt_tokens
    if total is None:
        total = input_tokens_of(body.get("messages"), body.get("system"))
    cached = min(plan.cache_read_tokens, total)
    written = min(plan.cache_write_tokens, total - cached)
    return total - cached - written, cached, written


async def count_tokens(host: Host, request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``."""
    parsed = await read_json(host, request, anthropic_error)
    if isinstance(parsed, web.StreamResponse):
        return parsed
    body, plan = parsed
    if not plan.count_tokens:
        return anthropic_error(404, "count_tokens is not available on this upstream")
    invalid = _validate(body, need_max_tokens=False)
    if invalid is not None:
        return invalid
    failed = await start_reply(host, request, plan, anthropic_error)
    if failed is not None:
        return failed
    total = plan.prompt_tokens
    if total is None:
        total = input_tokens_of(body.get("messages"), body.get("system"))
    return await send_body(request, plan, orjson.dumps({"input_tokens": total}))


async def messages(host: Host, request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    parsed = await read_json(host, request, anthropic_error)
    if isinstance(parsed, web.StreamResponse):
        return parsed
    body, plan = parsed
    invalid = _validate(body, need_max_tokens=True)
    if invalid is not None:
        return invalid
    failed = await start_reply(host, request, plan, anthropic_error)
    if failed is not None:
        return failed

    tool = _tool_name(body, plan)
    seq = host.next_id()
    n, capped = reply_length(plan, body.get("max_tokens"))
    stop_reason = "max_tokens" if capped else "end_turn"
    block: dict[str, Any] = {"type": "text", "text": " ".join(words(n))}
    if tool is not None:
        n, stop_reason = TOOL_CALL_TOKENS, "tool_use"
        block = {
            "type": "tool_use",
            "id": f"toolu_fake{seq:08d}",
            "name": tool[0],
            "input": dict(TOOL_CALL_INPUT) if tool[1] is None else orjson.loads(tool[1]),
        }
    input_tokens, cached, written = _input_counts(plan, body)
    output_tokens = n
    if plan.omit_usage:
        input_tokens, cached, written, output_tokens = 0, 0, 0, 0
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }
    message: dict[str, Any] = {
        "id": f"msg_fake{seq:08d}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    if body.get("stream") is not True:
        return await send_body(request, plan, orjson.dumps(message))

    deltas: list[dict[str, Any]]
    if tool is None:
        start_block: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [
            {"type": "text_delta", "text": w if i == 0 else " " + w} for i, w in enumerate(words(n))
        ]
    else:
        start_block = {**block, "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": f} for f in tool_call_fragments(tool[1])
        ]
    opening = {
        **message,
        "content": [],
        "stop_reason": None,
        # Like Anthropic: message_start reports the input and a provisional 1 output token.
        "usage": {**usage, "output_tokens": 0 if plan.omit_usage else 1},
    }
    events = [
        typed_sse("message_start", {"type": "message_start", "message": opening}),
        typed_sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": start_block},
        ),
        typed_sse("ping", {"type": "ping"}),
    ]
    events += [
        typed_sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
        for d in deltas
    ]
    midstream = plan.fail == "drop_midstream"
    if midstream:
        events = events[: 3 + plan.fail_after_chunks]
    else:
        events += [
            typed_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            typed_sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            ),
            typed_sse("message_stop", {"type": "message_stop"}),
        ]
    return await send_events(host, request, plan, events, abort=midstream)
