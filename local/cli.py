"""`emr-autopilot local ...`: the local twin's commands (mounted by the operator CLI, `autopilot_cli.app`).

    emr-autopilot local up [--cdk-out cdk.out] [--port 4566] [--no-spark] [--time-scale 1.0] [--no-iam]
                           [--s3-event-keys raw|url]
    emr-autopilot local drop FILE s3://bucket/key
    emr-autopilot local fire SCHEDULE --at 2024-06-03T00:00:00Z

`local up` keeps a twin running on 127.0.0.1, records its endpoint in `.twin/state.json` and registers the deployed
stack in the twin's CloudFormation, so every other command reaches it as it reaches AWS (`AWS_ENDPOINT_URL`, or
`--endpoint-url`). `local drop` uploads to the twin's S3 (`--endpoint-url`, else the running twin's). `local fire`
asks the running twin (`local up`) to fire one of its EventBridge Scheduler schedules for a given instant, through a
request file in `.twin/fire/` that `local up` serves (`twin.scheduler.fire`).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import boto3
import typer

from autopilot_cli.errors import OperationFailed, UsageProblem

STATE_FILE = Path(".twin") / "state.json"
FIRE_REQUESTS = Path(".twin") / "fire"  # `local fire` writes <id>.request.json, `local up` answers <id>.outcome.json
TWIN_CREDENTIALS = {"aws_access_key_id": "twin", "aws_secret_access_key": "twin"}  # the twin takes any key


class KeyEncoding(StrEnum):
    RAW = "raw"
    URL = "url"


local_app = typer.Typer(help="the local AWS twin", no_args_is_help=True)


def _state() -> dict[str, Any]:
    if not STATE_FILE.is_file():
        raise UsageProblem("no running twin found (.twin/state.json); start one with `emr-autopilot local up`")
    state: dict[str, Any] = json.loads(STATE_FILE.read_text())
    return state


@local_app.command()
def up(
    cdk_out: Annotated[Path, typer.Option(help="cloud assembly")] = Path("cdk.out"),
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 4566,
    no_spark: Annotated[bool, typer.Option("--no-spark", help="complete job runs without running Spark")] = False,
    time_scale: Annotated[
        float,
        typer.Option(
            help="the twin's clock: AWS's waits (EMR .sync polls every 60 s/300 s, batching windows, retries) are "
            "multiplied by this (1.0, as AWS; 0.1 runs them 10x faster)"
        ),
    ] = 1.0,
    no_iam: Annotated[
        bool,
        typer.Option(
            "--no-iam",
            help="DEBUGGING ONLY: do not enforce IAM (calls AWS would refuse go through, each logged as a warning)",
        ),
    ] = False,
    s3_event_keys: Annotated[
        KeyEncoding,
        typer.Option(
            help="how S3 events write object keys: raw (as stored) or url (URL-encoded); AWS does not document "
            "which EventBridge uses, and the router resolves either",
        ),
    ] = KeyEncoding.RAW,
) -> None:
    """Start a twin, deploy cdk.out into it, keep it running (Ctrl-C stops it)."""
    from local.spark_runner import java_problem
    from local.twin import Twin

    if not (cdk_out / "manifest.json").is_file():
        raise UsageProblem(f"{cdk_out} is not a cloud assembly; run `make synth` first")
    if not no_spark and (problem := java_problem()):
        raise UsageProblem(problem)
    workdir = Path(tempfile.mkdtemp(prefix="autopilot-twin-"))
    twin = Twin(
        workdir=workdir,
        port=port,
        spark=not no_spark,
        time_scale=time_scale,
        iam=not no_iam,
        s3_event_key_encoding=s3_event_keys.value,
    ).start()
    report = twin.deploy(cdk_out)
    STATE_FILE.parent.mkdir(exist_ok=True)
    state = {"endpoint": twin.endpoint, "region": twin.region, "outputs": report.outputs, "pid": os.getpid()}
    STATE_FILE.write_text(json.dumps(state))
    print(report.summary())
    print(f"\ntwin running at {twin.endpoint} (Ctrl-C to stop)")
    unenforced = "NOT ENFORCED (--no-iam): AWS may refuse what works here"
    print(f"  IAM: {'enforced as AWS does' if twin.iam.enabled else unenforced}")
    polls = f"every {60 * time_scale:g} s, then {300 * time_scale:g} s"
    print(f"  clock: x{1 / time_scale:g} (Step Functions polls EMR {polls})")
    credentials = "AWS_ACCESS_KEY_ID=twin AWS_SECRET_ACCESS_KEY=twin"
    region = f"AWS_REGION={twin.region} AWS_DEFAULT_REGION={twin.region}"
    print(f"  export AWS_ENDPOINT_URL={twin.endpoint} {credentials} {region}")
    print(f"  landing bucket: {report.outputs.get('LandingBucket')}")
    print(f"  functions' logs: emr-autopilot logs --function NAME (CloudWatch Logs); files in {twin.logs_dir}")
    print(f"  the twin's own log (moto, requests, internal errors): {twin.log.path}")
    print(f"  stacks registered in its CloudFormation: {', '.join(report.stacks)} (then: emr-autopilot runs)")
    print("  fire a schedule: emr-autopilot local fire NAME --at 2024-06-03T00:00:00Z")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        serve_fire_requests(twin)
    twin.stop()
    STATE_FILE.unlink(missing_ok=True)


@local_app.command()
def drop(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the file to upload")],
    uri: Annotated[str, typer.Argument(help="s3://bucket/key, or s3://bucket/prefix/ to keep the file name")],
) -> None:
    """Upload a file to the twin's S3 (triggers pipelines like a real upload)."""
    if not file.is_file():
        raise UsageProblem(f"{file}: no such file")
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise UsageProblem(f"{uri!r} is not an S3 URI like s3://bucket/key")
    bucket, _, key = uri[5:].partition("/")
    if not key or key.endswith("/"):
        key += file.name
    endpoint = getattr(ctx.find_root().obj, "endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
    state = {} if endpoint else _state()
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint or state["endpoint"],
        region_name=state.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        **TWIN_CREDENTIALS,
    )
    s3.put_object(Bucket=bucket, Key=key, Body=file.read_bytes())
    print(f"uploaded {file} to s3://{bucket}/{key}")


