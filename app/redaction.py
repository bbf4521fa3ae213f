"""No secrets in logs: every log record of the process is redacted as it is created.

Settings hold keys as `SecretStr` (printed as `**********`), and the API never logs headers; but
uvicorn's access log prints request paths with their query strings (a client that puts its key
in the URL), and a library may log a URL or an error that quotes a header. So a log-record
factory, installed once per process by the API factory, replaces in every record's message and
string arguments: the configured secrets, `Bearer <token>`, tenant keys (`rag_...`) and
`api_key=`/`key=`/`token=` query values. A record factory sees every record, whichever logger
or handler (uvicorn configures its own) ends up writing it; the arguments keep their types, so
formatters that unpack them (uvicorn's access formatter) still work.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from config.settings import Settings

REDACTED = "[redacted]"
_PATTERNS = (  # (?!%): a `%s` placeholder of a log format string is not a token
    re.compile(r"(?i)(bearer\s+)(?!%)[^\s'\",;]+"),
    re.compile(r"\brag_[A-Za-z0-9_-]{16,}"),
    re.compile(r"(?i)\b((?:api[_-]?key|key|token|access_token)=)(?!%)[^&\s'\"]+"),
)
_secrets: set[str] = set()
_lock = threading.Lock()


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text


def install_redaction(settings: Settings) -> None:
    """Redact the settings' secrets (and token-shaped values) from every log record from now on."""
    found = [settings.llm.api_key, settings.api.api_key, settings.index.chroma_auth_token]
    with _lock:
        _secrets.update(s.get_secret_value() for s in found if s is not None and len(s.get_secret_value()) >= 6)
        make_record = logging.getLogRecordFactory()
        if getattr(make_record, "redacting", False):
            return

        def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            try:
                full = record.getMessage()
            except Exception:  # a broken format string: logging reports it itself
                return record
            clean = redact(full)
            if clean == full:
                return record
            # Redact the parts, so formatters that unpack the arguments keep working; when a secret
            # spans them ("Bearer %s" with the token as argument), keep the redacted message alone.
            if isinstance(record.msg, str):
                record.msg = redact(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(_redact_arg(a) for a in record.args)
            if _message(record) != clean:
                record.msg, record.args = clean, ()
            return record

        redacting_record.redacting = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(redacting_record)


def _redact_arg(value: object) -> object:
    """Numbers stay numbers (`%d`); anything else is redacted as the text it would print as (a URL
    object's query string too)."""
    if value is None or isinstance(value, int | float):
        return value
    return redact(value if isinstance(value, str) else str(value))


def _message(record: logging.LogRecord) -> str | None:
    try:
        return record.getMessage()
    except Exception:
        return None
