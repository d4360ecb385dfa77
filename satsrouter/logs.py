"""Logging setup, with a filter that masks anything shaped like a token or key (I8)."""

from __future__ import annotations

import logging
import re

# Cashu tokens, sk- keys and bearer values: masked wherever they would appear in a log line.
# So are Lightning invoice ids in status paths: a paid `create` invoice's id yields its key.
_SECRET = re.compile(
    r"(cashu[AB][A-Za-z0-9_\-+/=]{8,}|sk-[A-Za-z0-9_\-]{8,}|Bearer\s+\S+"
    r"|(?<=/lightning/invoice/)[A-Za-z0-9_\-]{8,})"
)


def mask_secrets(text: str) -> str:
    """Replace tokens and keys in `text` with a short marker."""
    return _SECRET.sub(lambda m: m.group(0)[:6] + "…[redacted]", text)


class SecretFilter(logging.Filter):
    """Last line of defence: no log record leaves with a token or key in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_installed = False


def install_secret_masking() -> None:
    """Mask secrets in every log record at creation, whoever logs it and wherever it goes."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)  # type: ignore[arg-type]
        try:
            message = record.getMessage()
        except Exception:
            return record
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return record

    logging.setLogRecordFactory(factory)


def setup_logging(level: str = "INFO") -> None:
    """Configure root logging once, with secrets masked on every handler."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter())
    install_secret_masking()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that would echo request lines or bodies stay quieter than ours.
    for noisy in ("aiosqlite", "sqlalchemy.engine", "httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
