"""Runs laid out for people (Rich) and for scripts (JSON), and AWS console links built from region and partition."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from autopilot_cli.status import Status
from rich.table import Table
from rich.text import Text

from autopilot_cli.ledger import RunRecord, failure_reason
from autopilot_common.links import run_links

STATE_STYLES = {"SUCCEEDED": "green", "FAILED": "red", "TIMED_OUT": "red", "ABORTED": "yellow",
                "CANCELLED": "yellow", "STARTED": "cyan", "QUEUED": "blue", "SKIPPED": "dim",
                "MISSED": "red", "UPSTREAM_FAILED": "yellow"}  # fmt: skip


def as_json(record: RunRecord) -> dict[str, Any]:
    """The entry for scripts: the fields operators look at first, the whole entry as `raw`, and derived values."""
    derived = {
        "duration_seconds": record.duration_seconds,
        "admission": record.admission or None,
        "failure": failure_reason(record.error, record.cause),
        "cost": record.raw.get("cost"),
    }
    return asdict(record) | derived


def _duration(record: RunRecord) -> str:
    seconds = record.duration_seconds
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def runs_table(records: list[RunRecord], width: int) -> Table:
    """One row per run in `width` columns (the terminal's): the error wraps in the room left; run ids stay whole
    while the terminal leaves the error 24 columns, else they fold. COST only when some run recorded one (ledgers of
    older versions have none: the error keeps the room)."""
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
    longest_id = max((len(r.run_id) for r in records), default=6)
    longest_pipeline = max((len(r.pipeline) for r in records), default=8)
    priced = any(isinstance(r.raw.get("cost"), dict) for r in records)  # no cost recorded anywhere: no column
    others = longest_pipeline + len("SUCCEEDED") + 16 + 7 + 7 + 9 + 24 + 2 * 7  # every other column and its gaps
    others += 11 if priced else 0  # COST ("$123.4567") and its gap
    whole_ids = width - others >= longest_id
    table.add_column("RUN ID", no_wrap=whole_ids, overflow="fold", min_width=min(longest_id, max(12, width - others)))
    table.add_column("PIPELINE", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("STARTED", no_wrap=True)
    table.add_column("TOOK", justify="right", no_wrap=True)
    table.add_column("WAITED", justify="right", no_wrap=True)
    table.add_column("ROWS", justify="right", no_wrap=True)
    if priced:
        table.add_column("COST", justify="right", no_wrap=True)
    table.add_column("ERROR", min_width=24)
    for r in records:
        rows = f"{r.rows_in if r.rows_in is not None else '-'}/{r.rows_out if r.rows_out is not None else '-'}"
        started = (r.started_at or "-").replace("T", " ")[:16]
        reason = failure_reason(r.error, r.cause) or r.raw.get("reason") or ""
        table.add_row(
            r.run_id,
            r.pipeline,
            Text(r.state, style=STATE_STYLES.get(r.state, "")),
            started,
            _duration(r),
            r.waited,
            rows,
            *([cost_cell(r.raw.get("cost"))] if priced else []),
            Text(_clip(str(reason), 200), style="red" if r.error else "dim"),
        )
    return table


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def console_links(record: RunRecord, region: str, partition: str) -> dict[str, str]:
    """Console pages of the run: the ledger entry's `links` when it records them, else computed from its ids (its
    execution, its cluster or job run, its logs in S3)."""
    recorded = record.raw.get("links")
    if isinstance(recorded, dict) and recorded:
        return {str(label): str(url) for label, url in recorded.items()}
    return run_links(record.raw, region, partition)


def usd(amount: float) -> str:
    """`$12.35`; below a dollar four decimals (`$0.0042`), so a small run's cost is not shown as $0.00."""
    return f"${amount:,.2f}" if abs(amount) >= 1 else f"${amount:.4f}"


def cost_cell(cost: Any) -> Text:
    """The runs table's COST: `$0.0042`, `n/a` (a price is missing: `show` says which), `-` (no cost recorded)."""
    if not isinstance(cost, dict):
        return Text("-", style="dim")
    amount = cost.get("usd")
    return Text(
        usd(float(amount)) if isinstance(amount, int | float) else "n/a", style="" if amount is not None else "yellow"
    )


