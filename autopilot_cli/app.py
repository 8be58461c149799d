"""The `emr-autopilot` commands. Exit codes: 0 ok; 1 the operation failed (AWS refused a call, the run does not
exist, a run followed with --wait failed, a cancel found the run ended); 2 bad usage (unknown option or value, a
pipeline, environment or file that does not exist). Errors are one line on stderr, `emr-autopilot: error: ...`;
usage errors are Typer's."""

from __future__ import annotations

import json
import sys
import time
import webbrowser
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from typer.core import TyperGroup

from autopilot_cli import function_logs
from autopilot_cli.backfill import (
    ALREADY,
    DEFAULT_RATE,
    STARTED,
    Partition,
    date_partitions,
    plan,
    prefix_partitions,
    start_all,
)
from autopilot_cli.deployment import (
    Deployment,
    DeploymentError,
    Target,
    execution_arn,
    find_deployment,
    session_for,
)
from autopilot_cli.errors import OperationFailed, UsageProblem
from autopilot_cli.inputs import console_input, rerun_input
from autopilot_cli.ledger import RunRecord, find_run, parse_since, read_runs, run_at, started_since
from autopilot_cli.logs import STREAMS, follow_log, tail
from autopilot_cli.render import (
    as_json,
    console_links,
    runs_table,
    show_backfill,
    show_cancelled,
    show_run,
    show_status,
)
from autopilot_cli.spark_ui import READY_TIMEOUT_SECONDS, spark_ui_link
from autopilot_cli.status import running_now
from autopilot_cli.watch import cleaned_up, ended, follow, look
from autopilot_common.ledger import FAILED, FINAL_STATES, RUN_STATES, TIMED_OUT
from local.cli import local_app
from stacks.naming import FUNCTION_NAMES

PROG = "emr-autopilot"


