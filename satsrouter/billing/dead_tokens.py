"""Tokens known dead, remembered for a while so a replay costs neither the mint nor the database.

A token is dead when no retry can make it good: the mint said it is spent (or it was already
spent here), it cannot be read, its mint or unit is not accepted, or it is worth less than
the mint's fee. Outcomes that may change — the mint unreachable or busy, a redemption in
progress, a pending proof, too little for one request — are never remembered. Keyed by the
sha256 of the token string, never the token; per process, bounded in size and age.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from satsrouter.errors import ApiError

# Codes that say the token itself is unusable, whatever happens next.
DEAD_CODES = frozenset(
    {
        "cashu_token_already_spent",
        "invalid_cashu_token",
        "mint_not_accepted",
        "unit_not_supported",
        "token_too_small",
    }
)


@dataclass(frozen=True)
class _Verdict:
    status: int
    code: str
    message: str
    until: float


class DeadTokens:
    """Token hashes whose redemption failed for good, each with the error it got."""

    def __init__(
        self,
        seconds: float = 600.0,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.size = size
        self._clock = clock
        self._dead: OrderedDict[str, _Verdict] = OrderedDict()

    def __len__(self) -> int:
        return len(self._dead)

    def check(self, token_hash: str) -> None:
        """Raise the error a dead token got before; nothing when it is not known dead."""
        verdict = self._dead.get(token_hash)
        if verdict is None:
            return
        if verdict.until <= self._clock():
            del self._dead[token_hash]
            return
        raise ApiError(verdict.status, verdict.code, verdict.message)

    def remember(self, token_hash: str, error: ApiError) -> None:
        """Keep `error` for `token_hash` if it says the token is dead (otherwise nothing)."""
        if error.code not in DEAD_CODES or self.seconds <= 0 or self.size <= 0:
            return
        until = self._clock() + self.seconds
        self._dead[token_hash] = _Verdict(error.status, error.code, error.message, until)
        self._dead.move_to_end(token_hash)
        while len(self._dead) > self.size:
            self._dead.popitem(last=False)  # the oldest goes first
