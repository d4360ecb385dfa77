"""`satsrouter demo`: a local mint, a fake upstream and a node; one real paid, streamed request."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from satsrouter.testing.fake_upstream import FakeUpstreamProcess
from satsrouter.testing.mint import LocalMint, TestWallet, free_port

DEMO_MODEL = "openai/gpt-4o-mini"
TOKEN_SATS = 2000


def _start_node(
    workdir: Path, mint_url: str, upstream_url: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "UPSTREAM_BASE_URL": upstream_url,
        "CASHU_MINTS": mint_url,
        "DATA_DIR": str(workdir / "node"),
        "BTC_USD_PRICE": "100000",
        "LOG_LEVEL": "WARNING",
    }
    log = (workdir / "node.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "satsrouter", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the node exited:\n" + (workdir / "node.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the node did not start within 60 s")


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
        node: subprocess.Popen[bytes] | None = None
        with (
            LocalMint(workdir=workdir / "mint") as mint,
            FakeUpstreamProcess(
                defaults={"chunk_delay_ms": 40, "completion_tokens": 24}
            ) as upstream,
        ):
            print(f"mint:     {mint.url} (fake Lightning backend)")
            print(f"upstream: {upstream.url} (fake LLM)")
            try:
                node, node_url = _start_node(workdir, mint.url, upstream.url)
                print(f"node:     {node_url}\n")
                asyncio.run(_paid_request(node_url, mint.url, workdir))
            except Exception:
                log_path = workdir / "node.log"
                if log_path.exists():
                    print("node log (tail):\n" + log_path.read_text()[-4000:], file=sys.stderr)
                raise
            finally:
                if node is not None:
                    node.terminate()
                    try:
                        node.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        node.kill()
    print("\nstopped the node, the fake upstream and the mint")
    return 0
