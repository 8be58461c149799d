"""`emr-autopilot`: the operator's door — the local twin, runs, and starting runs.

    emr-autopilot local up [--cdk-out cdk.out] [--port 4566] [--no-spark] [--time-scale 1.0] [--no-iam]
                           [--s3-event-keys raw|url]
    emr-autopilot local drop FILE s3://bucket/key
    emr-autopilot start PIPELINE [--input JSON] [--name RUN_ID]
    emr-autopilot runs [--pipeline NAME] [--state STATE] [--json]

`local up` keeps a twin running on 127.0.0.1 and records its endpoint in `.twin/state.json`;
the other commands use that endpoint (or `--endpoint URL` / `AWS_ENDPOINT_URL`), so they work
against any running twin. Bad input exits non-zero with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from local.ledger import format_table, read_runs

STATE_FILE = Path(".twin") / "state.json"
REGION = "us-east-1"


class CliError(Exception):
    """One line for the user; exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except CliError as exc:
        print(f"emr-autopilot: error: {exc}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as exc:
        print(f"emr-autopilot: error: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emr-autopilot", description="Run EMR from events; operate it locally.")
    parser.add_argument("--endpoint", help="AWS endpoint of a running twin (default: .twin/state.json)")
    commands = parser.add_subparsers(dest="command", required=True)

    local = commands.add_parser("local", help="the local AWS twin").add_subparsers(dest="local_command", required=True)
    up = local.add_parser("up", help="start a twin, deploy cdk.out into it, keep it running")
    up.add_argument("--cdk-out", type=Path, default=Path("cdk.out"), help="cloud assembly (default: cdk.out)")
    up.add_argument("--port", type=int, default=4566, help="port on 127.0.0.1 (default: 4566)")
    up.add_argument("--no-spark", action="store_true", help="complete job runs without running Spark")
    up.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="the twin's clock: AWS's waits (EMR .sync polls every 60 s/300 s, batching windows, retries) are "
        "multiplied by this (default 1.0, as AWS; 0.1 runs them 10x faster)",
    )
    up.add_argument(
        "--no-iam",
        action="store_true",
        help="DEBUGGING ONLY: do not enforce IAM (calls AWS would refuse go through, each logged as a warning)",
    )
    up.add_argument(
        "--s3-event-keys",
        choices=("raw", "url"),
        default="raw",
        help="how S3 events write object keys: raw (as stored, default) or url (URL-encoded); AWS does not document "
        "which EventBridge uses, and the router resolves either",
    )
    up.set_defaults(func=_local_up)
    drop = local.add_parser("drop", help="upload a file to the twin's S3 (triggers pipelines like a real upload)")
    drop.add_argument("file", type=Path)
    drop.add_argument("uri", help="s3://bucket/key, or s3://bucket/prefix/ to keep the file name")
    drop.set_defaults(func=_local_drop)

    start = commands.add_parser("start", help="start a run of a pipeline (like the Step Functions console)")
    start.add_argument("pipeline")
    start.add_argument("--input", help='execution input JSON, default {"pipeline": PIPELINE}')
    start.add_argument("--name", help="execution name = run id (default: generated)")
    start.set_defaults(func=_start)

    runs = commands.add_parser("runs", help="the run ledger")
    runs.add_argument("--pipeline")
    runs.add_argument("--state", help="only runs in this state, e.g. QUEUED (waiting for a run slot) or FAILED")
    runs.add_argument("--bucket", help="outputs bucket (default: from the running twin's deployment)")
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.set_defaults(func=_runs)
    return parser


# --------------------------------------------------------------------------- twin state


def _state() -> dict[str, Any]:
    if not STATE_FILE.is_file():
        raise CliError("no running twin found (.twin/state.json); start one with `emr-autopilot local up`")
    state: dict[str, Any] = json.loads(STATE_FILE.read_text())
    return state


def _client(args: argparse.Namespace, service: str) -> Any:
    endpoint = args.endpoint or os.environ.get("AWS_ENDPOINT_URL") or _state()["endpoint"]
    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id="twin", aws_secret_access_key="twin"
    )


