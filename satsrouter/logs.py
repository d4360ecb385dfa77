"""Logging that never carries a secret (I8): quiet libraries at the source, masking as a backstop.

At the source: the database engines never put SQL parameters in logs or errors
(`hide_parameters`, see `store/engine.py`), and the libraries that would echo parameters,
result rows, URLs, headers or cookies (SQLAlchemy, aiosqlite, asyncpg, httpx, aiohttp) log
only warnings and errors whatever `LOG_LEVEL` says. The access log shows paths without their
query strings (`GET /v1/balance/create?initial_balance_token=…` carries a token).

The backstop: every record is masked when it is created, whoever logs it and wherever it
goes: its message, its traceback and its stack. Masking removes a secret whole, and also
any long opaque run of letters and digits — the tail a truncating library leaves after the
head (SQLAlchemy shows 150 characters of each end of a long parameter), a proof's secret or
C, a key without its prefix.
"""

from __future__ import annotations

import logging
import re
import traceback

# Cashu tokens, sk- keys and bearer values: the prefix stays, to say what was there. So do
# Lightning invoice ids in status paths: a paid `create` invoice's id yields its key.
_SECRET = re.compile(
    r"(?<![A-Za-z0-9])(?P<prefix>cashu[AB]|sk-)[A-Za-z0-9_\-+/=]{8,}"
    r"|(?P<bearer>Bearer\s+)\S+"
    r"|(?<=/lightning/invoice/)[A-Za-z0-9_\-]{8,}"
)
# A run of 32+ base64url or hex characters with a digit and a letter in it: a secret or a
# piece of one. Words, paths (split at `/` and `.`), request ids (24 hex) and the short hash
# prefixes we log on purpose are shorter or have no digit.
_OPAQUE = re.compile(
    r"(?<![A-Za-z0-9_\-+=])(?=[A-Za-z0-9_\-+=]*\d)(?=[A-Za-z0-9_\-+=]*[A-Za-z])"
    r"[A-Za-z0-9_\-+=]{32,}"
)
REDACTED = "…[redacted]"

# Loggers that would echo SQL parameters and result rows (sqlalchemy.engine at INFO/DEBUG,
# aiosqlite's DEBUG lines hold each call's arguments), URLs with quote ids or queries
# (httpx), headers (httpcore) or cookies (aiohttp): warnings and errors only.
QUIET_LOGGERS = ("sqlalchemy", "aiosqlite", "asyncpg", "httpx", "httpcore", "aiohttp")
_ACCESS_LOGGER = "uvicorn.access"


def mask_secrets(text: str) -> str:
    """Replace tokens, keys and opaque runs (secrets or pieces of them) with a marker."""
    text = _SECRET.sub(lambda m: (m.group("prefix") or m.group("bearer") or "") + REDACTED, text)
    return _OPAQUE.sub(REDACTED, text)


def _without_query(record: logging.LogRecord) -> None:
    # uvicorn's access line: (client, method, path with query, http version, status).
    args = record.args
    if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
        path = args[2].partition("?")[0]
        record.args = (*args[:2], f"{path}?[query hidden]", *args[3:])


def mask_record(record: logging.LogRecord) -> None:
    """Mask a record's message, traceback and stack in place (formatters reuse `exc_text`)."""
    if record.name == _ACCESS_LOGGER:
        _without_query(record)
    try:
        message = record.getMessage()
    except Exception:
        return  # a broken format string: logging reports it, with nothing of ours in it
    masked = mask_secrets(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = mask_secrets(record.exc_text)
    if record.stack_info:
        record.stack_info = mask_secrets(record.stack_info)


class SecretFilter(logging.Filter):
    """Last line of defence on a handler: no record leaves with a token or key in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


_installed = False


def quiet_libraries(level: int = logging.WARNING) -> None:
    """Let the libraries in `QUIET_LOGGERS` log only at `level` and above."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)


def secure_logging() -> None:
    """Quiet the libraries that echo secrets, and mask every record at creation.

    Called by every node at start, so a node embedded in another program (or the tests)
    is as safe as one run by `satsrouter serve`.
    """
    # Never below the root's own level: LOG_LEVEL=ERROR must not let library warnings through.
    quiet_libraries(max(logging.WARNING, logging.getLogger().level))
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)  # type: ignore[arg-type]
        mask_record(record)
        return record

    logging.setLogRecordFactory(factory)


def set_level(level: str) -> None:
    """Change how much the node logs while it runs (the admin's `log_level`)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    quiet_libraries(max(logging.WARNING, root.level))


def setup_logging(level: str = "INFO") -> None:
    """Configure root logging once, with secrets masked on every handler."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    secure_logging()
