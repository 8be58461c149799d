"""Backfill: one console run per date partition (or per given prefix) of the landing bucket, started at a bounded
rate under deterministic execution names, so running the same backfill again starts nothing twice.

Which objects a partition holds is decided as the router decides for arrivals and scheduled firings
(`autopilot_common.manifest.list_partition`: `keys.skip_reason` with the trigger's suffixes, zero-byte rule and
marker); the run gets the partition's prefix when prepare would read exactly those objects from it, else the objects
themselves (prepare reads every non-hidden, non-empty object under a prefix, whatever its suffix)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from autopilot_cli.deployment import Deployment, execution_arn
from autopilot_cli.errors import UsageProblem
from autopilot_cli.inputs import MAX_CONSOLE_INPUTS
from autopilot_common.logical_dates import TemplateError, label, parse_logical_date, partitions
from autopilot_common.logical_dates import every_of as template_every
from autopilot_common.manifest import list_partition
from autopilot_common.names import backfill_run_id
from autopilot_common.s3uri import parse_s3_uri, s3_uri
from config.model import MarkerBatching, Pipeline

START, EMPTY, STARTED = "start", "empty: not started", "started"
ALREADY = "already started"  # + " (STATE)"
REFUSED = "refused"  # + ": why"
DEFAULT_RATE = 30  # starts per minute
_sleep = time.sleep  # the tests step the world forward here
Wanted = tuple[str, str, str]  # (partition, prefix, run id)


@dataclass
class Partition:
    """One partition of a backfill: where it is, what it holds, its run and what happens to it."""

    partition: str  # the logical date (2024-06-01, 2024-06-01T05) or, with --prefixes, the prefix
    prefix: str  # key prefix in the landing bucket
    run_id: str
    objects: int = 0
    bytes: int = 0
    inputs: list[str] = field(default_factory=list)  # the run's console `inputs`
    action: str = START
    execution_arn: str | None = None

    @property
    def failed(self) -> bool:
        return self.action.startswith(REFUSED)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def date_partitions(pipeline: str, config: Pipeline, template: str | None, start: str, end: str) -> list[Wanted]:
    """(logical date, prefix, run id) per partition of `--from`..`--to`; UsageProblem naming the flag or field."""
    where = "--template"
    if template is None:
        template = config.trigger.partition_template if config.trigger else None
        where = f"pipelines.{pipeline}.trigger.partition_template"
    if template is None:
        raise UsageProblem(
            f"pipeline {pipeline!r} has no trigger.partition_template in config: pass --template (e.g. "
            f"'{_prefix_of(config)}dt={{ds}}/') or set trigger.partition_template, or give --prefixes"
        )
    try:
        every = template_every(template)
    except TemplateError as exc:
        raise UsageProblem(f"{where}: {exc}") from None
    try:
        first = parse_logical_date(start, every, field="--from")
        last = parse_logical_date(end, every, field="--to", end=True)
    except TemplateError as exc:
        raise UsageProblem(str(exc)) from None
    try:
        moments = partitions(template, first, last)
    except TemplateError as exc:
        raise UsageProblem(f"--from {start} --to {end} with {where}: {exc}") from None
    out = []
    for moment, prefix in moments:
        _check_under_trigger(config, prefix, f"{where} {template!r} renders {prefix!r}, which")
        out.append((label(moment, every), prefix, backfill_run_id(pipeline, prefix, label(moment, every))))
    return out


def prefix_partitions(pipeline: str, config: Pipeline, landing: str, given: Sequence[str]) -> list[Wanted]:
    """(prefix, prefix, run id) per `--prefixes` entry: a key prefix, or an s3:// URI in the landing bucket."""
    out: dict[str, Wanted] = {}
    for value in given:
        prefix = value
        if value.startswith("s3://"):
            try:
                bucket, prefix = parse_s3_uri(value, field="--prefixes")
            except ValueError as exc:
                raise UsageProblem(str(exc)) from None
            if bucket != landing:
                raise UsageProblem(f"--prefixes: {value!r} is not in the landing bucket {landing!r}")
        if not prefix:
            raise UsageProblem(f"--prefixes: {value!r} is empty; expected a key prefix such as 'sales/dt=2024-06-01/'")
        _check_under_trigger(config, prefix, f"--prefixes: {value!r}")
        out.setdefault(prefix, (prefix, prefix, backfill_run_id(pipeline, prefix)))
    return list(out.values())


def _prefix_of(config: Pipeline) -> str:
    return config.arrivals.landing_prefix if config.arrivals else ""


