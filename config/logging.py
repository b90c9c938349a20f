"""Logging: structlog, JSON lines in service mode and a readable console on a terminal.

Every event passes `Redactor` last-but-one, so no configured secret and no field named like a
secret (token, secret, sign, password, session, cookie, authorization) reaches the output, however
it got into the event (bound context, an exception text, a URL with a query string).
"""

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "**redacted**"
_SECRET_NAME = re.compile(
    r"(^|[_\-.])(secret|token|sign|signature|password|passwd|session|cookie|authorization|salt|key)$",
    re.IGNORECASE,
)
# Secrets inside URLs and form bodies: `…&sign=ABC&session=…`.
_SECRET_QUERY = re.compile(
    r"(?i)\b(sign|access_token|session|app_secret|token|password|salt)=([^&\s\"']+)"
)
_NOT_SECRET_NAMES = frozenset({"app_key", "idempotency_key", "key", "sign_method", "api_key_id"})


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered not in _NOT_SECRET_NAMES and bool(_SECRET_NAME.search(lowered))


class Redactor:
    """A structlog processor removing secret values and secret-named fields from an event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            value = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}={REDACTED}", value)
            return self._pattern.sub(REDACTED, value) if self._pattern else value
        if isinstance(value, dict):
            return {
                k: REDACTED if isinstance(k, str) and is_secret_name(k) else self.scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        if isinstance(value, BaseException):
            return self.scrub(repr(value))
        return value

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        for key in list(event):
            if is_secret_name(key):
                event[key] = REDACTED
            else:
                event[key] = self.scrub(event[key])
        return event


_redactor = Redactor()


def configure_logging(
    level: str = "info",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    json: bool | None = None,
) -> Redactor:
    """Set up structlog (and route stdlib logging through it). Call once at start-up."""
    out = stream or sys.stdout
    as_json = json if json is not None else not out.isatty()
    _redactor.update(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redactor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.getLevelName(level.upper()))
    # httpx logs every request at INFO; the connectors log what matters with context instead.
    for noisy in (
        "httpx",
        "httpcore",
        "uvicorn.access",
        "apscheduler.executors.default",
        "alembic.runtime.migration",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return _redactor


def get_logger(name: str | None = None, **context: Any) -> Any:
    return structlog.get_logger(name).bind(**context)
