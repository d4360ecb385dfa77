"""The units of wallet answers: the seed's paths speak the key's token unit, the rest msat.

Both path families reach the same handlers and answer with the same fields; they differ in
the unit of the plain amount fields (`balance`, `reserved`, `amount`, `amount_added`, …),
which `currency` names. The seed's own paths answer in the key's token unit (sat), as the
seed documents them (`"balance": 8500, "currency": "sat"`); every other path answers in
msat, as Routstr's node does and its clients expect. Each plain amount has an exact `_msat`
twin on every path (and `msats` stays msat, `sats` sat), so no answer hides a sub-sat rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from satsrouter.units import UNIT_MSAT

# The paths the seed documents; Routstr's twins and aliases (`/v1/balance/*`,
# `/v1/wallet/refund`, `/v1/wallet/info`…) keep Routstr's msat.
SEED_PATHS = frozenset(
    {"/v1/wallet/create", "/v1/wallet/balance", "/v1/wallet/topup", "/v1/wallet/withdraw"}
)


@dataclass(frozen=True)
class Amounts:
    """Writes the amounts of one wallet answer in its `currency`, each with an msat twin."""

    currency: str

    def put(self, body: dict[str, Any], **amounts_msat: int | None) -> dict[str, Any]:
        """Set each `name` (whole units of `currency`, rounded down) and `name_msat` (exact)."""
        per_unit = UNIT_MSAT[self.currency]
        for name, msat in amounts_msat.items():
            body[name] = None if msat is None else msat // per_unit
            body[f"{name}_msat"] = msat
        body["currency"] = self.currency
        return body


def amounts_for(request: Request, token_unit: str) -> Amounts:
    """How this request's answer states amounts: the key's `token_unit` on seed paths."""
    return Amounts(token_unit if request.url.path in SEED_PATHS else "msat")
