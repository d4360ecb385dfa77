"""The OpenAI Responses API (``POST /v1/responses``) for the fake upstream.

``input`` is a string (one user message) or a list of items; ``instructions``
optional. Reply ``"w1 … wN"``, N = ``completion_tokens`` capped by
``max_output_tokens``; when the cap bites the response is ``status: "incomplete"``
with ``incomplete_details: {"reason": "max_output_tokens"}`` (as OpenAI does) and the
stream ends with ``response.incomplete`` instead of ``response.completed``.
``tools`` are accepted and ignored (the reply is always text).

``input_tokens`` (unless ``prompt_tokens`` overrides it) is::

    Σ over input messages (4 + words of its text) + words of instructions

where a message is an item with a ``role`` (other items, e.g. ``function_call_output``,
count 0) and its text is its string ``content`` or the ``text`` of each content part
(``input_text``, ``output_text``). ``output_tokens`` = N, ``total_tokens`` the sum,
``cached_tokens`` and ``reasoning_tokens`` 0. ``omit_usage`` → ``usage: null``.

Stream (``stream: true``): typed SSE, ``event: <type>`` and ``data: {"type",
"sequence_number", …}``: response.created, response.in_progress,
response.output_item.added, response.content_part.added, one
response.output_text.delta per word, response.output_text.done,
response.content_part.done, response.output_item.done, then response.completed
(or response.incomplete) carrying the whole response with its usage. No ``[DONE]``.
``drop_midstream`` closes the stream after ``fail_after_chunks`` deltas.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from satsrouter_dev.fake_core import (
    Host,
    openai_error,
    read_json,
    reply_length,
    send_body,
    send_events,
    start_reply,
    typed_sse,
    word_count,
    words,
)
from satsrouter_dev.fake_openai import prompt_tokens_of


def input_tokens_of(input_value: object, instructions: object = None) -> int:
    """The documented ``input_tokens`` of a Responses request."""
    if isinstance(input_value, str):
        items: list[Any] = [{"role": "user", "content": input_value}]
    elif isinstance(input_value, list):
        items = [item for item in input_value if isinstance(item, dict) and "role" in item]
    else:
        items = []
    return prompt_tokens_of(items) + word_count(instructions)


async def responses(host: Host, request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``."""
    parsed = await read_json(host, request, openai_error)
    if isinstance(parsed, web.StreamResponse):
        return parsed
    body, plan = parsed
    model = body.get("model")
    input_value = body.get("input")
    if not isinstance(model, str) or not model:
        return openai_error(400, "'model' is required")
    if not isinstance(input_value, str | list):
        return openai_error(400, "'input' must be a string or a list of items")
    failed = await start_reply(host, request, plan, openai_error)
    if failed is not None:
        return failed

    n, capped = reply_length(plan, body.get("max_output_tokens"))
    prompt = (
        plan.prompt_tokens
        if plan.prompt_tokens is not None
        else input_tokens_of(input_value, body.get("instructions"))
    )
    usage = None if plan.omit_usage else _usage(prompt, n)
    seq = host.next_id()
    text = " ".join(words(n))
    message = {
        "type": "message",
        "id": f"msg_fake{seq:08d}",
        "status": "incomplete" if capped else "completed",
        "role": "assistant",
        "content": [_text_part(text)],
    }
    final = _response(body, f"resp_fake{seq:08d}", model, "incomplete" if capped else "completed")
    final.update(output=[message], usage=usage)
    if capped:
        final["incomplete_details"] = {"reason": "max_output_tokens"}
    if body.get("stream") is not True:
        return await send_body(request, plan, orjson.dumps(final))

    events = _events(final, message, n)
    midstream = plan.fail == "drop_midstream"
    if midstream:
        # Four events precede the first delta.
        events = events[: 4 + plan.fail_after_chunks]
    return await send_events(host, request, plan, events, abort=midstream)


def _usage(prompt: int, n: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": n,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + n,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _response(body: dict[str, Any], rid: str, model: str, status: str) -> dict[str, Any]:
    """A response object without output or usage (as ``response.created`` shows it)."""
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": body.get("metadata", {}),
    }


def _events(final: dict[str, Any], message: dict[str, Any], n: int) -> list[bytes]:
    """The whole event sequence of a streamed response, numbered from 0."""
    pending = {**final, "status": "in_progress", "output": [], "usage": None}
    pending["incomplete_details"] = None
    item_id = message["id"]
    text = message["content"][0]["text"]
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    payloads: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": _text_part("")},
    ]
    payloads.extend(
        {
            "type": "response.output_text.delta",
            **where,
            "delta": w if i == 0 else " " + w,
            "logprobs": [],
        }
        for i, w in enumerate(words(n))
    )
    payloads += [
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": _text_part(text)},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": f"response.{final['status']}", "response": final},
    ]
    return [typed_sse(p["type"], {**p, "sequence_number": i}) for i, p in enumerate(payloads)]
