"""Our NUT-13 BIP32 derivation gives nutshell's keys exactly (a seed restore depends on it)."""

from __future__ import annotations

import tempfile

from satsrouter.ecash._cashu import Wallet, new_mnemonic, use_seed
from satsrouter.ecash.derivation import derive, derive_bip32, is_bip32_keyset


async def _wallet() -> Wallet:
    wallet = await Wallet.with_db(
        "http://127.0.0.1:1", tempfile.mkdtemp(), name="derivation", skip_db_read=True
    )
    use_seed(wallet, new_mnemonic())
    return wallet


async def test_bip32_keys_are_nutshells() -> None:
    wallet = await _wallet()
    assert wallet.seed
    for keyset_id in ("009a1f293253e41e", "00ad268c4d1f5826", "00ffffffffffffff"):
        assert is_bip32_keyset(keyset_id)
        for counter in (0, 1, 2, 7, 100, 12_345, 2**31 - 1):
            theirs = await wallet.generate_determinstic_secret(counter, keyset_id)
            assert derive_bip32(wallet.seed, keyset_id, counter) == (theirs[0], theirs[1])
        secrets, rs = await derive(wallet, keyset_id, [3, 4])
        expected, expected_rs, _ = await wallet.generate_secrets_from_to(3, 4, keyset_id)
        assert secrets == expected
        assert [r.secret for r in rs] == [r.secret for r in expected_rs]


async def test_other_keyset_versions_are_left_to_nutshell() -> None:
    wallet = await _wallet()
    keyset_id = "01" + "ab" * 32  # version 01: HMAC-SHA256, not BIP32
    assert not is_bip32_keyset(keyset_id)
    assert not is_bip32_keyset("yjzQhxghPdrr")  # a pre-0.15 base64 id
    secrets, rs = await derive(wallet, keyset_id, [5])
    expected, expected_rs, _ = await wallet.generate_secrets_from_to(5, 5, keyset_id)
    assert secrets == expected and rs[0].secret == expected_rs[0].secret
