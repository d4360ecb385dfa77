"""No token, key or upstream password ever reaches a log line (I8)."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest
from conftest import RunningNode

from satsrouter.logs import mask_secrets
from satsrouter.testing.fake_upstream import FakeUpstream
from satsrouter.testing.mint import TestWallet

MESSAGES = [{"role": "user", "content": "secret test"}]


async def test_paid_requests_at_debug_log_no_secrets(
    node: RunningNode,
    user_wallet: TestWallet,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    bearer, x_cashu, x_stream, spent, for_key = await user_wallet.mint_tokens(20, count=5)
    async with httpx.AsyncClient(base_url=node.url) as http:
        created = await http.post("/v1/wallet/create", json={"cashu_token": for_key})
    key = created.json()["api_key"]
    assert key.startswith("sk-")

    calls = [
        (bearer, {}, False),
        (bearer, {}, True),
        (key, {}, False),
        (key, {}, True),
        ("unused", {"X-Cashu": x_cashu}, False),
        ("unused", {"X-Cashu": x_stream}, True),
    ]
    for api_key, headers, stream in calls:
        api = openai.AsyncOpenAI(
            base_url=node.api, api_key=api_key, max_retries=0, default_headers=headers
        )
        if stream:
            async for _ in await api.chat.completions.create(
                model="test/priced", messages=MESSAGES, max_tokens=3, stream=True
            ):
                pass
        else:
            await api.chat.completions.create(model="test/priced", messages=MESSAGES, max_tokens=3)
    # Spending a token twice, and an unknown key, are logged failures too.
    async with httpx.AsyncClient(base_url=node.url) as http:
        await http.post("/v1/wallet/create", json={"cashu_token": spent})
        again = await http.post("/v1/wallet/create", json={"cashu_token": spent})
        assert again.status_code == 400
    # Failures log too: a spent token and an upstream error.
    upstream.configure(fail="500")
    with pytest.raises(openai.APIStatusError):
        await openai.AsyncOpenAI(
            base_url=node.api, api_key=key, max_retries=0
        ).chat.completions.create(model="test/priced", messages=MESSAGES)
    with pytest.raises(openai.APIStatusError):
        await openai.AsyncOpenAI(
            base_url=node.api, api_key="unused", max_retries=0, default_headers={"X-Cashu": x_cashu}
        ).chat.completions.create(model="test/priced", messages=MESSAGES)
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert caplog.records, "expected the node to log something at DEBUG"
    for secret in (bearer, x_cashu, x_stream, spent, for_key, key, "upstream-secret"):
        assert secret not in logged
        assert secret[:40] not in logged


def test_mask_secrets() -> None:
    line = "got cashuBo2F0gaJhaUgA2 and sk-abcdef0123456789 and Bearer xyz123"
    masked = mask_secrets(line)
    assert "cashuBo2F0gaJhaUgA2" not in masked
    assert "sk-abcdef0123456789" not in masked
    assert "xyz123" not in masked
