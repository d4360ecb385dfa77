"""Record what a real Anthropic Messages client (Claude Code) sends.

A tiny Anthropic-dialect server on 127.0.0.1 that answers plausibly and writes
every request it sees (method, path with query, headers without credentials,
JSON body) to ``OUT/NNN_<method>_<path>.json``. It is how the fixtures under
``tests/fixtures/claude_code/`` were made; rerun it when the pinned Claude Code
changes::

    python tests/clients/record_claude_code.py OUT --read-file /abs/notes.txt

prints ``listening on http://127.0.0.1:PORT`` and serves until SIGINT/SIGTERM.

Replies: ``HEAD``/``GET`` on ``/`` and ``/v1`` → 200; ``count_tokens`` → 42;
``/v1/messages`` → a ``tool_use`` of ``Read`` (``--read-file``) when that tool is
offered, the conversation names the file and has no tool result yet, a
``WebSearch`` call when that tool is offered and the prompt says "search the web",
a ``StructuredOutput`` call with ``{"greeting": "hello"}`` when that tool is
offered, ``{"greeting": "hello"}`` as text when ``output_config.format`` asks for
JSON, else the text ``hello from the recorder``. ``"stream": true`` gets Anthropic's SSE events.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

# Never written to a fixture: these carry the credentials a client was given.
_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "proxy-authorization"})
TEXT_REPLY = "hello from the recorder"
STRUCTURED = {"greeting": "hello"}


def _has_tool_result(messages: object) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        ):
            return True
    return False


def _tool_names(body: dict[str, Any]) -> set[str]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return set()
    return {t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)}


def reply_block(body: dict[str, Any], read_file: str | None, seq: int) -> dict[str, Any]:
    """The content block the recorder answers ``body`` with (see the module docstring)."""
    names = _tool_names(body)
    done = _has_tool_result(body.get("messages"))
    asked = read_file is not None and Path(read_file).name in json.dumps(body.get("messages"))
    if read_file and asked and "Read" in names and not done:
        return {
            "type": "tool_use",
            "id": f"toolu_rec{seq:06d}",
            "name": "Read",
            "input": {"file_path": read_file},
        }
    if "WebSearch" in names and "search the web" in json.dumps(body.get("messages")) and not done:
        return {
            "type": "tool_use",
            "id": f"toolu_rec{seq:06d}",
            "name": "WebSearch",
            "input": {"query": "cashu ecash"},
        }
    if "StructuredOutput" in names and not done:
        return {
            "type": "tool_use",
            "id": f"toolu_rec{seq:06d}",
            "name": "StructuredOutput",
            "input": dict(STRUCTURED),
        }
    output_config = body.get("output_config")
    if isinstance(output_config, dict) and output_config.get("format"):
        return {"type": "text", "text": json.dumps(STRUCTURED)}
    return {"type": "text", "text": TEXT_REPLY}


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def stream_events(message: dict[str, Any]) -> list[bytes]:
    """Anthropic's SSE event sequence for a complete one-block ``message``."""
    block = message["content"][0]
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {**message["usage"], "output_tokens": 1}
    events = [_sse("message_start", {"type": "message_start", "message": start})]
    if block["type"] == "text":
        first: dict[str, Any] = {"type": "text", "text": ""}
        delta: dict[str, Any] = {"type": "text_delta", "text": block["text"]}
    else:
        first = {**block, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    events += [
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": first},
        ),
        _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return events


class Recorder:
    """The recording server: every request becomes one JSON file in ``out``."""

    def __init__(self, out: Path, read_file: str | None) -> None:
        self.out = out
        self.read_file = read_file
        self._seq = itertools.count(1)

    def _save(self, request: web.Request, body: object) -> int:
        seq = next(self._seq)
        headers = {
            k.lower(): v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS
        }
        slug = re.sub(r"[^a-z0-9]+", "_", request.path.lower()).strip("_") or "root"
        record = {
            "method": request.method,
            "path": request.path_qs,
            "headers": headers,
            "body": body,
        }
        name = f"{seq:03d}_{request.method.lower()}_{slug}.json"
        (self.out / name).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        return seq

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: object = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        seq = self._save(request, body)
        # `ANTHROPIC_BASE_URL=…/v1` (the seed's setting) makes Claude Code ask for /v1/v1/….
        path = re.sub(r"^(/v1)+", "/v1", request.path.rstrip("/"))
        if request.method in ("HEAD", "GET") and path in ("", "/v1"):
            return web.json_response({"ok": True})
        if request.method == "POST" and path == "/v1/messages/count_tokens":
            return web.json_response({"input_tokens": 42})
        if request.method == "POST" and path == "/v1/messages" and isinstance(body, dict):
            return await self._messages(request, body, seq)
        return web.json_response(
            {"type": "error", "error": {"type": "not_found_error", "message": "no route"}},
            status=404,
        )

    async def _messages(
        self, request: web.Request, body: dict[str, Any], seq: int
    ) -> web.StreamResponse:
        block = reply_block(body, self.read_file, seq)
        message = {
            "id": f"msg_rec{seq:06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": [block],
            "stop_reason": "tool_use" if block["type"] == "tool_use" else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 42,
                "output_tokens": 7,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
        if body.get("stream") is not True:
            return web.json_response(message)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in stream_events(message):
            await resp.write(event)
        await resp.write_eof()
        return resp


async def _serve(out: Path, read_file: str | None) -> None:
    recorder = Recorder(out, read_file)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Serve until SIGINT/SIGTERM, writing requests to the directory given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for the recorded requests")
    parser.add_argument("--read-file", help="absolute path the scripted Read call asks for")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(args.out, args.read_file))


if __name__ == "__main__":
    main()
