"""Shared fixtures: state files, bucket settings and usage rows."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from exporter.ledger import Ledger

BUCKETS = {
    "neo_tool_call_duration_seconds": [0.1, 1, 10, 60, 600, 3600],
    "neo_task_run_credits": [0.1, 1, 10, 100],
    "neo_task_run_execution_seconds": [60, 600, 3600],
}


@pytest.fixture(autouse=True)
def _quiet_structlog() -> Iterator[None]:
    # Tests that do not configure logging must not write JSON to the terminal.
    with open(os.devnull, "w") as sink:
        structlog.configure(
            processors=[structlog.processors.KeyValueRenderer()],
            logger_factory=structlog.PrintLoggerFactory(file=sink),
            cache_logger_on_first_use=False,
        )
        yield
        structlog.reset_defaults()


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def ledger(state_path: Path) -> Iterator[Ledger]:
    opened = Ledger(state_path, buckets=BUCKETS, max_label_values=50)
    yield opened
    opened.close()


def usage_row(**overrides: Any) -> dict[str, Any]:
    """A valid per-stream TaskUsage row; override any field."""
    row: dict[str, Any] = {
        "task_id": "task-1",
        "stream_id": "stream-1",
        "model": "sonnet-4.6",
        "status": "completed",
        "step_count": 10,
        "tool_calls": 2,
        "agent_triggers": 1,
        "created_at": "2026-11-20T10:00:00Z",
        "neo_credits": 1.25,
        "llm_time_ms": 4000,
        "tool_time_ms": 1500,
        "total_execution_ms": 6000,
        "agent_breakdown": {"recon": 1},
        "tool_call_history": [
            {"index": 0, "timestamp": 1, "tool_name": "bash", "duration_ms": 500},
            {"index": 1, "timestamp": 2, "tool_name": "http_request", "duration_ms": 1000},
        ],
    }
    row.update(overrides)
    return row


def write_web_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(body)
    return path


def self_signed(folder: Path, name: str, san: str = "IP:127.0.0.1") -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
