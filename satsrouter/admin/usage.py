"""What the node served and who paid for it: usage figures and keys, for the operator.

Computed from the ledger's own records, never from logs: each paid request is one row of
`reservations` (its model, provider and endpoint written when it was reserved, its tokens
and charge when it was settled, the code of why when it was released), each key one row
of `accounts`. A request counts on the day it ended (`settled_at`, UTC); one still running
is not counted yet.

Keys are named by the first characters of their hash (`hash_prefix`): the node never
stores a key itself. A disabled key (`disabled_at`) pays for nothing — `Ledger.reserve`
refuses it and its child keys — but keeps its balance, which its owner can still withdraw:
disabling stops service, it never takes money.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from satsrouter.admin.ratelimit import parse_limits
from satsrouter.errors import ApiError
from satsrouter.store.tx import Tx, TxRunner

DAY_SECONDS = 86_400
MAX_DAYS = 366
PREFIX_CHARS = 12  # of a key's sha256 hex: how keys are shown
MIN_PREFIX_CHARS = 8  # the least that names a key
KINDS = ("key", "token", "child", "xcashu")
# X-Cashu accounts are one per paying token, used once: listed only when asked for.
DEFAULT_KINDS = ("key", "token", "child")

# One statement per day: an exact range on the indexed `settled_at`, the same on SQLite and
# Postgres (a day number computed in SQL would round differently on each).
_DAY_FIGURES = (
    "SELECT model, provider, count(*), "
    "sum(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END), "
    "coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
    "coalesce(sum(CASE WHEN state = 'charged' THEN charged_msat ELSE 0 END), 0) "
    "FROM reservations WHERE settled_at >= :start AND settled_at < :end "
    "GROUP BY model, provider"
)
_KEY_COLUMNS = (
    "SELECT a.key_hash, a.kind, a.mint_url, a.unit, a.balance_msat, a.reserved_msat, "
    "a.total_spent_msat, a.total_requests, a.created_at, a.last_used_at, a.expires_at, "
    "a.disabled_at, p.key_hash, a.rate_limit "
    "FROM accounts a LEFT OUTER JOIN accounts p ON p.id = a.parent_id"
)
_KEY_BY_ID = _KEY_COLUMNS + " WHERE a.id = :id"
# Hex sorts the same in every collation: the keys starting with `lo` are those in [lo, hi).
_FIND_PREFIX = "SELECT id FROM accounts WHERE key_hash >= :lo AND key_hash < :hi LIMIT 2"
_DISABLE = "UPDATE accounts SET disabled_at = :now WHERE id = :id AND disabled_at IS NULL"
_ENABLE = "UPDATE accounts SET disabled_at = NULL WHERE id = :id"
_SET_RATE_LIMIT = "UPDATE accounts SET rate_limit = :limit WHERE id = :id"
_HEX = re.compile(r"[0-9a-f]+")


@dataclass
class Figures:
    """Requests, failed requests, tokens and revenue of some slice of the traffic."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    revenue_msat: int = 0

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.revenue_msat += other.revenue_msat

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "revenue_msat": self.revenue_msat,
        }


def day_start(moment: float) -> float:
    """The Unix time of 00:00 UTC on the day of `moment`."""
    return float(moment // DAY_SECONDS * DAY_SECONDS)


def _day_name(start: float) -> str:
    return datetime.fromtimestamp(start, UTC).date().isoformat()


def _grouped(groups: dict[Any, Figures], name: str) -> list[dict[str, Any]]:
    """One slice per group, the largest revenue first (then by name)."""
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1].revenue_msat, str(kv[0] or "")))
    return [{name: key, **figures.as_dict()} for key, figures in ordered]


def _key_object(row: tuple[Any, ...]) -> dict[str, Any]:
    (key_hash, kind, mint_url, unit, balance, reserved, spent, requests) = row[:8]
    created_at, last_used_at, expires_at, disabled_at, parent_hash, rate_limit = row[8:]
    return {
        "hash_prefix": key_hash[:PREFIX_CHARS],
        "kind": kind,
        "mint_url": mint_url,
        "unit": unit,
        "balance_msat": int(balance),
        "reserved_msat": int(reserved),
        "total_spent_msat": int(spent),
        "total_requests": int(requests),
        "created_at": created_at,
        "last_used_at": last_used_at,
        "expires_at": expires_at,
        "disabled": disabled_at is not None,
        "parent": parent_hash[:PREFIX_CHARS] if parent_hash else None,
        "rate_limit": rate_limit,  # None: the node's RATE_LIMIT
    }


def parse_kinds(value: str | None) -> tuple[str, ...]:
    """`?kind=` as kinds: a comma-separated list, `all`, or (absent) every kind but xcashu."""
    if not value:
        return DEFAULT_KINDS
    if value == "all":
        return KINDS
    kinds = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ApiError(
            400, "invalid_request", f"kind must be 'all' or a list of {', '.join(KINDS)}."
        )
    return kinds


