"""The run ledger's JSON Schema (`config/ledger.schema.json`), generated from the kernel's typed model
(`autopilot_common.ledger.RunLedgerEntry`) for readers outside the app: `make docs` writes it, a unit test
keeps it current, and the e2e suite validates every entry the app writes against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from autopilot_common.ledger import RUN_STATES, RunLedgerEntry

SCHEMA_PATH = Path(__file__).resolve().parent / "ledger.schema.json"


def ledger_schema() -> dict[str, Any]:
    schema = TypeAdapter(RunLedgerEntry).json_schema()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/emr-autopilot/emr-autopilot/config/ledger.schema.json",
        "title": "EMR Autopilot run ledger entry",
        "description": (
            "One run at s3://<outputs>/_runs/<pipeline>/<YYYY>/<MM>/<DD>/<run id>.json. "
            f"States: {', '.join(RUN_STATES)}."
        ),
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }
    return schema


def render() -> str:
    return json.dumps(ledger_schema(), indent=2, sort_keys=False) + "\n"


def write() -> Path:
    SCHEMA_PATH.write_text(render(), encoding="utf-8")
    return SCHEMA_PATH


if __name__ == "__main__":
    print(f"wrote {write()}")
