"""`satsrouter-demo` (`make demo`): mint, fake upstream and node; one paid, streamed request."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import httpx

from satsrouter_dev.mint import TestWallet
from satsrouter_dev.stack import log_tail, running_stack

DEMO_MODEL = "openai/gpt-4o-mini"
TOKEN_SATS = 2000


async def _paid_request(node_url: str, mint_url: str, workdir: Path) -> None:
    from openai import AsyncOpenAI

    wallet = await TestWallet.create(mint_url, workdir / "user-wallet")
    (token,) = await wallet.mint_tokens(TOKEN_SATS)
    print(f"minted a {TOKEN_SATS} sat Cashu token at the local mint ({token[:16]}…)")

    async with httpx.AsyncClient(base_url=node_url) as http:
        headers = {"Authorization": f"Bearer {token}"}
        before = (await http.get("/v1/balance/info", headers=headers)).json()
        print(f"balance before: {before['balance']} msat")

        client = AsyncOpenAI(base_url=f"{node_url}/v1", api_key=token)
        print(f"\n> {DEMO_MODEL}, streamed, the token as API key:\n")
        stream = await client.chat.completions.create(
            model=DEMO_MODEL,
            messages=[{"role": "user", "content": "Say hello to the Cashu demo."}],
            stream=True,
        )
        cost = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
            if chunk.usage is not None:
                cost = (chunk.usage.model_extra or {}).get("cost")
        print("\n")
        await client.close()
        if cost:
            print(
                f"cost: {cost['total_msats']} msat "
                f"(input {cost['input_msats']}, output {cost['output_msats']})"
            )
        after = (await http.get("/v1/balance/info", headers=headers)).json()
        print(f"balance after:  {after['balance']} msat")


def run_demo() -> int:
    """Run the whole demo; returns a process exit code. Stops everything it started."""
    with tempfile.TemporaryDirectory(prefix="satsrouter-demo-") as tmp:
        workdir = Path(tmp)
        with running_stack(workdir, {"chunk_delay_ms": 40, "completion_tokens": 24}) as stack:
            print(f"mint:     {stack.mint_url} (fake Lightning backend)")
            print(f"upstream: {stack.upstream_url} (fake LLM)")
            print(f"node:     {stack.node_url}\n")
            try:
                asyncio.run(_paid_request(stack.node_url, stack.mint_url, workdir))
            except Exception:
                print("node log (tail):\n" + log_tail(stack.node_log), file=sys.stderr)
                raise
    print("\nstopped the node, the fake upstream and the mint")
    return 0
