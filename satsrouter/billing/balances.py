"""Balance changes as steps of a caller's transaction: open, credit, debit (I1).

Each is a plain function of a `Tx`, called inside the transaction function of whichever
module moves the money (a redemption, a payout, a paid Lightning invoice, a melt's unused
fee reserve, new child keys), so the change lands in the same commit as what it pays for.
Every change of a balance writes its journal row in the same transaction.
"""

from __future__ import annotations

from satsrouter.store.tx import Tx

_FIND_ACCOUNT = "SELECT id FROM accounts WHERE key_hash = :kh"
_OPEN_ACCOUNT = (
    "INSERT INTO accounts (key_hash, kind, mint_url, unit, balance_msat, reserved_msat, "
    "total_spent_msat, total_requests, period_spent_msat, period_reserved_msat, created_at) "
    "VALUES (:kh, :kind, :mint, :unit, 0, 0, 0, 0, 0, 0, :now) "
    "ON CONFLICT (key_hash) DO NOTHING RETURNING id"
)
_CREDIT = (
    "UPDATE accounts SET balance_msat = balance_msat + :amount WHERE id = :id "
    "RETURNING balance_msat"
)
_DEBIT_AVAILABLE = (
    "UPDATE accounts SET balance_msat = balance_msat - :amount "
    "WHERE id = :id AND balance_msat - reserved_msat >= :amount RETURNING balance_msat"
)
_INSERT_JOURNAL = (
    "INSERT INTO journal (account_id, amount_msat, kind, ref, created_at) "
    "VALUES (:account, :amount, :kind, :ref, :now)"
)


def journal_tx(tx: Tx, account_id: int, amount: int, kind: str, ref: str, now: float) -> None:
    """Append one journal row (the caller changes the balance in the same transaction)."""
    tx.execute(
        _INSERT_JOURNAL,
        {"account": account_id, "amount": amount, "kind": kind, "ref": ref[:80], "now": now},
    )


def open_account_tx(tx: Tx, key_hash: str, kind: str, mint_url: str, unit: str, now: float) -> int:
    """The id of the account for `key_hash`, created empty if there is none."""
    found, _ = tx.execute(_FIND_ACCOUNT, {"kh": key_hash})
    if found:
        return int(found[0][0])
    params = {"kh": key_hash, "kind": kind, "mint": mint_url, "unit": unit, "now": now}
    created, _ = tx.execute(_OPEN_ACCOUNT, params)
    if created:
        return int(created[0][0])
    # Created by a concurrent transaction since the lookup (Postgres): it exists now.
    found, _ = tx.execute(_FIND_ACCOUNT, {"kh": key_hash})
    return int(found[0][0])


def credit_tx(tx: Tx, account_id: int, amount_msat: int, kind: str, ref: str, now: float) -> int:
    """Add to a balance; returns the new balance."""
    if amount_msat < 0:
        raise ValueError("credit amount must be >= 0")
    rows, _ = tx.execute(_CREDIT, {"id": account_id, "amount": amount_msat})
    if amount_msat:
        journal_tx(tx, account_id, amount_msat, kind, ref, now)
    return int(rows[0][0])


def debit_available_tx(
    tx: Tx, account_id: int, amount_msat: int, kind: str, ref: str, now: float
) -> int | None:
    """Take `amount_msat` from the unreserved balance; None (nothing changed) if it is not there."""
    rows, _ = tx.execute(_DEBIT_AVAILABLE, {"id": account_id, "amount": amount_msat})
    if not rows:
        return None
    if amount_msat:
        journal_tx(tx, account_id, -amount_msat, kind, ref, now)
    return int(rows[0][0])
