"""structlog set-up shared by every pairdb process: key=value fields, JSON in services.

Libraries that log through the standard `logging` module (the Temporal SDK,
and workflow code's `workflow.logger`) are rendered the same way, with their
`extra` fields as keys. No line shows a password: a field whose name contains
`dsn`, and any value holding a connection string with a password, is masked.
"""

from __future__ import annotations

import logging
import sys

import structlog

from pairdb.security.secrets import mask_dsn, mask_secrets


def mask_passwords(
    logger: object, method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """structlog processor: mask every password a connection string in the event would show."""
    for name, value in event_dict.items():
        if not isinstance(value, str):
            if "dsn" in name.lower() and value is not None:
                event_dict[name] = mask_dsn(str(value))
            continue
        if "dsn" in name.lower():
            event_dict[name] = mask_dsn(value)
        # Cheap test first: almost no value is a connection string.
        elif "://" in value or "password" in value.lower():
            event_dict[name] = mask_secrets(value)
    return event_dict


def configure(json: bool = True, level: str = "INFO") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Last before rendering, so it also sees fields added by the stdlib's `extra`, and a
    # traceback as text (the console renderer formats its own, pretty and unmasked).
    masked: list[structlog.typing.Processor] = [
        *([structlog.processors.format_exc_info] if json else []),
        mask_passwords,
    ]
    structlog.configure(
        processors=[*shared, *masked, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), *masked],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
