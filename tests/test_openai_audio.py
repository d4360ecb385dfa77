"""Audio transcriptions and translations with the official SDK: a small WAV made here, every
response_format, charged per request, per second or per token as the model's price says."""

from __future__ import annotations

import io
import math
import wave

import httpx
import orjson
import pytest
from conftest import RunningNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import TestWallet
from test_openai_endpoints import (
    WORDS_10,
    assert_charged,
    body_cost,
    client,
    cost_of,
    funded_token,
    unit_price,
)

from satsrouter.usage import count_tokens

# 1.5 s of 8 kHz 16-bit mono: the fake (and the node) count 2 started seconds.
WAV_SECONDS = 2


def wav_bytes(seconds: float = 1.5, rate: int = 8000) -> bytes:
    """A silent mono 16-bit WAV of `seconds`, made with the standard library."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


def audio_file() -> tuple[str, bytes, str]:
    return ("speech.wav", wav_bytes(), "audio/wav")


# -- transcriptions and translations -------------------------------------------------------


async def fake_directly(upstream: FakeUpstream, path: str, fields: dict[str, str]) -> bytes:
    """What the fake upstream itself answers to the same upload (no node in between)."""
    async with httpx.AsyncClient() as http:
        resp = await http.post(upstream.url + path, data=fields, files={"file": audio_file()})
    resp.raise_for_status()
    return resp.content


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
async def test_transcription_charged_per_request_in_every_format(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream, fmt: str
) -> None:
    token = await funded_token(node, user_wallet)
    raw = await client(node, token).audio.transcriptions.with_raw_response.create(
        model="test/whisper",
        file=audio_file(),
        response_format=fmt,  # type: ignore[arg-type]
    )
    reply = raw.parse()
    cost = cost_of("test/whisper")
    assert cost == 2100
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    assert upstream.stats["last_request"]["file"]["size"] == len(wav_bytes())
    direct = await fake_directly(
        upstream, "/audio/transcriptions", {"model": "test/whisper", "response_format": fmt}
    )
    if fmt in ("text", "srt", "vtt"):
        # Passed back unchanged: the same bytes the upstream sends, and no usage to add to.
        assert raw.http_response.content == direct
        assert isinstance(reply, str) and WORDS_10 in reply
    else:
        assert reply.text == WORDS_10  # type: ignore[union-attr]
        assert body_cost(raw) == cost
        ours = orjson.loads(raw.http_response.content)
        assert ours["usage"].pop("cost")["request_msats"] == cost
        assert ours == orjson.loads(direct)
    await assert_charged(node, token, 100_000, cost)
    await node.check_invariants()


async def test_transcription_with_token_usage_is_charged_per_token(
    node: RunningNode, user_wallet: TestWallet
) -> None:
    token = await funded_token(node, user_wallet)
    raw = await client(node, token).audio.transcriptions.with_raw_response.create(
        model="test/priced",
        file=audio_file(),
        extra_body={"fake": orjson.dumps({"audio_usage": "tokens"}).decode()},
    )
    usage = orjson.loads(raw.http_response.content)["usage"]
    # The fake: 10 audio tokens per started second in, the transcript's 10 words out.
    assert (usage["input_tokens"], usage["output_tokens"]) == (10 * WAV_SECONDS, 10)
    cost = cost_of("test/priced", prompt=10 * WAV_SECONDS, completion=10)
    assert usage["cost"]["total_msats"] == cost
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    await assert_charged(node, token, 100_000, cost)
    await node.check_invariants()


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
async def test_transcription_reporting_duration_on_a_token_priced_model(
    node: RunningNode, user_wallet: TestWallet, fmt: str
) -> None:
    # The upstream reports seconds (or nothing, for the plain formats); the model prices
    # tokens: the transcript is counted, and the same in every format (cues and timings
    # of srt/vtt are not the transcript).
    token = await funded_token(node, user_wallet)
    raw = await client(node, token).audio.transcriptions.with_raw_response.create(
        model="test/priced",
        file=audio_file(),
        response_format=fmt,  # type: ignore[arg-type]
    )
    cost = cost_of("test/priced", completion=count_tokens(WORDS_10))
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost > 0
    await assert_charged(node, token, 100_000, cost)


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json"])
async def test_transcription_charged_per_second_of_audio(
    node: RunningNode, user_wallet: TestWallet, fmt: str
) -> None:
    # Seconds as the upstream reports them (json), or as the node reads the WAV (text).
    token = await funded_token(node, user_wallet)
    raw = await client(node, token).audio.transcriptions.with_raw_response.create(
        model="test/whisper-seconds",
        file=audio_file(),
        response_format=fmt,  # type: ignore[arg-type]
    )
    cost = math.ceil(WAV_SECONDS * unit_price("test/whisper-seconds", "audio_second"))
    assert cost == 2 * 105
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    if fmt != "text":
        published = orjson.loads(raw.http_response.content)["usage"]["cost"]
        assert published["audio_msats"] == published["total_msats"] == cost
    await assert_charged(node, token, 100_000, cost)
    await node.check_invariants()


@pytest.mark.parametrize(
    "fmt",
    [
        "json",
        "verbose_json",
        "srt",  # no usage in the body: the end of the last cue says how long it was
        "vtt",
        "text",  # asked upstream as verbose_json for its duration, answered as plain text
    ],
)
async def test_compressed_upload_charged_the_seconds_the_upstream_reports(
    node: RunningNode, user_wallet: TestWallet, fmt: str
) -> None:
    # The node cannot read an mp3's length: it reserves for the longest the upload can be,
    # and charges the seconds the upstream transcribed.
    token = await funded_token(node, user_wallet)
    raw = await client(node, token).audio.transcriptions.with_raw_response.create(
        model="test/whisper-seconds",
        file=("speech.mp3", b"\xff\xfb\x90\x00" * 2000, "audio/mpeg"),
        response_format=fmt,  # type: ignore[arg-type]
        extra_body={"fake": orjson.dumps({"audio_seconds": 3.2}).decode()},
    )
    cost = 4 * 105  # 4 started seconds
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == cost
    if fmt == "text":  # what the client asked for, though the upstream was asked for JSON
        assert raw.http_response.headers["content-type"].startswith("text/plain")
        assert raw.http_response.text == WORDS_10 + "\n"
    await assert_charged(node, token, 100_000, cost)


async def test_transcription_model_alias_is_rewritten_in_the_upload(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    token = await funded_token(node, user_wallet)
    reply = await client(node, token).audio.transcriptions.create(
        model="whisper", file=audio_file(), language="en"
    )
    assert reply.text == WORDS_10
    sent = upstream.stats["last_request"]
    assert sent["model"] == "test/whisper" and sent["language"] == "en"
    assert sent["file"]["size"] == len(wav_bytes())
    await assert_charged(node, token, 100_000, 2100)


async def test_translation_charged_per_request(
    node: RunningNode, user_wallet: TestWallet, upstream: FakeUpstream
) -> None:
    token = await funded_token(node, user_wallet)
    raw = await client(node, token).audio.translations.with_raw_response.create(
        model="test/whisper", file=audio_file(), response_format="verbose_json"
    )
    reply = raw.parse()
    assert reply.text == WORDS_10
    assert (reply.model_extra or {}).get("task", getattr(reply, "task", None)) == "translate"
    assert upstream.stats["last_path"].endswith("/audio/translations")
    assert int(raw.headers["X-Routstr-Cost-Msats"]) == body_cost(raw) == 2100
    await assert_charged(node, token, 100_000, 2100)
    await node.check_invariants()
