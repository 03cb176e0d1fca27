"""The service's log lines: text on a terminal, JSON lines elsewhere (``OCELLUS_LOG_FORMAT``).

Every record gets the ID of the request it was written for (service/context.py),
from the event loop, a decode thread or an inference thread alike. Fields given
as ``extra={...}`` are kept: as JSON keys, or as ``key=value`` after a text
line. Events (a model loaded or refused, a reload, a batch, a request's access
line) are records with an ``event`` field and their own fields.

One access line per request (``event: "access"``, written by
`service.middleware.RequestMiddleware`) replaces uvicorn's, which is turned off.
Neither carries headers, bodies or query strings, so an API key, the admin
token or image bytes never reach a log line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from service import context, tracing

FORMATS = ("auto", "text", "json")
# What every LogRecord has; anything else on a record came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "taskName", "color_message"}  # uvicorn's ANSI copy


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request's ID (None outside a request) and,
    when the request is traced, its trace ID."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = context.current_id()
        if getattr(record, "trace_id", None) is None and (tid := tracing.trace_id()):
            record.trace_id = tid
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and the extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if getattr(record, "request_id", None) is not None:
            line["request_id"] = record.request_id
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message [request_id] key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        head, _, tail = text.partition("\n")  # a traceback stays below the line
        rid = getattr(record, "request_id", None)
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        head += (f" [{rid}]" if rid else "") + (f" {extras}" if extras else "")
        return f"{head}\n{tail}" if tail else head


def configure_logging(log_format: str = "auto", level: str = "info") -> str:
    """Route every logger (uvicorn's too) to one stderr handler in the chosen format.

    Returns:
        The format used: ``auto`` is ``text`` on a terminal, ``json`` elsewhere.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {log_format!r}")
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler._ocellus = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # Ours replaced (a second call), others kept: a host's, or a test's capturing one.
    for old in [h for h in root.handlers if getattr(h, "_ocellus", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return log_format
