"""Logs: JSON lines in service mode, secrets never printed."""

import io
import json
import logging

import structlog

from config.logging import configure_logging, get_logger


def test_json_lines_with_bound_context_and_redaction() -> None:
    stream = io.StringIO()
    configure_logging("info", secrets=["s3cr3t-app-secret"], stream=stream, json=True)
    log = get_logger("test", shop="tmall-flagship")
    log.info("pulled", orders=3, app_secret="s3cr3t-app-secret", url="https://x?sign=FFEE")
    log.warning("failed: auth with s3cr3t-app-secret rejected")
    logging.getLogger("stdlib").error("stdlib says s3cr3t-app-secret")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "pulled" and lines[0]["shop"] == "tmall-flagship"
    assert lines[0]["orders"] == 3 and lines[0]["level"] == "info"
    assert "s3cr3t-app-secret" not in stream.getvalue()
    assert "FFEE" not in stream.getvalue()
    assert len(lines) == 3
    structlog.reset_defaults()


def test_debug_is_filtered_at_info() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=True)
    get_logger().debug("hidden")
    assert stream.getvalue() == ""
    structlog.reset_defaults()