def serve_fire_requests(twin: Any, folder: Path = FIRE_REQUESTS) -> int:
    """Fire the schedule each pending `local fire` request names, at its instant, and write the outcome beside it;
    returns how many were served."""
    served = 0
    for request in sorted(folder.glob("*.request.json")) if folder.is_dir() else []:
        outcome_file = request.with_name(request.name.replace(".request.json", ".outcome.json"))
        try:
            ask = json.loads(request.read_text())
            firing = twin.scheduler.fire(ask["schedule"], at=datetime.fromisoformat(ask["at"]))
            outcome: dict[str, Any] = {"disabled": True} if firing is None else asdict(firing)
        except (LookupError, ValueError, KeyError) as exc:
            outcome = {"error": str(exc)}
        outcome_file.write_text(json.dumps(outcome))
        request.unlink(missing_ok=True)
        served += 1
    return served


@local_app.command()
def fire(
    schedule: Annotated[str, typer.Argument(help="the schedule's name, or a part only one name contains")],
    at: Annotated[str, typer.Option(help="its scheduled time, ISO 8601 with a zone, e.g. 2024-06-03T00:00:00Z")],
    timeout: Annotated[float, typer.Option(help="seconds to wait for the running twin")] = 30.0,
) -> None:
    """Fire one of the running twin's EventBridge Scheduler schedules as if it were due at AT (tests and demos move
    time instead of waiting for it); prints what was delivered."""
    try:
        instant = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        expected = "expected an ISO 8601 time with a zone, e.g. 2024-06-03T00:00:00Z"
        raise UsageProblem(f"--at: got {at!r}; {expected}") from None
    if instant.tzinfo is None:
        raise UsageProblem(f"--at: got {at!r}; expected a time with a zone (Z or +02:00): a firing is an instant")
    _state()  # a twin must be running (`local up`)
    FIRE_REQUESTS.mkdir(parents=True, exist_ok=True)
    ident = uuid.uuid4().hex
    outcome_file = FIRE_REQUESTS / f"{ident}.outcome.json"
    (FIRE_REQUESTS / f"{ident}.request.json").write_text(json.dumps({"schedule": schedule, "at": instant.isoformat()}))
    deadline = time.monotonic() + timeout
    while not outcome_file.is_file():
        if time.monotonic() > deadline:
            raise UsageProblem(f"the running twin did not answer within {timeout:g} s (is `local up` running here?)")
        time.sleep(0.1)
    outcome = json.loads(outcome_file.read_text())
    outcome_file.unlink(missing_ok=True)
    if "error" in outcome:
        raise UsageProblem(outcome["error"])
    if outcome.get("disabled"):
        print(f"{schedule}: DISABLED, nothing fired")
        return
    print(f"{outcome['schedule']} fired for {outcome['scheduled_time']} -> {outcome['target']}")
    print(f"  input: {outcome['input']}")
    if not outcome["delivered"]:
        where = "sent to its dead-letter queue" if outcome["dead_lettered"] else "dropped"
        last = outcome["errors"][-1] if outcome["errors"] else "unknown error"
        raise OperationFailed(f"not delivered after {outcome['attempts']} attempt(s) ({last}); {where}")