def _check_under_trigger(config: Pipeline, prefix: str, what: str) -> None:
    """Prepare lets a run read only its pipeline's input prefix: a partition outside it would fail its run."""
    if not prefix.startswith(_prefix_of(config)):
        raise UsageProblem(f"{what} is not under the trigger's prefix {_prefix_of(config)!r}")


def plan(deployment: Deployment, pipeline: str, wanted: list[Wanted]) -> list[Partition]:
    """Each partition with its objects (as the router filters them), its inputs and what would happen to it."""
    config = deployment.pipeline_config(pipeline)
    landing = deployment.output("LandingBucket")
    s3, sfn = deployment.client("s3"), deployment.client("stepfunctions")
    machine = deployment.state_machine(pipeline)
    planned = []
    for name, prefix, run_id in wanted:
        part = Partition(name, prefix, run_id, execution_arn=execution_arn(machine, run_id))
        state = execution_state(sfn, part.execution_arn or "")
        if state is not None:
            part.action = f"{ALREADY} ({state})"
        _list(s3, landing, config, part)
        if state is None:
            part.execution_arn = None
            if not part.objects:
                part.action = EMPTY
        planned.append(part)
    return planned


def _list(s3: Any, landing: str, config: Pipeline, part: Partition) -> None:
    trigger = config.trigger
    marker = trigger.batching.marker_name if trigger and isinstance(trigger.batching, MarkerBatching) else None
    listing = list_partition(
        s3,
        landing,
        part.prefix,
        suffixes=trigger.suffixes if trigger else (),
        ignore_zero_byte=trigger.ignore_zero_byte if trigger else True,
        marker_name=marker,
    )
    matched = [o.key for o in listing.objects]
    part.objects, part.bytes = len(matched), listing.total_bytes
    if part.prefix.endswith("/") and matched == listing.read_by_prepare:
        part.inputs = [s3_uri(landing, part.prefix)]
    elif len(matched) <= MAX_CONSOLE_INPUTS:
        part.inputs = [s3_uri(landing, key) for key in matched]
    elif not part.action.startswith(ALREADY):
        part.action = (
            f"{REFUSED}: {len(matched)} objects match the trigger but the prefix holds others a run would read, and "
            f"a run lists at most {MAX_CONSOLE_INPUTS} objects: give narrower --prefixes"
        )


def _logical_date(part: Partition) -> dict[str, str]:
    """A date partition's logical date for the run's ledger (`--prefixes` partitions are named by their prefix)."""
    return {"logical_date": part.partition} if part.partition != part.prefix else {}


def execution_state(sfn: Any, arn: str) -> str | None:
    """The execution's status (RUNNING, SUCCEEDED, ...), None when there is none."""
    try:
        return str(sfn.describe_execution(executionArn=arn)["status"])
    except sfn.exceptions.ExecutionDoesNotExist:
        return None


def start_all(
    deployment: Deployment, pipeline: str, planned: list[Partition], rate: float, say: Callable[[str], None]
) -> None:
    """Start every partition planned to start, `rate` per minute at most; each partition's action says what
    happened. StartExecution of a name that exists (its input differs, or it closed) is ExecutionAlreadyExists:
    the partition is "already started (STATE)", not a failure ("StartExecution is idempotent for STANDARD
    workflows ... if the execution is closed or if the input is different, it returns a 400
    ExecutionAlreadyExists error", the StartExecution API reference)."""
    sfn = deployment.client("stepfunctions")
    machine = deployment.state_machine(pipeline)
    todo = [p for p in planned if p.action == START]
    for index, part in enumerate(todo, start=1):
        if index > 1:
            _sleep(60.0 / rate)
        body = json.dumps({"pipeline": pipeline, "inputs": part.inputs} | _logical_date(part))
        try:
            response = sfn.start_execution(stateMachineArn=machine, name=part.run_id, input=body)
        except sfn.exceptions.ExecutionAlreadyExists:
            part.execution_arn = execution_arn(machine, part.run_id)
            part.action = f"{ALREADY} ({execution_state(sfn, part.execution_arn) or 'UNKNOWN'})"
        except sfn.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            part.action = f"{REFUSED}: {error.get('Code', 'Error')}: {error.get('Message', exc)}"
        else:
            part.execution_arn = response["executionArn"]
            part.action = STARTED
        objects = f"{part.objects} object" + ("" if part.objects == 1 else "s")
        say(f"[{index}/{len(todo)}] {part.partition}: {part.action} {part.run_id} ({objects})")
