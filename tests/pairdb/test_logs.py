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


def test_no_log_line_shows_a_password(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(json=True, level="INFO")
    try:
        log = structlog.get_logger()
        log.info("Connecting", postgres_dsn="host=db password=pw1 dbname=pairdb")
        log.info("Connecting", target="postgresql://pairdb:pw2@db:5432/pairdb", tenant_id="acme")
        logging.getLogger("asyncpg").warning("retrying", extra={"dsn": "postgresql://db/x?password=pw3"})
        try:
            raise RuntimeError("cannot reach postgresql://u:pw4@db/pairdb")
        except RuntimeError:
            log.exception("Metadata store unreachable")
        out = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers = []
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert not any(f"pw{i}" in out for i in range(1, 5)), out
    assert lines[0]["postgres_dsn"] == "host=db password=*** dbname=pairdb"
    assert lines[1]["target"] == "postgresql://pairdb:***@db:5432/pairdb" and lines[1]["tenant_id"] == "acme"
    assert lines[2]["dsn"] == "postgresql://db/x?password=***"
    assert "postgresql://u:***@db/pairdb" in lines[3]["exception"]
