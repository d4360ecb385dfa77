"""OpenAI audio transcriptions and translations for the fake upstream.

``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations`` take
``multipart/form-data`` with ``file`` and ``model`` (required), ``response_format``
(``json`` default, ``text``, ``srt``, ``vtt``, ``verbose_json``), optional
``language`` and ``prompt``, and optionally a field ``fake`` holding a JSON
behaviour object for this request.

Duration: for a WAV file (RIFF/WAVE with ``fmt `` and ``data`` chunks), data bytes ÷
byte rate, in seconds; for anything else the ``audio_seconds`` behaviour (default 1.0).
``S`` = ceil(duration) (started seconds).

The transcript is ``"w1 … wN"``, N = ``completion_tokens`` (no cap). ``usage`` by the
``audio_usage`` behaviour:

- ``"duration"`` (default): ``{"type": "duration", "seconds": S}``
- ``"tokens"``: ``{"type": "tokens", "input_tokens": 10 × S, "input_token_details":
  {"text_tokens": 0, "audio_tokens": 10 × S}, "output_tokens": N, "total_tokens"}``
- ``"none"`` (or ``omit_usage``): no ``usage``

``json`` → ``{"text", "usage"}``; ``verbose_json`` → ``{"task": "transcribe" |
"translate", "language" (the request's, else "english"), "duration", "text",
"segments": [one segment 0 → duration], "usage"}``; ``text`` → the transcript and a
newline; ``srt`` / ``vtt`` → one cue from 0 to the duration. The three plain formats
are ``text/plain`` and carry no usage. Stats' ``last_request`` holds the form fields
and, under ``file``, the upload's ``filename``, ``content_type`` and ``size`` (never
its bytes). ``drop_midstream`` sends half the body.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from satsrouter_dev.fake_core import (
    Host,
    Plan,
    openai_error,
    send_body,
    start_reply,
    words,
)

AUDIO_TOKENS_PER_SECOND = 10
_FORMATS = frozenset({"json", "text", "srt", "vtt", "verbose_json"})
_TEXT = "text/plain; charset=utf-8"


def wav_seconds(data: bytes) -> Fraction | None:
    """Duration of a WAV file (data bytes ÷ byte rate), or None if ``data`` is not one."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        start = pos + 8
        if kind == b"fmt " and size >= 16:
            byte_rate = int.from_bytes(data[start + 8 : start + 12], "little")
        elif kind == b"data":
            if byte_rate <= 0:
                return None
            # A streamed WAV may claim more data than it has (size 0xFFFFFFFF): count what is here.
            return Fraction(min(size, len(data) - start), byte_rate)
        pos = start + size + (size & 1)  # chunks are word-aligned
    return None


def audio_usage(plan: Plan, seconds: int, n: int) -> dict[str, Any] | None:
    """The documented ``usage`` for ``seconds`` started seconds and an N-word transcript."""
    if plan.omit_usage or plan.audio_usage == "none":
        return None
    if plan.audio_usage == "tokens":
        audio = AUDIO_TOKENS_PER_SECOND * seconds
        return {
            "type": "tokens",
            "input_tokens": audio,
            "input_token_details": {"text_tokens": 0, "audio_tokens": audio},
            "output_tokens": n,
            "total_tokens": audio + n,
        }
    return {"type": "duration", "seconds": seconds}


async def transcriptions(host: Host, request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/transcriptions``."""
    return await _audio(host, request, "transcribe")


async def translations(host: Host, request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/translations``."""
    return await _audio(host, request, "translate")


async def _audio(host: Host, request: web.Request, task: str) -> web.StreamResponse:
    if not request.content_type.startswith("multipart/"):
        return openai_error(400, "expected a multipart/form-data body")
    try:
        form = await request.post()
    except (ValueError, HttpProcessingError, web.HTTPException):
        # A real API answers a malformed upload with a 400, not a 500.
        return openai_error(400, "could not parse the multipart body")
    fields: dict[str, Any] = {}
    upload: web.FileField | None = None
    for name, value in form.items():
        if isinstance(value, web.FileField):
            if name == "file":
                upload = value
            continue
        previous = fields.get(name)
        # Repeated fields (e.g. timestamp_granularities[]) are kept as a list.
        if previous is None:
            fields[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            fields[name] = [previous, value]
    audio = upload.file.read() if upload is not None else b""
    if upload is not None:
        fields["file"] = {
            "filename": upload.filename,
            "content_type": upload.content_type,
            "size": len(audio),
        }
    host.record_body(fields)
    try:
        override = orjson.loads(fields["fake"]) if isinstance(fields.get("fake"), str) else None
        plan = host.plan_for(override)
    except (orjson.JSONDecodeError, ValueError) as exc:
        return openai_error(400, f"fake: {exc}")
    model = fields.get("model")
    response_format = fields.get("response_format") or "json"
    if upload is None:
        return openai_error(400, "'file' is required")
    if not isinstance(model, str) or not model:
        return openai_error(400, "'model' is required")
    if response_format not in _FORMATS:
        return openai_error(400, f"'response_format' must be one of {sorted(_FORMATS)}")
    failed = await start_reply(host, request, plan, openai_error)
    if failed is not None:
        return failed

    exact = wav_seconds(audio)
    duration = float(exact) if exact is not None else plan.audio_seconds
    seconds = math.ceil(exact) if exact is not None else math.ceil(plan.audio_seconds)
    n = plan.completion_tokens
    text = " ".join(words(n))
    usage = audio_usage(plan, seconds, n)
    language = fields.get("language")
    if response_format == "text":
        return await send_body(request, plan, (text + "\n").encode(), _TEXT)
    if response_format == "srt":
        cue = f"1\n{_stamp(0, ',')} --> {_stamp(duration, ',')}\n{text}\n\n"
        return await send_body(request, plan, cue.encode(), _TEXT)
    if response_format == "vtt":
        cue = f"WEBVTT\n\n{_stamp(0, '.')} --> {_stamp(duration, '.')}\n{text}\n\n"
        return await send_body(request, plan, cue.encode(), _TEXT)
    body: dict[str, Any] = {"text": text}
    if response_format == "verbose_json":
        body = {
            "task": task,
            "language": language if isinstance(language, str) and language else "english",
            "duration": duration,
            "text": text,
            "segments": [_segment(duration, text, n)],
        }
    if usage is not None:
        body["usage"] = usage
    return await send_body(request, plan, orjson.dumps(body))


def _segment(duration: float, text: str, n: int) -> dict[str, Any]:
    return {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": duration,
        "text": text,
        "tokens": list(range(1, n + 1)),
        "temperature": 0.0,
        "avg_logprob": -0.1,
        "compression_ratio": 1.0,
        "no_speech_prob": 0.0,
    }


def _stamp(seconds: float, decimal: str) -> str:
    """``HH:MM:SS,mmm`` (SRT) or ``HH:MM:SS.mmm`` (WebVTT)."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"
