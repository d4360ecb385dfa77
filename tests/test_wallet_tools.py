"""`satsrouter wallet audit` and `satsrouter wallet restore`, run as an operator would."""

from __future__ import annotations

from pathlib import Path

import databases
import httpx
from killable import KillableNode
from satsrouter_dev.fake_upstream import FakeUpstream
from satsrouter_dev.mint import LocalMint, TestWallet


async def test_audit_finds_lost_ecash_and_restore_takes_it_back_from_the_seed(
    local_mint: LocalMint, upstream: FakeUpstream, user_wallet: TestWallet, tmp_path: Path
) -> None:
    node = KillableNode(tmp_path, local_mint.url, upstream.url)
    (token,) = await user_wallet.mint_tokens(64)
    await node.start()
    try:
        async with httpx.AsyncClient(base_url=node.url) as http:
            made = await http.post("/v1/wallet/create", json={"cashu_token": token})
            assert made.status_code == 200, made.text
            key = made.json()["api_key"]
            paid = await http.post(
                "/v1/chat/completions",
                json={"model": "test/priced", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert paid.status_code == 200, paid.text
    finally:
        await node.stop()
    code, report = await node.cli("wallet", "audit")
    assert code == 0, report
    assert "64 recorded, 64 unspent at the mint" in report
    assert "difference:          0 msat" in report

    # The database loses proofs (a bad backup, a disk error): the audit says so, exactly.
    lost = node.query(
        "SELECT secret, amount FROM wallet_proofs WHERE state = 'unspent' ORDER BY amount DESC "
        "LIMIT 2"
    )
    lost_sat = sum(amount for _, amount in lost)
    for secret, _ in lost:
        databases.rows(node.database_url, "DELETE FROM wallet_proofs WHERE secret = ?", secret)
    code, report = await node.cli("wallet", "audit")
    assert code == 1
    assert f"difference:          -{lost_sat * 1000} msat" in report
    assert "MISMATCH" in report

    code, out = await node.cli("wallet", "restore")
    assert code == 0, out
    assert f"{len(lost)} taken back ({lost_sat} sat)" in out
    code, report = await node.cli("wallet", "audit")
    assert code == 0, report
    # Restoring again finds nothing new, and the ecash is spendable: the key withdraws it.
    code, out = await node.cli("wallet", "restore")
    assert "0 taken back" in out
    await node.start()
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post(
            "/v1/wallet/withdraw", headers={"Authorization": f"Bearer {key}"}, json={}
        )
        assert resp.status_code == 200, resp.text
        withdrawn = await user_wallet.redeem(resp.json()["token"])
    await node.stop()
    assert withdrawn > 60
    code, report = await node.cli("wallet", "audit")
    assert code == 0, report
