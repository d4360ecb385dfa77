"""The units accounts and tokens are kept in, and what one whole unit is in msat.

Shared vocabulary below every layer: ecash parses tokens in these units, billing keeps
balances in them, and the HTTP answers state amounts in them.
"""

from __future__ import annotations

# msat per whole unit. Amounts inside the node are msat; a unit only says how a token or
# an account counts them.
UNIT_MSAT = {"sat": 1000, "msat": 1}
# The units the node accepts tokens in and keeps accounts in.
SUPPORTED_UNITS = tuple(UNIT_MSAT)
