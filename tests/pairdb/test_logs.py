"""Logs: JSON key=value lines with the seed's field names, standard-library loggers included."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from pairdb.serving import logs, request_ids


def test_structlog_and_stdlib_lines_are_json_with_context(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(json=True, level="INFO")
    try:
        request_ids.bind("req-123")
        structlog.get_logger().info(
            "Migration phase completed", migration_id="m1", phase="data_copy", duration="1s"
        )
        logging.getLogger("temporalio.workflow").info("Migration phase completed", extra={"phase": "cutover"})
        structlog.get_logger().debug("hidden at INFO")
        lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        logging.getLogger().handlers = []
    assert lines[0]["event"] == "Migration phase completed"
    assert (lines[0]["migration_id"], lines[0]["phase"], lines[0]["duration"]) == ("m1", "data_copy", "1s")
    assert lines[0]["request_id"] == "req-123" and lines[0]["level"] == "info"
    assert lines[1]["phase"] == "cutover" and lines[1]["request_id"] == "req-123"
    assert len(lines) == 2
