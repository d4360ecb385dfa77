"""Fault injection for crash tests: the process exits abruptly at a named money step.

Off unless `FAULT_CRASH_AT=<step>` is set (never in production). The exit is `os._exit`:
no `finally`, no flush, no clean shutdown — as if the machine lost power at that point,
except that committed transactions are on disk. Steps are named where they are reached;
`STEPS` lists them for the tests and the docs.
"""

from __future__ import annotations

import os
import sys

STEPS = (
    "redeem.after_intent",  # a token's redemption recorded, its swap not yet recorded
    "receive.after_intent",  # a swap recorded with its outputs, not yet sent to the mint
    "receive.after_swap",  # the mint swapped, the new proofs not yet stored
    "receive.after_store",  # proofs stored and balance credited, not yet answered
    "payout.after_begin",  # a payout debited, no token chosen yet
    "split.after_intent",  # a split of the node's proofs recorded, not yet sent
    "split.after_swap",  # the mint split them, the new proofs not yet stored
    "issue.after_record",  # a token handed over with its payout, not yet answered
    "mint.after_outputs",  # a paid quote's outputs recorded, not yet minted
    "mint.after_mint",  # the mint signed the quote's outputs, proofs not yet stored
    "melt.after_intent",  # a melt recorded and its proofs reserved, not yet sent
    "melt.after_melt",  # the mint answered the melt, not yet settled
)

_crash_at = ""


def configure(step: str | None) -> None:
    """Arm (or with None/"" disarm) the crash at `step`."""
    global _crash_at
    if step and step not in STEPS:
        raise ValueError(f"unknown fault step {step!r}; one of: {', '.join(STEPS)}")
    _crash_at = step or ""


def reach(step: str) -> None:
    """A money step was reached: exit at once if a crash was asked for here."""
    if _crash_at and _crash_at == step:
        sys.stderr.write(f"satsrouter: fault injection: exiting at {step}\n")
        sys.stderr.flush()
        os._exit(137)
