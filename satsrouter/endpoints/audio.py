"""Audio transcriptions and translations: a multipart upload, forwarded as received.

The body is read once and sent on unchanged (same bytes, same boundary); the node only looks
into it for the text fields and the audio's length. Priced per request, per audio second, or
per token, as the model's prices say and the upstream's `usage` allows.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any

from satsrouter.endpoints.base import JSON, Call, Endpoint, Reply, json_reply
from satsrouter.errors import ApiError
from satsrouter.market.catalogue import Model
from satsrouter.usage import Usage, count_tokens

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(rb'\bfilename="', re.IGNORECASE)
# 4 kbit/s: below any speech codec in use (Opus goes down to 6), so size / this ≥ duration.
_MIN_BYTES_PER_SECOND = 500
# Text fields worth reading; anything longer than this is not a setting but an upload.
_MAX_FIELD = 64 * 1024


def multipart_fields(raw: bytes, content_type: str) -> tuple[dict[str, str], memoryview | None]:
    """The text fields of a multipart body and a view (no copy) of its uploaded file."""
    found = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/form-data") or not found:
        raise ApiError(400, "invalid_request", "Send the audio as multipart/form-data.")
    delimiter = b"--" + found.group(1).encode()
    view = memoryview(raw)
    fields: dict[str, str] = {}
    upload: memoryview | None = None
    start = raw.find(delimiter)
    while start >= 0:
        head_start = start + len(delimiter)
        if raw.startswith(b"--", head_start):
            break  # the closing delimiter
        head_end = raw.find(b"\r\n\r\n", head_start)
        end = raw.find(b"\r\n" + delimiter, head_end)
        if head_end < 0 or end < 0:
            break
        headers = raw[head_start:head_end]
        name = _NAME.search(headers)
        if name is not None:
            if _FILENAME.search(headers):
                upload = view[head_end + 4 : end]
            elif end - head_end - 4 <= _MAX_FIELD:
                value = raw[head_end + 4 : end].decode(errors="replace")
                fields[name.group(1).decode(errors="replace")] = value
        start = end + 2
    return fields, upload


def wav_seconds(audio: memoryview | bytes) -> float | None:
    """The duration of a RIFF/WAVE file from its header; None when it is not one."""
    data = bytes(audio[:4096])
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, 0
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk == b"fmt " and offset + 16 <= len(data):
            byte_rate = struct.unpack_from("<I", data, offset + 16)[0]
        elif chunk == b"data":
            # The data chunk's size may be a placeholder in streamed WAVs: trust the upload.
            size = min(size, len(audio) - offset - 8)
            return size / byte_rate if byte_rate else None
        offset += 8 + size + (size & 1)
    return None


def audio_usage(usage: Any) -> Usage | None:
    """An audio `usage`: tokens (gpt-4o-transcribe) or duration in seconds (whisper)."""
    if not isinstance(usage, dict):
        return None
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        if isinstance(seconds, int | float) and seconds > 0:
            return Usage(0, 0, audio_seconds=math.ceil(seconds))
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    if isinstance(prompt, int) and isinstance(completion, int) and prompt + completion > 0:
        return Usage(max(prompt, 0), max(completion, 0))
    return None


class AudioTranscriptions(Endpoint):
    """`POST /v1/audio/transcriptions` (and, with another path, translations)."""

    path = "/audio/transcriptions"

    def __init__(self, path: str | None = None) -> None:
        if path is not None:
            self.path = path

    def parse(self, raw: bytes, content_type: str) -> Call:
        fields, upload = multipart_fields(raw, content_type)
        if upload is None:
            raise ApiError(400, "invalid_request", "The request needs an audio `file`.")
        call = Call(raw, dict(fields), content_type)
        # Reserve for the longest the audio can be: exact for WAV, else from its size at the
        # lowest bitrate speech codecs use.
        seconds = wav_seconds(upload)
        bound = seconds if seconds is not None else len(upload) / _MIN_BYTES_PER_SECOND
        call.audio_seconds, call.audio_exact = math.ceil(bound), seconds is not None
        return call

    def upstream_body(self, call: Call, model: Model) -> bytes:
        # Multipart is forwarded byte for byte; a short alias in `model` is rewritten in place.
        raw = _set_field(call.raw, "model", call.body.get("model"), model.wire_id)
        if _asks_json_for_text(call):
            # Plain text says nothing of the audio's length and the node reads only WAV
            # headers: ask for verbose_json (its `duration` is charged) and answer the client
            # the plain text it asked for, rendered from it.
            raw = _set_field(raw, "response_format", "text", "verbose_json")
        return raw

    def reply(self, call: Call, raw: bytes, media_type: str) -> Reply:
        if media_type == JSON:
            data = json_reply(raw)
            usage = audio_usage(data.get("usage"))
            if usage is None or usage.prompt_tokens + usage.completion_tokens == 0:
                # Seconds or nothing reported: count the transcript too, so that a model priced
                # per token is never free (I3), and costs the same in every response_format.
                duration = usage.audio_seconds if usage else data.get("duration")
                usage = self._local(call, data.get("text"), duration)
            if _asks_json_for_text(call) and isinstance(data.get("text"), str):
                return Reply(usage, (data["text"] + "\n").encode(), None, "text/plain")
            return Reply(usage, raw, data)
        # text, srt, vtt: passed back unchanged; the transcript in them is counted here.
        text, duration = transcript(raw.decode(errors="replace"), call.body.get("response_format"))
        return Reply(self._local(call, text, duration), raw, None, media_type)

    @staticmethod
    def _local(call: Call, text: Any, duration: Any = None) -> Usage:
        """Usage counted here: the transcript's tokens and, when known, the audio's seconds
        (from the upstream's answer, or a WAV header; never the size-based bound)."""
        if not isinstance(duration, int | float) or duration <= 0:
            duration = call.audio_seconds if call.audio_exact else None
        return Usage(
            0,
            count_tokens(text) if isinstance(text, str) else 0,
            audio_seconds=math.ceil(duration) if duration else 0,
            source="local",
        )


def _asks_json_for_text(call: Call) -> bool:
    """Whether a `text` answer is fetched as verbose_json, to learn the audio's length."""
    return call.body.get("response_format") == "text" and not call.audio_exact


def _set_field(raw: bytes, name: str, old: Any, new: str) -> bytes:
    """A multipart body with one text field's value replaced (the rest byte for byte)."""
    if old == new or not isinstance(old, str):
        return raw
    head = b'name="' + name.encode() + b'"\r\n\r\n'
    return raw.replace(head + old.encode() + b"\r\n", head + new.encode() + b"\r\n", 1)


# A cue's timing line: `00:00:01,500 --> 00:00:03,000` (SRT) or `00:01.500 --> 00:03.000`.
_CUE_END = re.compile(r"-->\s*(?:(\d+):)?(\d+):(\d+)[.,](\d+)")


def transcript(body: str, response_format: Any) -> tuple[str, float | None]:
    """The words of a plain, SRT or WebVTT transcript (cue numbers, timings and headers
    dropped), and the end of its last cue in seconds (None for plain text)."""
    if response_format not in ("srt", "vtt"):
        return body.strip(), None
    kept: list[str] = []
    end = 0.0
    for line in body.splitlines():
        line = line.strip()
        if (timing := _CUE_END.search(line)) is not None:
            hours, minutes, secs, fraction = timing.groups()
            at = int(hours or 0) * 3600 + int(minutes) * 60 + int(secs)
            end = max(end, at + int(fraction) / 10 ** len(fraction))
        elif line and not line.isdigit() and not line.startswith(("WEBVTT", "NOTE")):
            kept.append(line)
    return " ".join(kept), end or None