class OperatorUsage:
    """Usage figures and the operator's view of keys, read from the ledger's tables."""

    def __init__(self, tx: TxRunner) -> None:
        self._tx = tx

    async def figures(self, days: int, now: float | None = None) -> dict[str, Any]:
        """Totals, by model, by provider and by day over the last `days` days (today included).

        Every day of the range is in `by_day`, zeros where nothing ended.
        """
        if not 1 <= days <= MAX_DAYS:
            raise ApiError(400, "invalid_request", f"days must be 1 to {MAX_DAYS}.")
        today = day_start(time.time() if now is None else now)
        starts = [today - (days - 1 - i) * DAY_SECONDS for i in range(days)]

        def read(tx: Tx) -> list[list[tuple[Any, ...]]]:
            return [
                tx.execute(_DAY_FIGURES, {"start": start, "end": start + DAY_SECONDS})[0]
                for start in starts
            ]

        per_day = await self._tx.read(read)
        totals = Figures()
        by_model: dict[str, Figures] = {}
        by_provider: dict[str | None, Figures] = {}
        by_day: list[dict[str, Any]] = []
        for start, rows in zip(starts, per_day, strict=True):
            day = Figures()
            for model, provider, requests, errors, input_tokens, output_tokens, revenue in rows:
                slice_ = Figures(
                    int(requests), int(errors), int(input_tokens), int(output_tokens), int(revenue)
                )
                day.add(slice_)
                by_model.setdefault(model, Figures()).add(slice_)
                by_provider.setdefault(provider, Figures()).add(slice_)
            totals.add(day)
            by_day.append({"day": _day_name(start), **day.as_dict()})
        return {
            "since": starts[0],
            "totals": totals.as_dict(),
            "by_model": _grouped(by_model, "model"),
            "by_provider": _grouped(by_provider, "provider"),
            "by_day": by_day,
        }

    async def keys(
        self, kinds: tuple[str, ...] = DEFAULT_KINDS, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """One page of keys of these kinds, newest first, and how many there are in all."""
        names = {f"k{i}": kind for i, kind in enumerate(kinds)}
        among = "a.kind IN (" + ", ".join(f":{name}" for name in names) + ")"
        page = _KEY_COLUMNS + f" WHERE {among} ORDER BY a.id DESC LIMIT :limit OFFSET :offset"
        count = f"SELECT count(*) FROM accounts a WHERE {among}"

        def read(tx: Tx) -> tuple[list[tuple[Any, ...]], int]:
            rows, _ = tx.execute(page, {**names, "limit": limit, "offset": offset})
            total, _ = tx.execute(count, names)
            return rows, int(total[0][0])

        rows, total = await self._tx.read(read)
        return {"keys": [_key_object(row) for row in rows], "total": total}

    async def set_disabled(self, hash_prefix: str, disabled: bool) -> dict[str, Any]:
        """Disable (or enable again) the one key whose hash starts with `hash_prefix`.

        Its balance stays; requests already running finish and are charged as usual.
        """
        now = time.time()

        def change(tx: Tx, account_id: int) -> None:
            if disabled:
                tx.execute(_DISABLE, {"id": account_id, "now": now})
            else:
                tx.execute(_ENABLE, {"id": account_id})

        return _key_object(await self._change(hash_prefix, change))

    async def set_rate_limit(self, hash_prefix: str, limit: str | None) -> tuple[str, Any]:
        """Give a key its own rate limit (`limits` syntax), or None for the node's again.

        Returns the key's full hash (for the node's in-memory overrides) and its key object.
        """
        if limit is not None:
            try:
                parse_limits(limit)
            except ValueError as exc:
                raise ApiError(400, "invalid_request", f"rate_limit: {exc}") from None
            limit = limit.strip()

        def change(tx: Tx, account_id: int) -> None:
            tx.execute(_SET_RATE_LIMIT, {"id": account_id, "limit": limit})

        row = await self._change(hash_prefix, change)
        return str(row[0]), _key_object(row)

    async def _change(self, hash_prefix: str, change: Callable[[Tx, int], None]) -> tuple[Any, ...]:
        """Apply `change` to the one key whose hash starts with `hash_prefix`; its row after."""
        prefix = hash_prefix.strip().lower()
        if not MIN_PREFIX_CHARS <= len(prefix) <= 64 or not _HEX.fullmatch(prefix):
            raise ApiError(
                400,
                "invalid_request",
                f"Name the key by {MIN_PREFIX_CHARS} to 64 hex characters of its hash "
                "(its hash_prefix in GET /admin/api/keys).",
            )

        def write(tx: Tx) -> tuple[Any, ...]:
            found, _ = tx.execute(_FIND_PREFIX, {"lo": prefix, "hi": prefix + "g"})
            if not found:
                raise ApiError(404, "not_found", f"No key's hash starts with {prefix}.")
            if len(found) > 1:
                raise ApiError(
                    409,
                    "ambiguous_key",
                    f"Several keys' hashes start with {prefix}; give more of the hash.",
                )
            account_id = int(found[0][0])
            change(tx, account_id)
            rows, _ = tx.execute(_KEY_BY_ID, {"id": account_id})
            return tuple(rows[0])

        return await self._tx.run(write, durable=True)