class _Group(TyperGroup):
    """Turns the commands' errors into one line on stderr and the documented exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (UsageProblem, DeploymentError) as exc:
            _fail(exc, 2)
        except (OperationFailed, ClientError, BotoCoreError) as exc:
            _fail(exc, 1)


def _fail(exc: Exception, code: int) -> NoReturn:
    typer.echo(f"{PROG}: error: {exc}", err=True)
    raise typer.Exit(code)


app = typer.Typer(
    cls=_Group,
    name=PROG,
    help="Operate EMR Autopilot deployments (in AWS or in the local twin): runs, a run's story and cost, Spark UI "
    "links, starting, cancelling and re-running runs, what runs now.",
    epilog="Exit codes: 0 ok; 1 the operation failed (AWS refused, no such run, a waited-for run failed); "
    "2 bad usage. "
    "Docs: docs/operations/cli.md",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(local_app, name="local")


@app.callback()
def _root(
    ctx: typer.Context,
    env: Annotated[str, typer.Option(help="the environment: reads config/ENV.yaml for the stack and region")] = "dev",
    profile: Annotated[str | None, typer.Option(help="AWS profile (default: the standard AWS chain)")] = None,
    region: Annotated[str | None, typer.Option(help="AWS region (default: config/ENV.yaml, else the chain)")] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", "--endpoint", help="AWS endpoint, e.g. a twin's (default: AWS_ENDPOINT_URL)"),
    ] = None,
) -> None:
    ctx.obj = Target(env=env, profile=profile, region=region, endpoint_url=endpoint_url)


def _deployment(ctx: typer.Context) -> Deployment:
    target: Target = ctx.obj
    return find_deployment(target)


JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable output")]
WaitFlag = Annotated[bool, typer.Option("--wait", help="follow the run and exit with its outcome")]
WaitTimeout = Annotated[
    float | None, typer.Option(help="with --wait: give up (exit 1) after this many seconds; the run goes on")
]


@app.command()
def runs(
    ctx: typer.Context,
    pipeline: Annotated[str | None, typer.Option(help="only this pipeline's runs (its exact name)")] = None,
    state: Annotated[
        str | None, typer.Option(help=f"only runs in this state: {', '.join(RUN_STATES)} (any case)")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="only runs started since: a duration (30m, 2h, 3d, 1w) or an ISO date/time")
    ] = None,
    bucket: Annotated[
        str | None, typer.Option(help="outputs bucket (default: the stack's OutputsBucket output)")
    ] = None,
    as_json_: JsonFlag = False,
) -> None:
    """The run ledger: one line per run, oldest first, with why a run failed."""
    wanted_state = state.upper() if state else None
    if wanted_state is not None and wanted_state not in RUN_STATES:
        raise typer.BadParameter(f"{state!r} is not a run state; one of: {', '.join(RUN_STATES)}", param_hint="--state")
    try:
        cutoff = parse_since(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    if bucket:
        target: Target = ctx.obj
        s3 = session_for(target).client("s3", region_name=target.region, endpoint_url=target.endpoint_url)
    else:
        deployment = _deployment(ctx)
        if pipeline is not None and pipeline not in deployment.pipelines:
            known = ", ".join(deployment.pipelines)
            raise UsageProblem(f"pipeline {pipeline!r} not found; pipelines of {deployment.stack_name}: {known}")
        s3, bucket = deployment.client("s3"), deployment.outputs_bucket
    records = read_runs(s3, bucket, pipeline, wanted_state)
    if cutoff is not None:
        records = [r for r in records if started_since(r, cutoff)]
    if as_json_:
        typer.echo(json.dumps([as_json(r) for r in records], indent=2))
    elif records:
        console = Console()
        console.print(runs_table(records, console.width))
    else:
        filters = [f"--{name} {value}" for name, value in (("pipeline", pipeline), ("state", wanted_state),
                                                            ("since", since)) if value]  # fmt: skip
        typer.echo(f"no runs match {' '.join(filters)}" if filters else "no runs yet")


@app.command()
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="the run id (the execution's name)")],
    as_json_: JsonFlag = False,
) -> None:
    """One run for people: timeline, inputs, outputs, why it failed, console links.

    Exits 0 whatever the run's state (showing a FAILED run succeeds); 1 when no run has this id.
    """
    deployment = _deployment(ctx)
    record = find_run(deployment.client("s3"), deployment.outputs_bucket, run_id)
    if record is None:
        raise OperationFailed(f"no run {run_id!r} in the ledger of {deployment.stack_name}")
    log = _failed_log(deployment.client("s3"), record)
    if as_json_:
        links = console_links(record, deployment.region, deployment.partition)
        extra = {"log_tail": {"log": log[0], "lines": log[1]}} if log else {}
        typer.echo(json.dumps(as_json(record) | {"links": links} | extra, indent=2))
    else:
        show_run(Console(), record, deployment.region, deployment.partition, log)


@app.command()
def ui(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="the run id (the execution's name)")],
    attempt: Annotated[
        int | None, typer.Option(min=1, help="EMR Serverless: this attempt of the job run (default: the latest)")
    ] = None,
    open_: Annotated[bool, typer.Option("--open", help="also open the link in the default web browser")] = False,
    timeout: Annotated[
        float, typer.Option(min=0, help="EMR on EC2/EKS: seconds to wait for the persistent UI to be ready")
    ] = READY_TIMEOUT_SECONDS,
    as_json_: JsonFlag = False,
) -> None:
    """A fresh Spark UI link for a running or finished run: EMR Serverless' dashboard (GetDashboardForJobRun; live
    while the job runs, the Spark History Server after; valid for one hour), else the persistent Spark History
    Server of the run's EMR cluster or EMR on EKS job run (a presigned link).

    Prints the link on stdout (how long it is valid on stderr). Exits 1 when the run has no job run or cluster yet
    (QUEUED, SKIPPED), AWS refused, or the UI was not ready within --timeout.
    """
    deployment = _deployment(ctx)
    record = find_run(deployment.client("s3"), deployment.outputs_bucket, run_id)
    if record is None:
        raise OperationFailed(f"no run {run_id!r} in the ledger of {deployment.stack_name}")
    link = spark_ui_link(deployment, record, attempt, timeout)
    if as_json_:
        typer.echo(json.dumps(link.as_json(), indent=2))
    else:
        typer.echo(link.url)
        typer.echo(f"{link.runtime}: {link.note}", err=True)
    if open_ and not webbrowser.open(link.url):
        raise OperationFailed(f"no web browser to open {link.url} in (the link is above)")


SHOW_LOG_LINES = 10


def _failed_log(s3: Any, record: RunRecord) -> tuple[str, list[str]] | None:
    """For a run that failed: (where, the last lines of its driver or step stdout, where a Python job's error is),
    or (why there are none, []); None for other runs. `show` goes on whatever S3 answers."""
    if record.state not in FAILED_STATES or not record.raw.get("log_uri"):
        return None
    try:
        log, lines = tail(s3, record, STREAMS[0], SHOW_LOG_LINES)
    except (OperationFailed, ClientError, BotoCoreError) as exc:
        return str(exc), []
    return log.uri, lines


@app.command()
def start(
    ctx: typer.Context,
    pipeline: Annotated[str, typer.Argument(help="the pipeline's exact name")],
    input_: Annotated[
        str | None, typer.Option("--input", help='execution input JSON (default {"pipeline": PIPELINE})')
    ] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input-file", help="execution input JSON from a file", metavar="FILE")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--inputs", help="an S3 object or prefix (ending in /) to run over; repeat for more", metavar="URI"
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="execution name = run id (default: generated)")] = None,
    wait: WaitFlag = False,
    timeout: WaitTimeout = None,
) -> None:
    """Start a run of a pipeline, as the Step Functions console does; prints the execution ARN.

    With --wait, follows the run to its end: exits 0 when it SUCCEEDED (or was SKIPPED), 1 when it FAILED, was
    ABORTED, TIMED_OUT or CANCELLED (printing why), or when --timeout passed first.
    """
    body = console_input(pipeline, input_, input_file, inputs or [])
    deployment = _deployment(ctx)
    request = {"stateMachineArn": deployment.state_machine(pipeline), "input": body} | ({"name": name} if name else {})
    arn = deployment.client("stepfunctions").start_execution(**request)["executionArn"]
    typer.echo(arn)
    if wait:
        _wait_for_outcome(deployment, pipeline, arn, timeout)


def _wait_for_outcome(deployment: Deployment, pipeline: str, arn: str, timeout: float | None) -> None:
    sfn, s3, bucket = deployment.client("stepfunctions"), deployment.client("s3"), deployment.outputs_bucket
    progress = follow(
        Console(stderr=True),
        lambda: look(sfn, s3, bucket, pipeline, arn),
        ended,
        timeout,
        f"run {arn.rsplit(':', 1)[-1]} to end",
    )
    if progress.ok:
        typer.echo(progress.state)
        return
    reason = progress.reason
    raise OperationFailed(f"run {progress.state}" + (f": {reason}" if reason else ""))


@app.command()
def rerun(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="the run id to run again")],
    name: Annotated[str | None, typer.Option(help="the new run's id (default: generated)")] = None,
    wait: WaitFlag = False,
    timeout: WaitTimeout = None,
) -> None:
    """Run a run's input manifest again under a new run id; prints the new execution ARN.

    A console run over the objects of the run's manifest, with its overrides; the new run's ledger entry records
    `rerun_of`.
    """
    deployment = _deployment(ctx)
    s3 = deployment.client("s3")
    record = find_run(s3, deployment.outputs_bucket, run_id)
    if record is None:
        raise OperationFailed(f"no run {run_id!r} in the ledger of {deployment.stack_name}")
    body = json.dumps(rerun_input(s3, record))
    request = {"stateMachineArn": deployment.state_machine(record.pipeline), "input": body}
    arn = deployment.client("stepfunctions").start_execution(**request | ({"name": name} if name else {}))
    typer.echo(arn["executionArn"])
    if wait:
        _wait_for_outcome(deployment, record.pipeline, arn["executionArn"], timeout)


@app.command()
def logs(
    ctx: typer.Context,
    run_id: Annotated[
        str | None, typer.Argument(metavar="[RUN]", help="the run id (the execution's name); or --function")
    ] = None,
    function: Annotated[
        str | None,
        typer.Option(
            "--function",
            metavar="NAME",
            help=f"a function's CloudWatch Logs instead of a run's driver log: {', '.join(FUNCTION_NAMES)}",
        ),
    ] = None,
    stderr: Annotated[bool, typer.Option("--stderr", help="RUN: the driver's stderr (default: its stdout)")] = False,
    follow_: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="keep printing new lines (RUN: until the run has ended; --function: until interrupted)",
        ),
    ] = False,  # fmt: skip
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="how many of the last lines to print")] = 100,
    since: Annotated[
        str | None,
        typer.Option(help="--function: only events since a duration (30m, 2h, 3d, 1w) or an ISO date/time"),
    ] = None,
    filter_: Annotated[
        str | None,
        typer.Option("--filter", metavar="PATTERN", help="--function: a CloudWatch Logs filter pattern"),
    ] = None,
    as_json_: Annotated[bool, typer.Option("--json", help="--function: each event as a JSON line, as stored")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="--function: each event's message as stored")] = False,
) -> None:
    """A run's driver log (EMR on EC2: its step's) from S3 under the run's log URI, decompressed: the last
    lines of stdout, or of stderr with --stderr. Or, with --function NAME, a function's log group (CloudWatch
    Logs): its last events, readable (time, level, message, run_id/pipeline), --json or --raw as stored.

    Exits 1 when there is no such log (yet), naming where it looked; with --follow, waits for it while the run
    goes on. Exactly one of RUN and --function.
    """
    if (run_id is None) == (function is None):
        raise UsageProblem("give exactly one of RUN (a run's driver log) and --function NAME (a function's log group)")
    if function is not None:
        _function_logs(ctx, function, follow_, lines, since, filter_, as_json_, raw, stderr)
        return
    assert run_id is not None
    run_only = {"--since": since, "--filter": filter_, "--json": as_json_, "--raw": raw}
    if given := [flag for flag, value in run_only.items() if value]:
        raise UsageProblem(f"{', '.join(given)}: only with --function (a run's driver log is read as it is)")
    deployment = _deployment(ctx)
    s3, bucket = deployment.client("s3"), deployment.outputs_bucket
    record = find_run(s3, bucket, run_id)
    if record is None:
        raise OperationFailed(f"no run {run_id!r} in the ledger of {deployment.stack_name}")
    stream = STREAMS[1] if stderr else STREAMS[0]
    if follow_:
        key = record.ledger_uri.removeprefix(f"s3://{bucket}/")
        for line in follow_log(s3, record, stream, lines, lambda: run_at(s3, bucket, key)):
            typer.echo(line)
        return
    log, last = tail(s3, record, stream, lines)
    typer.echo(f"==> {log.uri} <==", err=True)
    for line in last:
        typer.echo(line)


def _function_logs(
    ctx: typer.Context,
    function: str,
    follow_: bool,
    lines: int,
    since: str | None,
    pattern: str | None,
    as_json_: bool,
    raw: bool,
    stderr: bool,
) -> None:
    if stderr:
        raise UsageProblem("--stderr: only with RUN (a function's log group holds both streams)")
    if as_json_ and raw:
        raise UsageProblem("--json and --raw: give one of them")
    try:
        start_ms = int(parse_since(since).timestamp() * 1000) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    if function not in FUNCTION_NAMES:  # before finding the deployment: a typo needs no AWS call
        raise UsageProblem(f"--function {function!r} is not one of the app's functions: {', '.join(FUNCTION_NAMES)}")
    deployment = _deployment(ctx)
    _, group = function_logs.log_group_of(deployment.client("lambda"), deployment.stack_name, function)
    logs_client = deployment.client("logs")

    def show(event: dict[str, Any]) -> None:
        if as_json_:
            typer.echo(json.dumps({k: event[k] for k in ("timestamp", "logStreamName", "message") if k in event}))
        else:
            typer.echo(str(event.get("message", "")).rstrip("\n") if raw else function_logs.render(event))

    if not (as_json_ or raw):
        typer.echo(f"==> {group} <==", err=True)
    if follow_:
        try:
            for event in function_logs.follow(logs_client, group, start_ms=start_ms, pattern=pattern, lines=lines):
                show(event)
        except KeyboardInterrupt:
            return
        return
    found = function_logs.events(logs_client, group, start_ms=start_ms, pattern=pattern)
    for event in found[-lines:] if lines > 0 else []:
        show(event)


FAILED_STATES = (FAILED, TIMED_OUT)  # `show` adds the driver log's last lines
CANCEL_ERROR = "Cancelled"  # the StopExecution error of `cancel`; the ledger's ABORTED entry records it


@app.command()
def cancel(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="the run id (the execution's name)")],
    reason: Annotated[
        str | None, typer.Option(help="why: the StopExecution cause, recorded in the run's ledger entry")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="seconds to wait for the guardrail's cleanup before giving up (exit 1)")
    ] = 300.0,
    as_json_: JsonFlag = False,
) -> None:
    """Stop a run (StopExecution, error Cancelled, the reason as its cause), wait until the guardrail has
    cleaned up after it, and show what was stopped. A run that already ended exits 1."""
    deployment = _deployment(ctx)
    s3, bucket = deployment.client("s3"), deployment.outputs_bucket
    record = find_run(s3, bucket, run_id)
    if record is None:
        raise OperationFailed(f"no run {run_id!r} in the ledger of {deployment.stack_name}")
    if record.state in FINAL_STATES:
        raise OperationFailed(
            f"run {run_id} already ended {record.state}" + _at(record.ended_at) + "; nothing to cancel"
        )
    arn = str(record.raw.get("execution_arn") or "") or execution_arn(deployment.state_machine(record.pipeline), run_id)
    sfn = deployment.client("stepfunctions")
    cause = reason or "cancelled by an operator (emr-autopilot cancel)"
    try:
        sfn.stop_execution(executionArn=arn, error=CANCEL_ERROR, cause=cause)
    except sfn.exceptions.ExecutionDoesNotExist:
        raise OperationFailed(f"run {run_id}: its execution {arn} does not exist") from None
    console = Console(stderr=True)
    console.print(f"stopped {arn}", highlight=False)
    progress = follow(
        console,
        lambda: look(sfn, s3, bucket, record.pipeline, arn),
        cleaned_up,
        timeout,
        f"the guardrail to clean up after run {run_id}",
    )
    final = progress.record
    assert final is not None  # cleaned_up() holds only with an entry
    if as_json_:
        typer.echo(json.dumps(as_json(final), indent=2))
    else:
        show_cancelled(Console(), final)


def _at(moment: str | None) -> str:
    return f" at {moment}" if moment else ""


@app.command()
def status(ctx: typer.Context, as_json_: JsonFlag = False) -> None:
    """What is running now: executions (with queued runs' places in line), EMR clusters, job runs."""
    deployment = _deployment(ctx)
    now = running_now(deployment)
    if as_json_:
        typer.echo(json.dumps(now.as_json(), indent=2))
    else:
        show_status(Console(), now)


@app.command()
def backfill(
    ctx: typer.Context,
    pipeline: Annotated[str, typer.Argument(help="the pipeline's exact name")],
    from_: Annotated[
        str | None,
        typer.Option("--from", help="first logical date: 2024-06-01 (hourly templates: also 2024-06-01T05)"),
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="last logical date, included (hourly: a bare date means its 23h)")
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(help="partition template, e.g. 'sales/dt={ds}/' (default: the trigger's partition_template)"),
    ] = None,
    prefixes: Annotated[
        list[str] | None,
        typer.Option(
            "--prefixes",
            help="instead of dates: a key prefix (or s3:// URI) in the landing bucket; repeat for more",
            metavar="PREFIX",
        ),
    ] = None,
    rate: Annotated[float, typer.Option(min=0.1, help="starts per minute at most")] = DEFAULT_RATE,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the partitions and what would start; start nothing")
    ] = False,
    fail_on_empty: Annotated[
        bool, typer.Option("--fail-on-empty", help="exit 1 when a partition holds no input objects")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="follow the started (and still running) runs to their end; exit 1 if one failed"),
    ] = False,
    timeout: WaitTimeout = None,
    as_json_: JsonFlag = False,
) -> None:
    """Start one run per date partition (--from/--to over a partition template) or per prefix (--prefixes) of the
    landing bucket, at most --rate starts a minute; the caps apply (runs over them wait QUEUED for a slot).

    Objects are filtered as the trigger filters arrivals (suffixes, zero-byte, hidden and temporary files). Run ids
    are derived from the pipeline and the partition, so a second backfill of the same range starts nothing twice:
    such partitions are "already started (STATE)". Empty partitions are listed, never started.

    Exits 0 when every non-empty partition started or was already started; 1 when AWS refused a start (named),
    with --fail-on-empty when a partition is empty, or with --wait when a run did not succeed; 2 bad usage.
    """
    if prefixes and (from_ or to or template):
        given = [flag for flag, value in (("--from", from_), ("--to", to), ("--template", template)) if value]
        raise UsageProblem(f"--prefixes and {', '.join(given)}: give either --from/--to (dates) or --prefixes")
    if not prefixes and not (from_ and to):
        missing = " and ".join(flag for flag, value in (("--from", from_), ("--to", to)) if not value)
        raise UsageProblem(f"{missing}: required (the logical date range), or give --prefixes instead")
    deployment = _deployment(ctx)
    config = deployment.pipeline_config(pipeline)
    if prefixes:
        wanted = prefix_partitions(pipeline, config, deployment.output("LandingBucket"), prefixes)
    else:
        assert from_ is not None and to is not None
        wanted = date_partitions(pipeline, config, template, from_, to)
    planned = plan(deployment, pipeline, wanted)
    err = Console(stderr=True)
    if not dry_run:
        start_all(deployment, pipeline, planned, rate, lambda line: err.print(line, highlight=False))
    if as_json_:
        typer.echo(json.dumps([p.as_json() for p in planned], indent=2))
    else:
        title = f"backfill of {pipeline}" + (" (dry run: nothing started)" if dry_run else "")
        show_backfill(Console(), title, planned)
    _backfill_outcome(deployment, pipeline, planned, dry_run, fail_on_empty, err)
    if wait and not dry_run:
        following = [p for p in planned if p.action in (STARTED, f"{ALREADY} (RUNNING)")]  # not earlier outcomes
        _wait_for_all(deployment, pipeline, following, timeout, err)


