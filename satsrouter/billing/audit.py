"""The operator's audit: the node's ecash, checked at each mint, against what it owes (I1, I6).

Two identities, each exact to the msat:

- *held*: the proofs the database says the node holds are exactly the ones each mint says
  are unspent (or pending, for a melt in flight);
- *balanced*: ecash held == liabilities + revenue, where liabilities are the users'
  balances (reserved included) plus payouts debited but not yet sent, and revenue is what
  was charged, sub-unit remainders kept at payout, and what the node's own wallet
  operations gained or paid (batched swap remainders, swap fees, Lightning fees), less
  what was moved onto the operator's accounts to be withdrawn (journal kind `revenue`,
  billing/revenue.py): from then on it is a balance like any other.

Any lost or created value shows up as a difference in one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from satsrouter.ecash.store import proof_of
from satsrouter.ecash.wallet import NodeWallet
from satsrouter.store.tx import Tx, TxRunner

_HELD = (
    "SELECT secret, keyset_id, amount, signature, dleq, mint_url, unit FROM wallet_proofs "
    "WHERE state IN ('unspent', 'reserved')"
)
_BALANCES = "SELECT coalesce(sum(balance_msat), 0) FROM accounts"
_PAYOUTS_IN_FLIGHT = "SELECT coalesce(sum(amount_msat), 0) FROM payouts WHERE state = 'pending'"
# Operator income recorded in the ledger: charges and the sub-unit remainders of payouts
# (negative rows), less revenue moved onto operator accounts for withdrawal (positive rows).
_JOURNAL_REVENUE = (
    "SELECT coalesce(-sum(amount_msat), 0) FROM journal "
    "WHERE kind IN ('charge', 'rounding', 'revenue')"
)
_WALLET_REVENUE = "SELECT coalesce(sum(node_delta_msat), 0) FROM wallet_ops"
_MSAT = {"sat": 1000, "msat": 1}
# NUT-07 requests stay well below a mint's limit on entries per request.
_STATE_BATCH = 200


@dataclass
class MintHolding:
    """The ecash at one (mint, unit): by the database, and by the mint's own word."""

    mint: str
    unit: str
    recorded: int = 0  # in `unit`
    at_mint: int = 0  # the part the mint says is unspent or pending
    spent_at_mint: int = 0  # recorded as ours, but spent at the mint (lost)

    @property
    def msat(self) -> int:
        return self.at_mint * _MSAT[self.unit]


@dataclass
class Audit:
    """Everything `satsrouter wallet audit` prints, and whether the books balance."""

    holdings: list[MintHolding] = field(default_factory=list)
    liabilities_msat: int = 0
    in_flight_msat: int = 0
    revenue_msat: int = 0
    unreachable: list[str] = field(default_factory=list)

    @property
    def held_msat(self) -> int:
        return sum(h.msat for h in self.holdings)

    @property
    def difference_msat(self) -> int:
        """held − (liabilities + payouts in flight + revenue); 0 when nothing was lost."""
        return self.held_msat - self.liabilities_msat - self.in_flight_msat - self.revenue_msat

    @property
    def ok(self) -> bool:
        return (
            not self.unreachable
            and self.difference_msat == 0
            and all(h.recorded == h.at_mint for h in self.holdings)
        )

    def report(self) -> str:
        """A human-readable account, one figure per line."""
        lines = []
        for h in self.holdings:
            lines.append(
                f"{h.mint} [{h.unit}]: {h.recorded} recorded, {h.at_mint} unspent at the mint"
                + (f", {h.spent_at_mint} SPENT at the mint" if h.spent_at_mint else "")
            )
        lines += [f"mint not reachable: {m}" for m in self.unreachable]
        lines += [
            f"ecash held:          {self.held_msat} msat",
            f"user balances:       {self.liabilities_msat} msat",
            f"payouts in flight:   {self.in_flight_msat} msat",
            f"revenue:             {self.revenue_msat} msat",
            f"difference:          {self.difference_msat} msat",
            "OK" if self.ok else "MISMATCH",
        ]
        return "\n".join(lines)


def _books(tx: Tx) -> tuple[list[tuple[Any, ...]], int, int, int]:
    held, _ = tx.execute(_HELD, {})
    balances = int(tx.execute(_BALANCES, {})[0][0][0])
    in_flight = int(tx.execute(_PAYOUTS_IN_FLIGHT, {})[0][0][0])
    revenue = int(tx.execute(_JOURNAL_REVENUE, {})[0][0][0])
    revenue += int(tx.execute(_WALLET_REVENUE, {})[0][0][0])
    return held, balances, in_flight, revenue


async def audit(tx_runner: TxRunner, wallet: NodeWallet) -> Audit:
    """Read the books in one transaction, then ask each mint about every proof held."""
    rows, balances, in_flight, revenue = await tx_runner.run(_books)
    result = Audit(liabilities_msat=balances, in_flight_msat=in_flight, revenue_msat=revenue)
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        groups.setdefault((row[5], row[6]), []).append(proof_of(row[:5]))
    for (mint, unit), proofs in sorted(groups.items()):
        holding = MintHolding(mint, unit, recorded=sum(int(p.amount) for p in proofs))
        result.holdings.append(holding)
        try:
            slot = await wallet.loaded_slot(mint, unit)
            for start in range(0, len(proofs), _STATE_BATCH):
                batch = proofs[start : start + _STATE_BATCH]
                states = await wallet.proof_states(slot, batch)
                for proof, state in zip(batch, states, strict=True):
                    if state == "SPENT":
                        holding.spent_at_mint += int(proof.amount)
                    else:
                        holding.at_mint += int(proof.amount)
        except Exception:
            result.unreachable.append(mint)
    return result
