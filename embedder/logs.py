"""Logging set-up: plain lines for people, JSON lines for log pipelines; no credentials.

Every line passes :func:`redact` on its way out, whatever logger wrote it (ours, httpx's,
pymongo's), so a URL with credentials in it never reaches a log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from embedder.queue.connection import redact_uri

# The LogRecord attribute that carries structured fields: JSON lines hold them as JSON values
# (``log.info("run finished", extra=logs.fields(summary={...}))``), plain lines only the message.
_FIELDS = "embedder_fields"

# scheme://user:password@ or scheme://token@ in any URL (http, https, mongodb, s3...).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/\s?#]*)@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced: ``user:***@`` where the
    URL names a user and a password, ``***@`` where it carries a single token; MongoDB URIs'
    other credentials (their options) as :func:`redact_uri` hides them."""
    return redact_uri(_USERINFO.sub(_hidden, text))


def _hidden(match: re.Match[str]) -> str:
    user, colon, _ = match.group("userinfo").partition(":")
    shown = f"{user}:***" if colon and user else "***"
    return f"{match.group('scheme')}{shown}@"


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name, value in getattr(record, _FIELDS, {}).items():
            entry.setdefault(name, _redacted(value))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def fields(**values: object) -> dict[str, dict[str, object]]:
    """``extra=`` for a log call whose ``values`` JSON lines carry as fields of their own."""
    return {_FIELDS: values}


def json_lines_on() -> bool:
    """Whether logging writes JSON lines (a command then leaves its human report out)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def _redacted(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


def configure(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_Redacting("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO: far too much at thousands of requests a second.
    logging.getLogger("httpx").setLevel(logging.WARNING)
