"""Read the run ledger for people: `RunRecord` and `read_runs` (autopilot_cli.ledger, the operator CLI's reader)
and the plain-text table the demo prints."""

from __future__ import annotations

from autopilot_cli.ledger import RunRecord as RunRecord
from autopilot_cli.ledger import read_runs as read_runs


def format_table(records: list[RunRecord]) -> str:
    """A plain-text table for people."""
    header = ("RUN ID", "PIPELINE", "STATE", "WAITED", "DURATION", "ROWS IN", "ROWS OUT", "OUTPUT", "LEDGER")
    rows = [
        (
            r.run_id,
            r.pipeline,
            r.state,
            r.waited,
            f"{r.duration_seconds:.1f}s" if r.duration_seconds is not None else "-",
            str(r.rows_in) if r.rows_in is not None else "-",
            str(r.rows_out) if r.rows_out is not None else "-",
            r.output_uri or "-",
            r.ledger_uri,
        )
        for r in records
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(lines)
