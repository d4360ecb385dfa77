"""OpenAI embeddings and image generation for the fake upstream.

Embeddings: ``POST /v1/embeddings``
    ``input`` is a string, a list of strings, a token array (list of ints) or a
    list of token arrays; one embedding per input. Each embedding has
    ``dimensions`` floats (default 8): input ``k`` gets ``[k + 1/8, k + 2/8, …]``
    (exact in float32). ``encoding_format`` ``"float"`` (default) sends lists,
    ``"base64"`` the little-endian float32 bytes in base64, as OpenAI does.
    ``usage`` = ``{prompt_tokens, total_tokens}``, both the sum of the inputs'
    whitespace words (token arrays: their lengths), or ``prompt_tokens`` when set;
    ``omit_usage`` removes it.

Images: ``POST /v1/images/generations``
    ``prompt`` (required), ``n`` (1..10, default 1), ``size``, ``quality``,
    ``response_format`` ``"b64_json"`` (default: a 1×1 PNG) or ``"url"`` (a URL on
    this server serving that PNG). Response ``{created, data: [...]}``, each item
    with ``revised_prompt`` = the prompt. Behaviour ``image_usage: true`` adds
    gpt-image ``usage`` = ``{input_tokens: prompt words, output_tokens: 100 × n,
    total_tokens, input_tokens_details: {text_tokens: prompt words, image_tokens: 0}}``;
    ``report_cost: X`` adds ``usage.cost = X`` (USD, OpenRouter style; alone it
    makes ``usage = {"cost": X}``). ``omit_usage`` removes ``usage`` altogether.
"""

from __future__ import annotations

import base64
import struct
import time
import zlib
from typing import Any

import orjson
from aiohttp import web

from satsrouter_dev.fake_core import (
    Host,
    openai_error,
    read_json,
    send_body,
    start_reply,
    word_count,
)
from satsrouter_dev.fake_openai import token_inputs

EMBEDDING_DIMENSIONS = 8
IMAGE_OUTPUT_TOKENS = 100
IMAGE_PATH = "/_files/fake.png"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _tiny_png() -> bytes:
    # 1×1, 8-bit RGBA, one opaque orange pixel; filter byte 0 before the scanline.
    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x88\x00\xff")
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


PNG = _tiny_png()
PNG_B64 = base64.b64encode(PNG).decode()


def embedding_of(index: int, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The documented embedding of input number ``index``."""
    return [index + (j + 1) / 8 for j in range(dimensions)]


async def embeddings(host: Host, request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings``."""
    parsed = await read_json(host, request, openai_error)
    if isinstance(parsed, web.StreamResponse):
        return parsed
    body, plan = parsed
    model = body.get("model")
    counts = token_inputs(body.get("input"))
    encoding = body.get("encoding_format", "float")
    dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
    if not isinstance(model, str) or not model:
        return openai_error(400, "'model' is required")
    if counts is None:
        return openai_error(400, "'input' must be a string, a list of strings or token arrays")
    if encoding not in ("float", "base64"):
        return openai_error(400, "'encoding_format' must be 'float' or 'base64'")
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        return openai_error(400, "'dimensions' must be a positive integer")
    failed = await start_reply(host, request, plan, openai_error)
    if failed is not None:
        return failed

    data: list[dict[str, Any]] = []
    for i in range(len(counts)):
        vector = embedding_of(i, dimensions)
        value: list[float] | str = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    response: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not plan.omit_usage:
        tokens = plan.prompt_tokens if plan.prompt_tokens is not None else sum(counts)
        response["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return await send_body(request, plan, orjson.dumps(response))


async def images(host: Host, request: web.Request) -> web.StreamResponse:
    """``POST /v1/images/generations``."""
    parsed = await read_json(host, request, openai_error)
    if isinstance(parsed, web.StreamResponse):
        return parsed
    body, plan = parsed
    prompt = body.get("prompt")
    n = body.get("n", 1)
    response_format = body.get("response_format") or "b64_json"
    if not isinstance(prompt, str) or not prompt:
        return openai_error(400, "'prompt' is required")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
        return openai_error(400, "'n' must be an integer from 1 to 10")
    if response_format not in ("b64_json", "url"):
        return openai_error(400, "'response_format' must be 'b64_json' or 'url'")
    failed = await start_reply(host, request, plan, openai_error)
    if failed is not None:
        return failed

    if response_format == "url":
        item: dict[str, Any] = {"url": str(request.url.origin()) + IMAGE_PATH}
    else:
        item = {"b64_json": PNG_B64}
    response: dict[str, Any] = {
        "created": int(time.time()),
        "data": [{**item, "revised_prompt": prompt} for _ in range(n)],
    }
    usage = _image_usage(word_count(prompt), n, plan.image_usage, plan.report_cost)
    if usage is not None and not plan.omit_usage:
        response["usage"] = usage
    return await send_body(request, plan, orjson.dumps(response))


def _image_usage(
    prompt_words: int, n: int, tokens: bool, cost: float | None
) -> dict[str, Any] | None:
    usage: dict[str, Any] = {}
    if tokens:
        output = IMAGE_OUTPUT_TOKENS * n
        usage = {
            "input_tokens": prompt_words,
            "output_tokens": output,
            "total_tokens": prompt_words + output,
            "input_tokens_details": {"text_tokens": prompt_words, "image_tokens": 0},
        }
    if cost is not None:
        usage["cost"] = cost
    return usage or None


async def image_file(request: web.Request) -> web.Response:
    """``GET /_files/fake.png``: where ``response_format: "url"`` points."""
    return web.Response(body=PNG, content_type="image/png")
