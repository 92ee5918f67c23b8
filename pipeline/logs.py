"""structlog JSON logging, configured once per process (driver, Ray worker, test)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

_CONFIGURED = False


def configure(level: str | None = None) -> None:
    """JSON lines on stderr; `GENSCAN_LOG_LEVEL` overrides the level. Safe to call repeatedly."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    lvl = getattr(logging, (level or os.environ.get("GENSCAN_LOG_LEVEL", "INFO")).upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _CONFIGURED = True


def get_logger(name: str, **bound: object) -> structlog.typing.FilteringBoundLogger:
    configure()
    return structlog.get_logger(name).bind(logger=name, **bound)
