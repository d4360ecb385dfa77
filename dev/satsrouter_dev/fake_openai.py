"""OpenAI chat completions and legacy completions for the fake upstream.

Chat: ``POST /v1/chat/completions``
    Reply ``"w1 … wN"``, N = ``completion_tokens`` capped by ``max_completion_tokens``
    (else ``max_tokens``); capped → ``finish_reason: "length"``, else ``"stop"``.
    ``prompt_tokens`` = Σ over messages (4 + words of its text), see
    :func:`prompt_tokens_of` (tool definitions and tool calls count 0).

    Tool calls: when the request declares ``tools`` (non-empty), ``tool_choice`` is
    not ``"none"`` and the last message's role is not ``tool`` (or ``function``),
    the reply is a call of the first tool, arguments ``{"query": "w1 w2"}``,
    ``content: null``, ``finish_reason: "tool_calls"`` and ``completion_tokens`` =
    ``TOOL_CALL_TOKENS`` (5, not capped). Streamed like OpenAI: a first chunk with
    role, id and name (arguments ``""``), then four argument fragments
    ``{"query": "`` · ``w1`` · `` w2`` · ``"}``. The ``tool_call`` behaviour turns
    calls off or scripts one (name and arguments, streamed in two halves).

    ``n`` (1..128, default 1; else 400): ``n`` choices, indexes 0..n-1, each the same
    reply; ``completion_tokens`` counts them all (N × n), the prompt once. Streamed, each
    chunk of the single-choice stream is sent once per choice (index 0..n-1) before the
    next.

Completions: ``POST /v1/completions``
    ``prompt`` is a string, a list of strings, a token array (list of ints) or a
    list of token arrays. One choice per prompt, each ``"w1 … wN"`` (N as for chat,
    capped by ``max_tokens``). ``prompt_tokens`` = total whitespace words of the
    prompts (token arrays: their lengths), at least 1; ``completion_tokens`` =
    N × number of prompts. ``stream: true`` sends one ``text_completion`` chunk
    per word (prompt after prompt), one final chunk per prompt with ``text: ""``
    and its ``finish_reason``, then (only with ``stream_options.include_usage``) a
    usage chunk with ``choices: []``, then ``data: [DONE]``.

    ``n`` (1..128) choices per prompt, ``best_of`` (n..128, default n) completions
    generated per prompt, as OpenAI does: choice ``i`` of prompt ``p`` has index
    ``p × n + i``; ``completion_tokens`` = N × prompts × best_of (every generated
    completion is billed, only ``n`` are returned). Out of range: 400.

OpenRouter's extensions (chat only):
    Reasoning, when the request has ``reasoning`` (not ``{"enabled": false}``),
    ``reasoning_effort`` or ``include_reasoning: true``: the reply carries
    ``reasoning = "r1 r2 r3"`` and ``reasoning_details`` (one ``reasoning.text`` entry
    signed ``REASONING_SIGNATURE``, as OpenRouter returns for Anthropic models), and
    ``completion_tokens`` includes the 3 reasoning tokens
    (``completion_tokens_details.reasoning_tokens``). Streamed: three ``reasoning`` deltas,
    then a ``reasoning_details`` delta with the signature, before the content.
    Web search, when ``plugins`` has ``{"id": "web"}``: the message has one
    ``url_citation`` annotation and usage ``server_tool_use.web_search_requests = 1``.

Streams end with ``data: [DONE]``; with ``include_usage`` every chunk carries
``"usage": null`` except the usage chunk. ``drop_midstream`` cuts a stream after
``fail_after_chunks`` content chunks (the chat role chunk is not counted) and a
non-streamed body after half its bytes.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from satsrouter_dev.fake_core import (
    TOOL_CALL_TOKENS,
    Host,
    Plan,
    choose_tool,
    openai_error,
    read_json,
    reply_length,
    send_body,
    send_events,
    sse,
    start_reply,
    tool_call_fragments,
    word_count,
    words,
)


def prompt_tokens_of(messages: object) -> int:
    """The documented prompt token count: per message, 4 + words of its text."""
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        total += 4
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].split())
    return total


def _tool_name(body: dict[str, Any], plan: Plan) -> tuple[str, str | None] | None:
    """The tool the reply calls and its scripted arguments, or None for a text reply."""
    tools = body.get("tools")
    messages = body.get("messages")
    if not isinstance(tools, list) or body.get("tool_choice") == "none":
        return None
    declared = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        declared.append(name if isinstance(name, str) else "tool")
    roles = (
        [m.get("role") for m in messages if isinstance(m, dict)]
        if isinstance(messages, list)
        else []
    )
    results = [role in ("tool", "function") for role in roles]
    return choose_tool(
        plan, declared, answered=bool(results) and results[-1], any_answer=any(results)
    )


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


REASONING_WORDS = ("r1", "r2", "r3")
REASONING_SIGNATURE = "fake-signature"
WEB_CITATION = {
    "type": "url_citation",
    "url_citation": {"url": "https://example.org/", "title": "Example", "content": "w1"},
}


def _reasons(body: dict[str, Any]) -> bool:
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        return reasoning.get("enabled") is not False
    return body.get("reasoning_effort") is not None or body.get("include_reasoning") is True


def _searches(body: dict[str, Any]) -> bool:
    plugins = body.get("plugins")
    return isinstance(plugins, list) and any(
        isinstance(p, dict) and p.get("id") == "web" for p in plugins
    )


def _reasoning_details() -> list[dict[str, Any]]:
    text = " ".join(REASONING_WORDS)
    return [
        {
            "type": "reasoning.text",
            "text": text,
            "signature": REASONING_SIGNATURE,
            "format": "anthropic-claude-v1",
            "index": 0,
        }
    ]


MAX_N = 128  # OpenAI's bound on `n` (and here on `best_of`)


def _choice_counts(body: dict[str, Any]) -> tuple[int, int] | str:
    """(n, best_of) of a request, or the 400 message when either is out of range."""
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        return f"'n' must be an integer from 1 to {MAX_N}"
    best_of = body.get("best_of", n)
    if best_of is None:
        best_of = n
    if isinstance(best_of, bool) or not isinstance(best_of, int) or not n <= best_of <= MAX_N:
        return f"'best_of' must be an integer from n to {MAX_N}"
    return n, best_of


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def chat(host: Host, request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    parsed = await read_json(host, request, openai_error)
    if isinstance(parsed, web.StreamResponse):
        return parsed
    body, plan = parsed
    model = body.get("model")
    messages = body.get("messages")
    if not isinstance(model, str) or not model:
        return openai_error(400, "'model' is required")
    if not isinstance(messages, list):
        return openai_error(400, "'messages' must be a list")
    counts = _choice_counts(body)
    if isinstance(counts, str):
        return openai_error(400, counts)
    choices = counts[0]
    failed = await start_reply(host, request, plan, openai_error)
    if failed is not None:
        return failed

    tool = _tool_name(body, plan)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    n, capped = reply_length(plan, limit)
    finish = "length" if capped else "stop"
    if tool is not None:
        n, finish = TOOL_CALL_TOKENS, "tool_calls"
    prompt = plan.prompt_tokens if plan.prompt_tokens is not None else prompt_tokens_of(messages)
    reasons, searches = _reasons(body), _searches(body)
    reasoning_tokens = len(REASONING_WORDS) if reasons else 0
    usage = None if plan.omit_usage else _usage(prompt, (n + reasoning_tokens) * choices)
    if usage is not None and reasons:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens * choices}
    if usage is not None and searches:
        usage["server_tool_use"] = {"web_search_requests": 1}
    seq = host.next_id()
    completion_id = f"chatcmpl-fake{seq:08d}"
    call_id = f"call_fake{seq:08d}"

    if body.get("stream") is True:
        return await _stream_chat(
            host,
            request,
            plan,
            {"id": completion_id, "object": "chat.completion.chunk", "model": model},
            _chat_deltas(n, tool, call_id, reasons, searches),
            finish,
            usage if _include_usage(body) else None,
            choices,
        )
    message: dict[str, Any] = {"role": "assistant", "content": " ".join(words(n))}
    if tool is not None:
        # The joined stream fragments: the same JSON text streamed or not.
        arguments = "".join(tool_call_fragments(tool[1]))
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": tool[0], "arguments": arguments},
                }
            ],
        }
    if reasons:
        message["reasoning"] = " ".join(REASONING_WORDS)
        message["reasoning_details"] = _reasoning_details()
    if searches:
        message["annotations"] = [WEB_CITATION]
    response: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i in range(choices)
        ],
    }
    if usage is not None:
        response["usage"] = usage
    return await send_body(request, plan, orjson.dumps(response))


def _chat_deltas(
    n: int,
    tool: tuple[str, str | None] | None,
    call_id: str,
    reasons: bool = False,
    searches: bool = False,
) -> list[dict[str, Any]]:
    """The role delta, reasoning deltas if asked, then one delta per content chunk."""
    thinking: list[dict[str, Any]] = []
    if reasons:
        thinking = [
            {"content": "", "reasoning": w if i == 0 else " " + w}
            for i, w in enumerate(REASONING_WORDS)
        ]
        signed = [{**d, "text": ""} for d in _reasoning_details()]
        thinking.append({"content": "", "reasoning": None, "reasoning_details": signed})
    if tool is None:
        first: dict[str, Any] = {"role": "assistant", "content": ""}
        content: list[dict[str, Any]] = [
            {"content": w if i == 0 else " " + w} for i, w in enumerate(words(n))
        ]
        if searches and content:
            content[-1]["annotations"] = [WEB_CITATION]
        return [first, *thinking, *content]
    head = {
        "index": 0,
        "id": call_id,
        "type": "function",
        "function": {"name": tool[0], "arguments": ""},
    }
    first = {"role": "assistant", "content": None, "tool_calls": [head]}
    return [*thinking, first] + [
        {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}
        for fragment in tool_call_fragments(tool[1])
    ]


async def _stream_chat(
    host: Host,
    request: web.Request,
    plan: Plan,
    head: dict[str, Any],
    deltas: list[dict[str, Any]],
    finish: str,
    usage: dict[str, int] | None,
    choices: int,
) -> web.StreamResponse:
    created = int(time.time())
    with_usage = usage is not None

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk: dict[str, Any] = {**head, "created": created, "choices": choices}
        if with_usage:
            # Like OpenAI: with include_usage every chunk carries "usage": null.
            chunk["usage"] = None
        chunk.update(extra)
        return sse(chunk)

    def delta(d: dict[str, Any], finish_reason: str | None = None) -> list[bytes]:
        return [
            event([{"index": i, "delta": d, "logprobs": None, "finish_reason": finish_reason}])
            for i in range(choices)
        ]

    events = [chunk for d in deltas for chunk in delta(d)]
    midstream = plan.fail == "drop_midstream"
    if midstream:
        events = events[: (1 + plan.fail_after_chunks) * choices]
    else:
        events.extend(delta({}, finish))
        if usage is not None:
            events.append(event([], usage=usage))
        events.append(b"data: [DONE]\n\n")
    return await send_events(host, request, plan, events, abort=midstream)


def token_inputs(value: object) -> list[int] | None:
    """Per-input counts: words of each string, or the length of each token array.

    Accepts a string, a list of strings, a token array or a list of token arrays;
    None for anything else.
    """
    if isinstance(value, str):
        return [word_count(value)]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return [len(value)]
    if all(isinstance(x, str) for x in value):
        return [word_count(x) for x in value]
    if all(isinstance(x, list) and all(isinstance(t, int) for t in x) for x in value):
        return [len(x) for x in value]
    return None


async def completions(host: Host, request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions`` (legacy text completions)."""
    parsed = await read_json(host, request, openai_error)
    if isinstance(parsed, web.StreamResponse):
        return parsed
    body, plan = parsed
    model = body.get("model")
    counts = token_inputs(body.get("prompt"))
    if not isinstance(model, str) or not model:
        return openai_error(400, "'model' is required")
    if counts is None:
        return openai_error(400, "'prompt' must be a string, a list of strings or token arrays")
    asked = _choice_counts(body)
    if isinstance(asked, str):
        return openai_error(400, asked)
    per_prompt, best_of = asked
    failed = await start_reply(host, request, plan, openai_error)
    if failed is not None:
        return failed

    n, capped = reply_length(plan, body.get("max_tokens"))
    finish = "length" if capped else "stop"
    returned = len(counts) * per_prompt  # the choices: n for each prompt
    prompt = plan.prompt_tokens if plan.prompt_tokens is not None else max(1, sum(counts))
    usage = None if plan.omit_usage else _usage(prompt, n * len(counts) * best_of)
    head = {
        "id": f"cmpl-fake{host.next_id():08d}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    text = " ".join(words(n))
    if body.get("stream") is not True:
        choices = [
            {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
            for i in range(returned)
        ]
        response: dict[str, Any] = {**head, "choices": choices}
        if usage is not None:
            response["usage"] = usage
        return await send_body(request, plan, orjson.dumps(response))

    include_usage = _include_usage(body) and usage is not None

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk: dict[str, Any] = {**head, "choices": choices}
        if include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        return sse(chunk)

    def piece(i: int, t: str, finish_reason: str | None = None) -> bytes:
        return event([{"text": t, "index": i, "logprobs": None, "finish_reason": finish_reason}])

    events = [
        piece(i, w if k == 0 else " " + w) for i in range(returned) for k, w in enumerate(words(n))
    ]
    midstream = plan.fail == "drop_midstream"
    if midstream:
        events = events[: plan.fail_after_chunks]
    else:
        events.extend(piece(i, "", finish) for i in range(returned))
        if include_usage:
            events.append(event([], usage=usage))
        events.append(b"data: [DONE]\n\n")
    return await send_events(host, request, plan, events, abort=midstream)
