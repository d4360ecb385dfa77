"""The node's own swap call: what each kind of mint answer becomes (fake mint on 127.0.0.1)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from aiohttp import web

from satsrouter.ecash._cashu import BlindedMessage, BlindedSignature, Proof
from satsrouter.ecash.errors import EcashError
from satsrouter.ecash.mint_http import new_mint_session, post_swap

Reply = Callable[[web.Request], web.Response]
Serve = Callable[[Reply], Awaitable[str]]
PROOF = Proof(id="009a1f293253e41e", amount=4, secret="s" * 64, C="02" + "ab" * 32)
OUTPUT = BlindedMessage(amount=4, id="009a1f293253e41e", B_="03" + "cd" * 32)


@pytest_asyncio.fixture
async def fake_mint() -> AsyncIterator[Serve]:
    """Serve `POST /v1/swap` with a given reply; returns the base URL."""
    runners: list[web.AppRunner] = []

    async def start(reply: Reply) -> str:
        async def swap(request: web.Request) -> web.Response:
            await request.read()
            return reply(request)

        app = web.Application()
        app.router.add_post("/v1/swap", swap)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _swap(url: str) -> list[BlindedSignature]:
    session = new_mint_session()
    try:
        return list(await post_swap(session, url, [PROOF], [OUTPUT]))
    finally:
        await session.close()


async def test_signatures_are_returned(fake_mint: Serve) -> None:
    signature = {"id": OUTPUT.id, "amount": 4, "C_": "02" + "ef" * 32, "dleq": None}

    def reply(request: web.Request) -> web.Response:
        assert request.headers["Accept-Encoding"] == "identity"
        return web.json_response({"signatures": [signature]})

    url = await fake_mint(reply)
    (got,) = await _swap(url)
    assert got.C_ == signature["C_"] and got.amount == 4


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (400, {"detail": "Token already spent.", "code": 11001}, "cashu_token_already_spent"),
        (400, {"detail": "could not verify proofs.", "code": 10003}, "invalid_cashu_token"),
        (400, {"detail": "something else"}, "mint_error"),
        (400, "not json", "mint_error"),
        # no answer we can trust: the swap may have happened, recovery asks the mint
        (500, "boom", "mint_unreachable"),
        (503, {"detail": "overloaded"}, "mint_unreachable"),
        (200, {"signatures": [{"amount": "x"}]}, "mint_unreachable"),
        (200, "not json", "mint_unreachable"),
    ],
)
async def test_refusals_and_unknown_outcomes(
    fake_mint: Serve, status: int, body: object, code: str
) -> None:
    def reply(request: web.Request) -> web.Response:
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)

    url = await fake_mint(reply)
    with pytest.raises(EcashError) as caught:
        await _swap(url)
    assert caught.value.code == code


async def test_no_mint_at_all_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(EcashError) as caught:
        await _swap(dead)
    assert caught.value.code == "mint_unreachable"
