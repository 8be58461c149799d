"""The run ledger's model (`autopilot_common.ledger`) and its published JSON Schema (`config/ledger.schema.json`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from autopilot_common.ledger import RUN_STATES, iso, ledger_key, ledger_prefix, skipped_entry
from config.ledger_schema import SCHEMA_PATH, ledger_schema, render

VALIDATOR = jsonschema.Draft202012Validator(ledger_schema())
STARTED = {
    "schema_version": 1,
    "run_id": "sales-daily-0123456789abcdef01234567",
    "pipeline": "sales-daily",
    "state": "STARTED",
    "started_at": "2026-12-07T01:02:03.456Z",
    "ended_at": None,
    "trigger": {"type": "console"},
    "admission": {
        "queued_at": "2026-12-07T01:02:03.456Z",
        "admitted_at": "2026-12-07T01:02:04.000Z",
        "queued_seconds": 0.544,
        "waited": False,
    },
}


def _errors(entry: dict[str, Any]) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(entry)]


def test_the_published_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render(), "run `make docs`"


def test_a_well_formed_entry_validates_in_every_state() -> None:
    for state in RUN_STATES:
        assert _errors({**STARTED, "state": state}) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"state": "DONE"}, "'DONE' is not one of"),
        ({"colour": "blue"}, "Additional properties are not allowed ('colour' was unexpected)"),
        ({"schema_version": 2}, "1 was expected"),
        ({"admission": {"queued_at": 5}}, "is not valid under any of the given schemas"),
    ],
)
def test_the_schema_refuses_what_readers_could_not_rely_on(change: dict[str, Any], expected: str) -> None:
    errors = _errors({**STARTED, **change})
    assert any(expected in e for e in errors), errors


def test_a_required_field_missing_is_refused() -> None:
    entry = {k: v for k, v in STARTED.items() if k != "run_id"}
    assert _errors(entry) == ["'run_id' is a required property"]


def test_the_router_skipped_entry_is_a_valid_entry() -> None:
    at = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)
    entry = skipped_entry(
        pipeline="p",
        run_id="p-0123",
        reason="waiting for marker",
        at=at,
        trigger={"type": "s3"},
        objects=[{"bucket": "b", "key": "k", "size": 1}],
    )
    assert _errors(json.loads(json.dumps(entry))) == []
    assert entry["state"] == "SKIPPED" and entry["object_count"] == 1


def test_keys_and_times_follow_the_layout() -> None:
    started = datetime(2026, 1, 2, 23, 30, 0, 123456, tzinfo=UTC)
    assert ledger_key("p", started, "p-1") == "_runs/p/2026/01/02/p-1.json"
    assert ledger_prefix() == "_runs/" and ledger_prefix("p") == "_runs/p/"
    assert iso(started) == "2026-01-02T23:30:00.123Z"
