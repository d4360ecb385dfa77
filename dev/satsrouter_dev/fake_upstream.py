"""A scriptable fake LLM upstream speaking the OpenAI / OpenRouter and Anthropic dialects.

Used by the test suite, ``make demo`` (``satsrouter-demo``) and the benchmark: there is no
internet, so this is the one part of the system that has to be fake. It is
deterministic and cheap per request. This module is the public face; the code
lives in ``fake_server`` (server, control, stats), ``fake_process`` (child
process), ``fake_core`` (behaviour, errors, writers) and one module per family
of endpoints, whose docstring gives the exact reply and usage formulas:

``dialect="openai"`` (default; ``/v1/messages`` → 404)
    ``fake_openai``     ``/v1/chat/completions``, ``/v1/completions``
    ``fake_media``      ``/v1/embeddings``, ``/v1/images/generations``
    ``fake_audio``      ``/v1/audio/transcriptions``, ``/v1/audio/translations``
    ``fake_responses``  ``/v1/responses``
``dialect="anthropic"`` (the OpenAI endpoints → 404)
    ``fake_anthropic``  ``/v1/messages``, ``/v1/messages/count_tokens``

Both serve ``/v1/models`` and ``/v1/models/{id}`` (Anthropic: each entry also has
``type``, ``display_name``, ``created_at``, and the page ``has_more``,
``first_id``, ``last_id``). Every endpoint is also served without ``/v1``.
Unknown paths get a JSON 404 in the dialect's error shape. Auth, when an
``api_key`` is set: ``Authorization: Bearer KEY`` (OpenAI) or ``x-api-key: KEY``
(Anthropic); otherwise 401.

Replies, in short
    Text replies are ``N`` words ``"w1 w2 … wN"``, N = the ``completion_tokens``
    behaviour (default 10) capped by the request's token limit. Chat
    ``prompt_tokens`` = Σ over messages (4 + words of its text) (see
    :func:`prompt_tokens_of`); completions/embeddings count the prompt's words;
    Responses and Anthropic add the words of ``instructions`` / ``system``.
    With ``tools`` declared (and the last message not a tool result) chat and
    Anthropic replies are a call of the first tool with ``{"query": "w1 w2"}``
    and 5 completion tokens (``tool_call`` below changes which, or turns it off).

Behaviour (merged: server defaults < control state < the request's ``"fake"`` object;
for multipart requests, a form field ``fake`` holding the JSON object)
    ``latency_ms``        delay before the response headers (first byte)
    ``chunk_delay_ms``    delay between two stream events
    ``completion_tokens`` reply length in words/tokens
    ``prompt_tokens``     override of the prompt/input token count (null: computed)
    ``fail``              null | an HTTP status (``"500"``, ``"429"``, ``"400"``, any
                          400..599, error body in the endpoint's dialect) | ``"drop"``
                          (close the connection, no response) | ``"timeout"`` (never
                          answer) | ``"drop_midstream"`` (send part of the response,
                          then close)
    ``omit_usage``        never send usage (Anthropic: usage kept, every count 0)
    ``fail_every``        N > 1: ``fail`` (an HTTP status, ``drop`` or ``timeout``) hits
                          only every Nth request (the Nth, 2Nth…; counted from reset)
    ``fail_after_chunks`` for ``drop_midstream``: content chunks/deltas sent before
                          the connection closes (default 2); non-streaming, half the
                          body is sent
    ``image_usage``       images: add gpt-image ``usage`` (input words, 100 per image)
    ``report_cost``       images: add ``usage.cost`` (USD float)
    ``audio_seconds``     audio: duration of a non-WAV upload (default 1.0)
    ``audio_usage``       audio: ``"duration"`` (default) | ``"tokens"`` | ``"none"``
    ``cache_read_tokens`` Anthropic: input tokens reported as cache reads instead
    ``cache_write_tokens`` Anthropic: input tokens reported as cache writes instead
    ``count_tokens``      Anthropic: false → ``/v1/messages/count_tokens`` is 404
    ``tool_call``         chat and Anthropic: ``"first"`` (default, the rule above) |
                          ``"none"`` (text replies even when tools are declared) |
                          ``{"name": N, "arguments": {...}}``: call the declared tool N
                          with exactly these arguments while no message of the
                          conversation is a tool result, then reply with text (how a
                          real agent such as Claude Code is walked through one tool
                          round trip; N not declared → text)

Behaviour applies to every endpoint except ``/v1/models``, which always answers.

Control (no auth): ``POST /_control`` merges JSON into the control state,
``GET /_control`` shows it, ``POST /_control/reset`` clears control state,
stats and the model list, ``POST /_control/models`` replaces the model list
(a list, or ``{"data": [...]}``), ``GET /_stats`` returns ``requests``,
``chat_requests``, ``paths`` (requests per path), ``last_path``,
``last_request`` (the JSON body as received; for multipart, the form fields and
``file: {filename, content_type, size}``), ``last_headers`` (header names
lower-cased) and ``anthropic_version`` (the last ``anthropic-version`` header).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from satsrouter_dev.fake_core import DIALECTS, Behaviour, Dialect
from satsrouter_dev.fake_models import default_models
from satsrouter_dev.fake_openai import prompt_tokens_of
from satsrouter_dev.fake_process import FakeUpstreamProcess
from satsrouter_dev.fake_server import FakeUpstream

__all__ = [
    "Behaviour",
    "Dialect",
    "FakeUpstream",
    "FakeUpstreamProcess",
    "default_models",
    "main",
    "prompt_tokens_of",
]


# -- CLI ------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m satsrouter_dev.fake_upstream",
        description="Scriptable fake OpenAI/OpenRouter/Anthropic upstream.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (or x-api-key)"
    )
    p.add_argument("--dialect", choices=DIALECTS, default="openai")
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--chunk-delay-ms", type=float)
    p.add_argument("--completion-tokens", type=int)
    p.add_argument("--prompt-tokens", type=int)
    p.add_argument("--fail")
    p.add_argument("--omit-usage", action="store_true", default=None)
    p.add_argument("--fail-after-chunks", type=int)
    p.add_argument("--behaviour", default=None, help="JSON object of default behaviour")
    p.add_argument("--models-file", default=None, help="JSON list or {'data': [...]}")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace, models: list[dict[str, Any]] | None) -> None:
    defaults: dict[str, Any] = json.loads(args.behaviour) if args.behaviour else {}
    for key in Behaviour.__annotations__:
        value = getattr(args, key, None)
        if value is not None:
            defaults[key] = value
    server = FakeUpstream(
        args.host,
        args.port,
        args.api_key,
        defaults=cast(Behaviour, defaults),
        models=models,
        dialect=cast(Dialect, args.dialect),
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream listening on {server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the fake upstream until SIGINT/SIGTERM."""
    args = _parse_args(argv)
    models = None
    if args.models_file:
        raw = json.loads(Path(args.models_file).read_text())
        models = raw["data"] if isinstance(raw, dict) else raw
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args, models))


if __name__ == "__main__":
    main()
