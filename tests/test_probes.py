"""Clients probe the base URL; operators see why a request failed, without its secrets."""

from __future__ import annotations

import logging

import httpx
import pytest
from conftest import RunningNode


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/api/hello", "/api/hello"])
async def test_the_base_urls_answer_probes(node: RunningNode, path: str) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        head = await http.head(path)  # Claude Code's first request
        got = await http.get(path)
    assert head.status_code == got.status_code == 200
    assert got.json()["api"].startswith("/v1")


async def test_every_refusal_is_logged_with_its_code_and_reason(
    node: RunningNode, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk-" + "x7" * 24
    with caplog.at_level(logging.INFO, logger="satsrouter.http.errors"):
        async with httpx.AsyncClient(base_url=node.url) as http:
            resp = await http.post(
                "/v1/chat/completions",
                json={"model": "test/priced", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}"},
            )
            missing = await http.get("/v1/nowhere?initial_balance_token=cashuBsecret")
    assert resp.status_code == 401 and missing.status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "satsrouter.http.errors"]
    assert any(
        "POST /v1/chat/completions -> 401 invalid_api_key: Unknown API key" in x for x in lines
    )
    assert any("GET /v1/nowhere -> 404 not_found" in x for x in lines)
    text = "\n".join(lines)
    assert key[3:19] not in text and "cashuBsecret" not in text
