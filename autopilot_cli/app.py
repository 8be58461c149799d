"""The `emr-autopilot` commands. Exit codes: 0 ok; 1 the operation failed (AWS refused a call, the run does not
exist); 2 bad usage (unknown option or value, a pipeline, environment or file that does not exist). Errors are one
line on stderr, `emr-autopilot: error: ...`; usage errors are Typer's."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from typer.core import TyperGroup

from autopilot_cli.deployment import Deployment, DeploymentError, Target, find_deployment, session_for
from autopilot_cli.errors import OperationFailed, UsageProblem
from autopilot_cli.ledger import find_run, parse_since, read_runs, started_since
from autopilot_cli.render import as_json, console_links, runs_table, show_run
from autopilot_common.ledger import RUN_STATES
from local.cli import local_app

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
    help="Operate EMR Autopilot deployments (in AWS or in the local twin): runs, a run's story, starting runs.",
    epilog="Exit codes: 0 ok; 1 the operation failed (AWS refused, no such run); 2 bad usage. "
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
    if as_json_:
        links = console_links(record, deployment.region, deployment.partition)
        typer.echo(json.dumps(as_json(record) | {"links": links}, indent=2))
    else:
        show_run(Console(), record, deployment.region, deployment.partition)


@app.command()
def start(
    ctx: typer.Context,
    pipeline: Annotated[str, typer.Argument(help="the pipeline's exact name")],
    input_: Annotated[
        str | None, typer.Option("--input", help='execution input JSON (default {"pipeline": PIPELINE})')
    ] = None,
    name: Annotated[str | None, typer.Option(help="execution name = run id (default: generated)")] = None,
) -> None:
    """Start a run of a pipeline, as the Step Functions console does; prints the execution ARN."""
    body = input_ or json.dumps({"pipeline": pipeline})
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"--input is not valid JSON: {exc}") from None
    deployment = _deployment(ctx)
    request = {"stateMachineArn": deployment.state_machine(pipeline), "input": body} | ({"name": name} if name else {})
    typer.echo(deployment.client("stepfunctions").start_execution(**request)["executionArn"])


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