def _backfill_outcome(
    deployment: Deployment, pipeline: str, planned: list[Partition], dry_run: bool, fail_on_empty: bool, err: Console
) -> None:
    counts = {action: sum(1 for p in planned if p.action.startswith(action)) for action in
              ("start", "started", "already started", "empty")}  # fmt: skip
    if dry_run:
        err.print(
            f"dry run: {counts['start']} would start, {counts['already started']} already started, "
            f"{counts['empty']} empty; nothing started",
            highlight=False,
        )
    else:
        err.print(
            f"started {counts['started']} runs of {pipeline}; {counts['already started']} already started, "
            f"{counts['empty']} empty (not started). Runs over the caps wait QUEUED for a slot: "
            "`emr-autopilot status` shows the line.",
            highlight=False,
        )
    refused = [p for p in planned if p.failed]
    if refused:
        raise OperationFailed(
            f"{len(refused)} partition(s) not started: " + "; ".join(f"{p.partition}: {p.action}" for p in refused)
        )
    empty = [p.partition for p in planned if p.action.startswith("empty")]
    if fail_on_empty and empty:
        raise OperationFailed(f"--fail-on-empty: {len(empty)} partition(s) hold no input objects: {', '.join(empty)}")


def _wait_for_all(
    deployment: Deployment, pipeline: str, parts: list[Partition], timeout: float | None, err: Console
) -> None:
    """Follow each run in turn (one --timeout for all of them); OperationFailed naming the runs that did not
    succeed."""
    sfn, s3, bucket = deployment.client("stepfunctions"), deployment.client("s3"), deployment.outputs_bucket
    deadline = None if timeout is None else time.monotonic() + timeout
    failed = []
    for part in parts:
        arn = part.execution_arn
        assert arn is not None
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        progress = follow(err, partial(look, sfn, s3, bucket, pipeline, arn), ended, left, f"run {part.run_id} to end")
        err.print(f"{part.partition}: {part.run_id} {progress.state}", highlight=False)
        if not progress.ok:
            failed.append(f"{part.run_id} {progress.state}" + (f": {progress.reason}" if progress.reason else ""))
    if failed:
        raise OperationFailed(f"{len(failed)} of {len(parts)} runs did not succeed: " + "; ".join(failed))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name=PROG, standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run() -> None:
    sys.exit(main())