def cost_rows(cost: Any) -> list[tuple[str, str]]:
    """`show`'s cost section: the total (or why there is none), each priced line, the notes, where prices came from."""
    if not isinstance(cost, dict):
        return []
    amount = cost.get("usd")
    total = (
        usd(float(amount)) if isinstance(amount, int | float) else f"unknown: {cost.get('reason') or 'no reason given'}"
    )
    rows = [("total", total)]
    for line in cost.get("breakdown") or []:
        rows.append(
            (str(line.get("item", "")), f"{line.get('quantity', 0):g} {line.get('unit', '')} x "
             f"${line.get('rate_usd', 0):g} = {usd(float(line.get('usd') or 0))}")
        )  # fmt: skip
    rows.extend(("note", str(note)) for note in cost.get("notes") or [])
    if cost.get("price_source"):
        rows.append(
            (
                "prices",
                f"{cost['price_source']}" + (f", as of {cost['prices_as_of']}" if cost.get("prices_as_of") else ""),
            )
        )
    return rows


def lineage_rows(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """A run of a pipeline run `after` others: each upstream run it read (pipeline, run id, ledger entry), and for an
    UPSTREAM_FAILED entry the upstream run that failed. Nothing for other runs."""
    rows = []
    for upstream in entry.get("upstream_runs") or []:
        rows.append(("upstream", f"{upstream.get('pipeline')} {upstream.get('run_id')}  {upstream.get('ledger_uri')}"))
    failed = entry.get("failed_upstream")
    if isinstance(failed, dict):
        rows.append(("failed", f"{failed.get('pipeline')} {failed.get('run_id')}  {failed.get('ledger_uri')}"))
    return rows


def step_attempt_rows(steps: Any) -> list[tuple[str, str]]:
    """EMR-on-EC2 steps that were submitted more than once (runtime.retry): one row per submission, with the class
    and reason of each failure. Nothing for runs whose steps ran once."""
    rows: list[tuple[str, str]] = []
    for step in steps if isinstance(steps, list) else []:
        attempts = step.get("attempts") or [] if isinstance(step, dict) else []
        if len(attempts) < 2:
            continue
        for a in attempts:
            cls, reason = a.get("failure_class"), a.get("reason")
            why = (f" {cls}: {reason}" if reason else f" {cls}") if cls else ""
            rows.append((f"{step.get('name')} #{a.get('attempt')}", f"{a.get('state')} {a.get('step_id')}{why}"))
    return rows


def job_attempt_rows(attempts: Any) -> list[tuple[str, str]]:
    """EMR Serverless / EMR on EKS job runs that took more than one attempt (runtime.retry): one row per attempt
    with its state and the service's reason. Nothing for runs that took one."""
    if not isinstance(attempts, list) or len(attempts) < 2:
        return []
    rows = []
    for a in attempts:
        why = a.get("state_details") or a.get("reason")
        times = " ".join(str(a[k]) for k in ("started_at", "ended_at") if a.get(k))
        rows.append(
            (
                f"#{a.get('attempt')}",
                f"{a.get('state')}" + (f": {why}" if why else "") + (f" ({times})" if times else ""),
            )
        )
    return rows


def show_run(
    console: Console, record: RunRecord, region: str, partition: str, log: tuple[str, list[str]] | None = None
) -> None:
    """The entry laid out for people: what, when, from what, to what, why it failed, where to look."""
    entry = record.raw
    console.print(Text.assemble((record.run_id, "bold"), "  ", (record.state, STATE_STYLES.get(record.state, ""))))
    rows: list[tuple[str, str]] = [("pipeline", record.pipeline), ("runtime", str(entry.get("runtime") or "-"))]
    trigger = entry.get("trigger") or {}
    if trigger:
        rows.append(("trigger", str(trigger.get("source") or trigger.get("type") or trigger)))
    if entry.get("logical_date"):  # the partition it covers: scheduled runs, backfills, arrivals in one partition
        rows.append(("logical date", str(entry["logical_date"])))
    if trigger.get("scheduled_time"):
        rows.append(("scheduled", f"{trigger['scheduled_time']} ({trigger.get('timezone', 'UTC')} clock)"))
    _section(console, "run", rows)
    timeline = [(label, str(entry[key])) for key, label in (("started_at", "started"), ("ended_at", "ended"))
                if entry.get(key)]  # fmt: skip
    admission = record.admission
    if admission.get("queued_at"):
        timeline.insert(0, ("queued", str(admission["queued_at"])))
    if admission.get("admitted_at"):
        timeline.insert(1, ("admitted", f"{admission['admitted_at']} (waited {record.waited})"))
    timeline.append(("took", _duration(record)))
    _section(console, "timeline", timeline)
    inputs = [("manifest", str(entry["input_manifest"]))] if entry.get("input_manifest") else []
    if "object_count" in entry:
        inputs.append(("objects", str(entry["object_count"])))
    _section(console, "inputs", inputs)
    _section(console, "lineage", lineage_rows(entry))
    outputs = [("output", record.output_uri or "-"), ("logs", str(entry.get("log_uri") or "-"))]
    if record.metrics:
        outputs.append(("metrics", ", ".join(f"{k}={v}" for k, v in sorted(record.metrics.items()))))
    outputs.append(("ledger", record.ledger_uri))
    _section(console, "outputs", outputs)
    if reason := failure_reason(record.error, record.cause) or entry.get("reason"):
        _section(console, "failure" if record.error else "reason", [("why", str(reason))])
    _section(console, "step attempts", step_attempt_rows(entry.get("steps")))
    _section(console, "job run attempts", job_attempt_rows(entry.get("attempts")))
    _section(console, "cost", cost_rows(entry.get("cost")))
    if log is not None:
        where, lines = log
        _section(console, "driver log", [("log", where)] + [("", line) for line in lines])
    _section(console, "console", list(console_links(record, region, partition).items()))


def _section(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    if not rows:
        return
    console.print(Text(title, style="bold underline"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(f"  {label}", value)
    console.print(grid)


_STOPPED = (("clusters_terminated", "clusters terminated"), ("steps_cancelled", "steps cancelled"),
            ("job_runs_cancelled", "job runs cancelled"), ("alarms_deleted", "alarms deleted"))  # fmt: skip


def show_cancelled(console: Console, record: RunRecord) -> None:
    """A cancelled run: its final state, why, who stopped it, and what the guardrail's cleanup stopped."""
    entry = record.raw
    console.print(Text.assemble((record.run_id, "bold"), "  ", (record.state, STATE_STYLES.get(record.state, ""))))
    rows = [("why", failure_reason(record.error, record.cause) or "-")]
    if entry.get("aborted_by"):
        rows.append(("stopped by", str(entry["aborted_by"])))
    rows.append(("ended", str(entry.get("ended_at") or "-")))
    _section(console, "run", rows)
    found = entry.get("cleanup")
    cleanup: dict[str, Any] = found if isinstance(found, dict) else {}
    stopped = [(label, ", ".join(map(str, cleanup.get(key) or [])) or "none") for key, label in _STOPPED]
    stopped.append(("slot released", "yes" if cleanup.get("slot_released") else "no"))
    _section(console, "cleanup" + (f" at {cleanup['at']}" if cleanup.get("at") else ""), stopped)


def show_status(console: Console, status: Status) -> None:
    """Three tables (executions, clusters, job runs), each saying `none` when empty."""
    executions = [(e["pipeline"], e["run_id"], e["started_at"].replace("T", " ")[:19], e["ledger_state"] or "-",
                   f"#{e['position']} in line" if e["position"] else "") for e in status.executions]  # fmt: skip
    title = f"executions running ({len(executions)})"
    if status.more_executions:
        title += f"; more than {len(executions)} for {', '.join(status.more_executions)}"
    _table(console, title, ("PIPELINE", "RUN ID", "STARTED", "LEDGER", "PLACE"), executions)
    clusters = [(c["cluster_id"], c["state"], c["pipeline"] or "-", c["run_id"] or "-") for c in status.clusters]
    _table(console, f"EMR clusters ({len(clusters)})", ("CLUSTER", "STATE", "PIPELINE", "RUN ID"), clusters)
    jobs = [(j["job_run_id"], j["state"], j["runtime"], j["where"], j["name"] or "-") for j in status.job_runs]
    _table(console, f"job runs ({len(jobs)})", ("JOB RUN", "STATE", "RUNTIME", "WHERE", "NAME"), jobs)


def _table(console: Console, title: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    console.print(Text(title, style="bold underline"))
    if not rows:
        console.print("  none")
        return
    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(value, style=STATE_STYLES.get(value, "")) for value in row))
    console.print(table)


def human_bytes(size: int) -> str:
    """1536 -> `1.5 KiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def show_backfill(console: Console, title: str, partitions: Sequence[Any]) -> None:
    """One line per partition of a backfill (`autopilot_cli.backfill.Partition`): what it holds, its run id and what
    happens (or would happen) to it."""
    rows = [(p.partition, p.prefix, str(p.objects), human_bytes(p.bytes), p.run_id, p.action) for p in partitions]
    _table(console, title, ("PARTITION", "PREFIX", "OBJECTS", "BYTES", "RUN ID", "ACTION"), rows)
