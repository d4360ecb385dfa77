"""Lightning at the node's edge: bolt11 invoices that fund keys, payouts to Lightning addresses.

- `invoices`: an invoice is a mint quote at the primary mint; a watcher mints the paid ones
  into the node's wallet and credits the key exactly once.
- `refunds`: balances paid out over Lightning by melting the node's ecash, debit-first
  through `billing.payouts`; melts of unknown outcome are finished from the mint's answer;
  keys past their expiry are refunded to their address.
- `lnurl`: LNURL-pay, the one fenced place where the node fetches a URL a user chose.

Above `billing` (balances, payouts) and `ecash` (the mint protocol: `minting`, `melting`),
below `http`. Nothing in `billing` imports this package: a key's withdrawal reaches the
Lightning payer through the `LightningPayer` protocol it is given.
"""
