"""Embeddings (priced by input tokens) and image generation (priced per image and tokens)."""

from __future__ import annotations

from dataclasses import replace

from satsrouter.endpoints.base import (
    Call,
    Endpoint,
    Reply,
    batch_size,
    input_tokens,
    json_reply,
)
from satsrouter.endpoints.responses import usage_from_responses
from satsrouter.usage import Usage, count_tokens


class Embeddings(Endpoint):
    """`POST /v1/embeddings`: input tokens only; nothing is generated."""

    path = "/embeddings"

    def inspect(self, call: Call) -> None:
        # Nothing is generated: reserve the smallest completion budget there is (one token),
        # not the model's whole completion limit, which would refuse balances that suffice.
        call.max_tokens = 1
        call.prompts = batch_size(call.body.get("input"))  # each input may fill the context

    def reply(self, call: Call, raw: bytes, media_type: str) -> Reply:
        data = json_reply(raw)
        usage_json = data.get("usage")
        reported = usage_json.get("prompt_tokens") if isinstance(usage_json, dict) else None
        if isinstance(reported, int) and reported > 0:
            usage = Usage(reported, 0)
        else:
            counted = max(input_tokens(call.body.get("input")), 1)
            usage = Usage(counted, 0, source="local")
            data["usage"] = {"prompt_tokens": counted, "total_tokens": counted}
        return Reply(usage, raw, data)


class ImageGenerations(Endpoint):
    """`POST /v1/images/generations`: the model's `image` price per image made, plus tokens
    when the upstream reports them (gpt-image models)."""

    path = "/images/generations"
    max_tokens_fields = ()
    max_choices = 10  # OpenAI's bound on image `n`

    def inspect(self, call: Call) -> None:
        super().inspect(call)
        # Each image is priced, and may use the whole completion budget (gpt-image tokens).
        call.generated_images = call.choices

    def reply(self, call: Call, raw: bytes, media_type: str) -> Reply:
        data = json_reply(raw)
        made = data.get("data")
        images = len(made) if isinstance(made, list) else 0
        # Token-priced image models report Responses-style usage; per-image models none.
        usage = usage_from_responses(data.get("usage"))
        if usage is None:  # counted, so that a model with a prompt price is never free
            prompt = call.body.get("prompt")
            usage = Usage(
                count_tokens(prompt if isinstance(prompt, str) else ""), 0, source="local"
            )
        return Reply(replace(usage, generated_images=images), raw, data)