def _outputs(args: argparse.Namespace) -> dict[str, Any]:
    outputs: dict[str, Any] = _state()["outputs"]
    return outputs


# --------------------------------------------------------------------------- commands


def _local_up(args: argparse.Namespace) -> int:
    from local.spark_runner import java_problem
    from local.twin import Twin

    if not (args.cdk_out / "manifest.json").is_file():
        raise CliError(f"{args.cdk_out} is not a cloud assembly; run `make synth` first")
    if not args.no_spark and (problem := java_problem()):
        raise CliError(problem)
    workdir = Path(tempfile.mkdtemp(prefix="autopilot-twin-"))
    twin = Twin(
        workdir=workdir,
        port=args.port,
        spark=not args.no_spark,
        time_scale=args.time_scale,
        iam=not args.no_iam,
        s3_event_key_encoding=args.s3_event_keys,
    ).start()
    report = twin.deploy(args.cdk_out)
    STATE_FILE.parent.mkdir(exist_ok=True)
    STATE_FILE.write_text(json.dumps({"endpoint": twin.endpoint, "outputs": report.outputs, "pid": os.getpid()}))
    print(report.summary())
    print(f"\ntwin running at {twin.endpoint} (Ctrl-C to stop)")
    unenforced = "NOT ENFORCED (--no-iam): AWS may refuse what works here"
    print(f"  IAM: {'enforced as AWS does' if twin.iam.enabled else unenforced}")
    polls = f"every {60 * args.time_scale:g} s, then {300 * args.time_scale:g} s"
    print(f"  clock: x{1 / args.time_scale:g} (Step Functions polls EMR {polls})")
    credentials = "AWS_ACCESS_KEY_ID=twin AWS_SECRET_ACCESS_KEY=twin"
    print(f"  export AWS_ENDPOINT_URL={twin.endpoint} {credentials} AWS_REGION={REGION}")
    print(f"  landing bucket: {report.outputs.get('LandingBucket')}")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    twin.stop()
    STATE_FILE.unlink(missing_ok=True)
    return 0


def _local_drop(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise CliError(f"{args.file}: no such file")
    if not args.uri.startswith("s3://") or "/" not in args.uri[5:]:
        raise CliError(f"{args.uri!r} is not an S3 URI like s3://bucket/key")
    bucket, _, key = args.uri[5:].partition("/")
    if not key or key.endswith("/"):
        key += args.file.name
    _client(args, "s3").put_object(Bucket=bucket, Key=key, Body=args.file.read_bytes())
    print(f"uploaded {args.file} to s3://{bucket}/{key}")
    return 0


def _start(args: argparse.Namespace) -> int:
    body = args.input or json.dumps({"pipeline": args.pipeline})
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        raise CliError(f"--input is not valid JSON: {exc}") from None
    sfn = _client(args, "stepfunctions")
    machines = [m for m in sfn.list_state_machines()["stateMachines"] if m["name"].endswith(f"-{args.pipeline}")]
    if len(machines) != 1:
        known = sorted(m["name"] for m in sfn.list_state_machines()["stateMachines"])
        raise CliError(f"pipeline {args.pipeline!r} not found; state machines: {', '.join(known) or 'none'}")
    kwargs = {"stateMachineArn": machines[0]["stateMachineArn"], "input": body}
    if args.name:
        kwargs["name"] = args.name
    arn = sfn.start_execution(**kwargs)["executionArn"]
    print(arn)
    return 0


def _runs(args: argparse.Namespace) -> int:
    bucket = args.bucket or _outputs(args).get("OutputsBucket")
    if not bucket:
        raise CliError("the deployed app has no OutputsBucket output")
    records = read_runs(_client(args, "s3"), bucket, args.pipeline, args.state.upper() if args.state else None)
    if args.json:
        extra = [{"duration_seconds": r.duration_seconds, "admission": r.admission or None} for r in records]
        print(json.dumps([asdict(r) | more for r, more in zip(records, extra, strict=True)], indent=2))
    else:
        print(format_table(records) if records else "no runs yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
