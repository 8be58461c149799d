"""The operator CLI (`autopilot_cli`) against a moto-backed "real account": no twin, no `.twin/state.json`; the
deployment is found as in AWS, from config/dev.yaml and the stack's CloudFormation outputs."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.stub import Stubber
from moto.emrserverless.models import emrserverless_backends
from moto.stepfunctions.models import stepfunctions_backends
from typer.testing import CliRunner

from autopilot_cli import logs, watch
from autopilot_cli.app import app
from autopilot_cli.deployment import Deployment, Target, find_deployment
from autopilot_cli.ledger import RunRecord, failure_reason, parse_since
from autopilot_cli.render import console_links, runs_table
from autopilot_common.ledger import RUN_STATES, iso, ledger_key
from autopilot_common.manifest import InputManifest, ManifestObject

REGION = "eu-west-1"  # not the environment's (us-east-1): the CLI must be told, and must not assume
STACK = "autopilot-dev"
OUTPUTS = "autopilot-dev-outputs-test"
JOB_ERROR = (
    "Job failed, please check complete logs in configured logging destination. ExitCode: 1. "
    "Last few exceptions: ZeroDivisionError: division by zero"
)
CAUSE = json.dumps({"JobRun": {"jobRunId": "00fabc", "state": "FAILED", "StateDetails": JOB_ERROR, "arn": "x" * 900}})


def _entry(run_id: str, pipeline: str, state: str, started: datetime, **more: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "run_id": run_id,
        "pipeline": pipeline,
        "state": state,
        "started_at": iso(started),
    } | more


@pytest.fixture
def account(moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The stack's outputs in CloudFormation, its outputs bucket with three ledger entries, a state machine."""
    monkeypatch.chdir(tmp_path)  # no .twin/state.json anywhere near
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=OUTPUTS, CreateBucketConfiguration={"LocationConstraint": REGION})
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = sfn.create_state_machine(
        name=f"{STACK}-sales-daily",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        roleArn="arn:aws:iam::123456789012:role/states",
    )["stateMachineArn"]
    outputs = {
        "OutputsBucket": OUTPUTS,
        "LandingBucket": "landing",
        "LogsBucket": "logs",
        "StateMachinesalesdaily": machine,
    }
    template = {
        "Conditions": {"Never": {"Fn::Equals": ["a", "b"]}},
        "Resources": {"R": {"Type": "AWS::CloudFormation::WaitConditionHandle", "Condition": "Never"}},
        "Outputs": {k: {"Value": v} for k, v in outputs.items()},
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(StackName=STACK, TemplateBody=json.dumps(template))
    now = datetime.now(UTC)
    execution = f"arn:aws:states:{REGION}:123456789012:execution:{STACK}-sales-daily:"
    day_ago, half_hour_ago = now - timedelta(days=3), now - timedelta(minutes=30)
    entries = [
        _entry(
            "old-ok", "sales-daily", "SUCCEEDED", day_ago, ended_at=iso(day_ago + timedelta(seconds=95)),
            execution_arn=execution + "old-ok", metrics={"rows_in": 10, "rows_out": 10}, output_uri="s3://o/sales/",
        ),
        _entry(
            "new-failed", "sales-daily", "FAILED", half_hour_ago, ended_at=iso(half_hour_ago + timedelta(minutes=1)),
            execution_arn=execution + "new-failed", error="States.TaskFailed", cause=CAUSE, runtime="emr-serverless",
            application_id="00app", job_run_id="00fabc", log_uri="s3://logs/serverless/new-failed/",
            input_manifest="s3://artifacts/manifests/new-failed.json", object_count=2,
        ),
        _entry(
            "waiting", "sales-cluster", "QUEUED", now - timedelta(minutes=5),
            admission={"queued_at": iso(now), "position": 2},
        ),
    ]  # fmt: skip
    for entry in entries:
        key = ledger_key(entry["pipeline"], datetime.fromisoformat(entry["started_at"]), entry["run_id"])
        s3.put_object(Bucket=OUTPUTS, Key=key, Body=json.dumps(entry).encode())
    yield {"machine": machine, "sfn": sfn}


def cli(*args: str) -> Any:
    result = CliRunner().invoke(app, ["--region", REGION, *args], env={"COLUMNS": "160"})
    return result


def test_runs_is_a_table_with_an_error_column_that_fits_the_terminal(account: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["--region", REGION, "runs"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "ERROR" in lines[0] and max(len(line) for line in lines) <= 100, result.stdout
    text = " ".join(result.stdout.split())
    assert "old-ok" in text and "new-failed" in text and "waiting" in text and "#2 in line" in text
    assert "States.TaskFailed" in text and "ZeroDivisionError: division by zero" in text  # the job's own message,
    assert '"JobRun"' not in text  # not the cause's JSON


def test_runs_filters_by_exact_pipeline_state_and_since(account: dict[str, Any]) -> None:
    def ids(*args: str) -> list[str]:
        result = cli("runs", *args, "--json")
        assert result.exit_code == 0, result.output
        return [r["run_id"] for r in json.loads(result.stdout)]

    assert ids() == ["old-ok", "new-failed", "waiting"]
    assert ids("--pipeline", "sales-daily") == ["old-ok", "new-failed"]
    assert ids("--state", "failed") == ["new-failed"]
    assert ids("--since", "2h") == ["new-failed", "waiting"]
    assert ids("--since", (datetime.now(UTC) - timedelta(days=4)).date().isoformat(), "--state", "SUCCEEDED") == [
        "old-ok"
    ]
    (failed,) = json.loads(cli("runs", "--state", "FAILED", "--json").stdout)
    assert failed["failure"] == f"States.TaskFailed: {JOB_ERROR}"


def test_runs_says_when_nothing_matches(account: dict[str, Any]) -> None:
    result = cli("runs", "--pipeline", "sales-daily", "--state", "SKIPPED")
    assert result.exit_code == 0 and result.stdout.strip() == "no runs match --pipeline sales-daily --state SKIPPED"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "--state", "DONE"], "'DONE' is not a run state; one of: " + ", ".join(RUN_STATES)),
        (["runs", "--since", "yesterday"], "neither a duration"),
        (["runs", "--pipeline", "daily"], "pipeline 'daily' not found; pipelines of autopilot-dev: "),
        (["start", "daily"], "pipeline 'daily' not found; pipelines of autopilot-dev: sales-daily"),
        (["--env", "nope", "runs"], "config/nope.yaml: file not found; available environments: "),
    ],
)
def test_bad_usage_exits_2_with_what_is_allowed(account: dict[str, Any], args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.replace("│", " ").split()), result.stderr


def test_a_stack_that_is_not_there_is_named_with_its_region(account: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["runs"])  # the chain's region (us-east-1): the stack is in eu-west-1
    assert result.exit_code == 2
    assert result.stderr.startswith("emr-autopilot: error: stack autopilot-dev (--env dev) not found in us-east-1")


def test_the_state_machines_are_found_in_the_pipeline_stacks(account: dict[str, Any]) -> None:
    # Given a pipeline stack (config/dev.yaml: one) whose output is the state machine of sales-cluster
    machine = f"arn:aws:states:{REGION}:123456789012:stateMachine:{STACK}-sales-cluster"
    template = {
        "Conditions": {"Never": {"Fn::Equals": ["a", "b"]}},
        "Resources": {"R": {"Type": "AWS::CloudFormation::WaitConditionHandle", "Condition": "Never"}},
        "Outputs": {"StateMachinesalescluster": {"Value": machine}},
    }
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    cloudformation.create_stack(StackName=f"{STACK}-pipelines-1", TemplateBody=json.dumps(template))
    # When the CLI finds the deployment
    deployment = find_deployment(Target(env="dev", region=REGION))
    # Then it knows both the platform stack's outputs and the pipeline stack's state machines
    assert deployment.outputs_bucket == OUTPUTS
    assert deployment.state_machine("sales-cluster") == machine
    assert deployment.state_machine("sales-daily").endswith(":stateMachine:autopilot-dev-sales-daily")


def test_show_lays_out_a_failed_run_with_its_reason_and_console_links(account: dict[str, Any]) -> None:
    result = cli("show", "new-failed")
    assert result.exit_code == 0, result.output  # showing a failed run succeeds
    out = result.stdout
    for part in ("timeline", "started", "inputs", "s3://artifacts/manifests/new-failed.json", "outputs", "failure",
                 f"States.TaskFailed: {JOB_ERROR}", "console"):  # fmt: skip
        assert part in " ".join(out.split()), (part, out)
    shown = json.loads(cli("show", "new-failed", "--json").stdout)
    links = shown["links"]
    assert links["execution"].startswith(f"https://{REGION}.console.aws.amazon.com/states/home?region={REGION}#")
    assert links["job run"].endswith("/serverless-applications/00app/job-runs/00fabc")
    assert (
        links["logs"]
        == f"https://s3.console.aws.amazon.com/s3/buckets/logs?region={REGION}&prefix=serverless/new-failed/"
    )
    assert shown["raw"]["cause"] == CAUSE


def test_show_of_a_run_that_does_not_exist_exits_1(account: dict[str, Any]) -> None:
    result = cli("show", "no-such-run")
    assert result.exit_code == 1
    assert result.stderr.strip() == "emr-autopilot: error: no run 'no-such-run' in the ledger of autopilot-dev"


def test_start_starts_the_exact_pipeline_and_prints_the_execution(account: dict[str, Any]) -> None:
    result = cli("start", "sales-daily", "--name", "by-hand")
    assert result.exit_code == 0, result.output
    arn = result.stdout.strip()
    assert arn.endswith(":by-hand")
    described = account["sfn"].describe_execution(executionArn=arn)
    assert described["stateMachineArn"] == account["machine"] and json.loads(described["input"]) == {
        "pipeline": "sales-daily"
    }


def test_failure_reason_is_one_line_with_the_jobs_own_message() -> None:
    step = json.dumps(
        {"Step": {"Status": {"FailureDetails": {"Reason": "Unknown", "Message": "Exception in thread\nmain"}}}}
    )
    assert failure_reason("States.TaskFailed", step) == "States.TaskFailed: Exception in thread main"
    assert failure_reason("States.Timeout", "the job run did not end\nwithin 5 minutes") == (
        "States.Timeout: the job run did not end within 5 minutes"
    )
    assert failure_reason(None, None) is None


def test_since_takes_durations_and_iso_dates() -> None:
    now = datetime(2024, 6, 2, 12, tzinfo=UTC)
    assert parse_since("2h", now) == datetime(2024, 6, 2, 10, tzinfo=UTC)
    assert parse_since("3d", now) == datetime(2024, 5, 30, 12, tzinfo=UTC)
    assert parse_since("2024-06-01", now) == datetime(2024, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("2 hours", now)


def test_console_links_follow_the_partition() -> None:
    entry = {"cluster_id": "j-1", "execution_arn": "arn:aws-cn:states:cn-north-1:1:execution:m:r"}
    record = RunRecord("r", "p", "FAILED", None, None, None, "s3://b/k", None, None, None, entry)
    links = console_links(record, "cn-north-1", "aws-cn")
    assert links["cluster"] == "https://cn-north-1.console.amazonaws.cn/emr/home?region=cn-north-1#/clusterDetails/j-1"


class World:
    """Steps the "account" forward each time the CLI waits (`autopilot_cli.watch._sleep`): the workflow's and the
    guardrail's writes, which moto does not make, as a list of steps."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, steps: list[Any]) -> None:
        self.steps, self.waits = steps, 0
        monkeypatch.setattr(watch, "_sleep", self.sleep)

    def sleep(self, seconds: float) -> None:
        assert seconds == watch.POLL_SECONDS
        self.waits += 1
        if self.steps:
            self.steps.pop(0)()


def _execution(arn: str) -> Any:
    return stepfunctions_backends["123456789012"][REGION].describe_execution(arn)


def _end(arn: str, status: str) -> None:
    execution = _execution(arn)
    execution.status, execution.stop_date = status, iso(datetime.now(UTC))


def _write(run_id: str, state: str, **more: Any) -> None:
    arn = f"arn:aws:states:{REGION}:123456789012:execution:{STACK}-sales-daily:{run_id}"
    started = _execution(arn).start_date
    moment = datetime.fromisoformat(started) if isinstance(started, str) else started
    entry = _entry(run_id, "sales-daily", state, moment, execution_arn=arn) | more
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=OUTPUTS, Key=ledger_key("sales-daily", moment, run_id), Body=json.dumps(entry).encode()
    )


def _arn(run_id: str) -> str:
    return f"arn:aws:states:{REGION}:123456789012:execution:{STACK}-sales-daily:{run_id}"


def test_start_wait_follows_the_run_and_exits_0_when_it_succeeded(
    account: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = _arn("waited-ok")
    world = World(monkeypatch, [lambda: _write("waited-ok", "STARTED"),
                                lambda: (_write("waited-ok", "SUCCEEDED"), _end(arn, "SUCCEEDED"))])  # fmt: skip
    result = cli("start", "sales-daily", "--inputs", "s3://landing/sales/a.csv", "--name", "waited-ok", "--wait")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [arn, "SUCCEEDED"]
    progress = [line.split("  ", 1)[1] for line in result.stderr.splitlines() if "  execution" in line]
    assert progress == ["execution RUNNING · ledger no entry yet", "execution RUNNING · ledger STARTED",
                        "execution SUCCEEDED · ledger SUCCEEDED"], result.stderr  # fmt: skip
    assert world.waits == 2
    described = account["sfn"].describe_execution(executionArn=arn)
    assert json.loads(described["input"]) == {"pipeline": "sales-daily", "inputs": ["s3://landing/sales/a.csv"]}


def test_start_wait_exits_1_with_the_failure_in_one_line(
    account: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    World(monkeypatch, [lambda: (_write("waited-bad", "FAILED", error="States.TaskFailed", cause=CAUSE),
                                 _end(_arn("waited-bad"), "FAILED"))])  # fmt: skip
    result = cli("start", "sales-daily", "--inputs", "s3://landing/sales/", "--name", "waited-bad", "--wait")
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == f"emr-autopilot: error: run FAILED: States.TaskFailed: {JOB_ERROR}"


def test_start_wait_gives_up_after_its_timeout(account: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    World(monkeypatch, [])
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr(watch.time, "monotonic", lambda: float(next(clock)))
    result = cli("start", "sales-daily", "--inputs", "s3://l/k", "--name", "slow", "--wait", "--timeout", "12")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "emr-autopilot: error: gave up after 12s waiting for run slow to end (execution RUNNING · ledger no entry yet)"
    )


def test_start_input_file_and_inputs(account: dict[str, Any], tmp_path: Path) -> None:
    body = {"pipeline": "sales-daily", "inputs": ["s3://l/x.csv"], "overrides": {"arguments": ["--dry"]}}
    (tmp_path / "run.json").write_text(json.dumps(body))
    result = cli("start", "sales-daily", "--input-file", "run.json", "--name", "from-file")
    assert result.exit_code == 0, result.output
    described = account["sfn"].describe_execution(executionArn=result.stdout.strip())
    assert json.loads(described["input"]) == body
    result = cli("start", "sales-daily", "--inputs", "s3://l/a.csv", "--inputs", "s3://l/b/", "--name", "two")
    described = account["sfn"].describe_execution(executionArn=result.stdout.strip())
    assert json.loads(described["input"])["inputs"] == ["s3://l/a.csv", "s3://l/b/"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--input", "{}", "--inputs", "s3://l/k"],
            "--input and --inputs: give one of --input, --input-file, --inputs",
        ),
        (["--inputs", "/tmp/x.csv"], "--inputs: /tmp/x.csv: expected s3://bucket/key or s3://bucket/prefix/"),
        (["--input-file", "missing.json"], "--input-file missing.json: No such file or directory"),
        (["--input", "[1]"], '--input: expected a JSON object such as {"pipeline": "sales-daily"}'),
        (["--input", '{"pipeline": "sales-cluster"}'], "--input: names pipeline 'sales-cluster', not 'sales-daily'"),
        (["--input", "{nope"], "--input is not valid JSON"),
    ],
)
def test_start_refuses_bad_input_with_exit_2(account: dict[str, Any], args: list[str], message: str) -> None:
    result = cli("start", "sales-daily", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr


def test_cancel_stops_the_execution_with_the_reason_and_shows_the_cleanup(
    account: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = account["sfn"].start_execution(stateMachineArn=account["machine"], name="to-cancel", input="{}")[
        "executionArn"
    ]
    _write("to-cancel", "STARTED", runtime="emr-serverless")
    stops: list[dict[str, Any]] = []
    original = BaseClient._make_api_call

    def spy(self: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "StopExecution":
            stops.append(params)
        return original(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", spy)
    cleanup = {
        "at": iso(datetime.now(UTC)),
        "execution_status": "ABORTED",
        "clusters_terminated": [],
        "steps_cancelled": [],
        "job_runs_cancelled": ["00jobrun"],
        "alarms_deleted": [],
        "slot_released": True,
    }
    World(monkeypatch, [lambda: _write("to-cancel", "ABORTED", error="Cancelled", cause="bad input data",
                                       aborted_by="arn:aws:iam::123456789012:user/ops", cleanup=cleanup)])  # fmt: skip
    result = cli("cancel", "to-cancel", "--reason", "bad input data")
    assert result.exit_code == 0, result.output
    assert stops == [{"executionArn": arn, "error": "Cancelled", "cause": "bad input data"}]
    text = " ".join(result.stdout.split())
    for part in ("to-cancel ABORTED", "why Cancelled: bad input data", "stopped by arn:aws:iam::123456789012:user/ops",
                 "job runs cancelled 00jobrun", "clusters terminated none", "slot released yes"):  # fmt: skip
        assert part in text, (part, result.stdout)


def test_cancel_json_and_a_run_that_already_ended(account: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("cancel", "old-ok")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "emr-autopilot: error: run old-ok already ended SUCCEEDED at "
        f"{json.loads(cli('show', 'old-ok', '--json').stdout)['ended_at']}; nothing to cancel"
    )
    assert cli("cancel", "no-such-run").exit_code == 1
    account["sfn"].start_execution(stateMachineArn=account["machine"], name="cancel-json", input="{}")
    _write("cancel-json", "STARTED")
    World(monkeypatch, [lambda: _write("cancel-json", "ABORTED", error="Cancelled", cleanup={"slot_released": False})])
    result = cli("cancel", "cancel-json", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["state"] == "ABORTED" and shown["raw"]["cleanup"] == {"slot_released": False}


def test_rerun_starts_the_runs_manifest_again_under_a_new_id(account: dict[str, Any]) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="artifacts", CreateBucketConfiguration={"LocationConstraint": REGION})
    objects = [ManifestObject("landing", "sales/a.csv", 10, "e1"), ManifestObject("landing", "sales/b c.csv", 5, "e2")]
    manifest = InputManifest(pipeline="sales-daily", run_id="new-failed", objects=objects)
    s3.put_object(Bucket="artifacts", Key="manifests/new-failed.json", Body=manifest.to_json().encode())
    result = cli("rerun", "new-failed", "--name", "again")
    assert result.exit_code == 0, result.output
    described = account["sfn"].describe_execution(executionArn=result.stdout.strip())
    assert described["name"] == "again" and described["stateMachineArn"] == account["machine"]
    assert json.loads(described["input"]) == {
        "pipeline": "sales-daily",
        "inputs": ["s3://landing/sales/a.csv", "s3://landing/sales/b c.csv"],
        "rerun_of": "new-failed",
    }
    gone = cli("rerun", "waiting")  # QUEUED, no manifest yet
    assert gone.exit_code == 1 and "run waiting (QUEUED) has no input manifest to run again" in gone.stderr
    s3.delete_object(Bucket="artifacts", Key="manifests/new-failed.json")
    missing = cli("rerun", "new-failed")
    assert missing.exit_code == 1
    assert "its input manifest s3://artifacts/manifests/new-failed.json is gone" in missing.stderr


def test_status_shows_running_executions_with_places_clusters_and_job_runs(account: dict[str, Any]) -> None:
    sfn = account["sfn"]
    for run_id in ("run-a", "run-b"):
        sfn.start_execution(stateMachineArn=account["machine"], name=run_id, input="{}")
    _write("run-a", "STARTED")
    _write("run-b", "QUEUED", admission={"queued_at": iso(datetime.now(UTC)), "position": 1})
    emr = boto3.client("emr", region_name=REGION)

    def cluster(name: str, deployment: str) -> str:
        return str(emr.run_job_flow(
            Name=name, ReleaseLabel="emr-7.1.0", JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole",
            Instances={"InstanceCount": 1, "MasterInstanceType": "m5.xlarge", "KeepJobFlowAliveWhenNoSteps": True},
            Tags=[{"Key": "autopilot:deployment", "Value": deployment}, {"Key": "autopilot:pipeline",
                  "Value": "sales-cluster"}, {"Key": "autopilot:run-id", "Value": "run-c"}],
        )["JobFlowId"])  # fmt: skip

    ours = cluster("autopilot sales-cluster run-c", STACK)
    cluster("autopilot sales-cluster run-d", "autopilot-prod")  # another deployment's
    cluster("someone else's", STACK)
    serverless = boto3.client("emr-serverless", region_name=REGION)
    app = serverless.create_application(name=f"{STACK}-shared-spark", releaseLabel="emr-7.1.0", type="SPARK")
    other = serverless.create_application(name="not-ours", releaseLabel="emr-7.1.0", type="SPARK")
    backend = emrserverless_backends["123456789012"][REGION]
    for application in (app, other):
        serverless.start_job_run(
            applicationId=application["applicationId"], executionRoleArn="arn:aws:iam::123456789012:role/job",
            jobDriver={"sparkSubmit": {"entryPoint": "s3://b/app.py"}}, name="run-e",
        )  # fmt: skip
        for job_run in backend.job_runs[application["applicationId"]]:
            job_run.state = "RUNNING"  # moto's job runs succeed at once
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    now = json.loads(result.stdout)
    assert [(e["run_id"], e["ledger_state"], e["position"]) for e in now["executions"]] == [
        ("run-b", "QUEUED", 1),
        ("run-a", "STARTED", None),
    ]
    assert [(c["cluster_id"], c["pipeline"], c["run_id"]) for c in now["clusters"]] == [
        (ours, "sales-cluster", "run-c")
    ]
    assert [(j["where"], j["runtime"], j["name"]) for j in now["job_runs"]] == [
        (f"{STACK}-shared-spark", "emr-serverless", "run-e")
    ]
    table = cli("status")
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    for part in ("executions running (2)", "run-b", "#1 in line", "EMR clusters (1) CLUSTER", ours, "job runs (1)"):
        assert part in text, (part, table.stdout)


def test_status_says_none_when_nothing_runs(account: dict[str, Any]) -> None:
    result = cli("status")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "executions running (0) none EMR clusters (0) none job runs (0) none" == text


# --- logs: the driver or step log under the run's log URI, as EMR lays it out ---

LOGS = "autopilot-dev-logs-test"  # moto's server answers 404 for a bucket named "logs"
DRIVER = "serverless/new-failed/applications/00app/jobs/00fabc/SPARK_DRIVER/"


def _put_log(key: str, text: str, gz: bool = True) -> None:
    body = gzip.compress(text.encode()) if gz else text.encode()
    boto3.client("s3", region_name=REGION).put_object(Bucket=LOGS, Key=key, Body=body)


@pytest.fixture
def logs_bucket(account: dict[str, Any]) -> None:
    """The logs bucket, and the failed run's ledger entry pointing there (as prepare writes `log_uri`)."""
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=LOGS, CreateBucketConfiguration={"LocationConstraint": REGION})
    key = next(
        k["Key"] for k in s3.list_objects_v2(Bucket=OUTPUTS)["Contents"] if k["Key"].endswith("/new-failed.json")
    )
    entry = json.loads(s3.get_object(Bucket=OUTPUTS, Key=key)["Body"].read())
    entry["log_uri"] = f"s3://{LOGS}/serverless/new-failed/"
    s3.put_object(Bucket=OUTPUTS, Key=key, Body=json.dumps(entry).encode())


def test_logs_prints_the_last_lines_of_the_drivers_stdout_decompressed(logs_bucket: None) -> None:
    _put_log(DRIVER + "stdout.gz", "".join(f"line {i}\n" for i in range(1, 251)))
    _put_log(DRIVER + "stderr.gz", "INFO starting\nZeroDivisionError: division by zero\n")
    _put_log("serverless/new-failed/applications/00app/jobs/00fabc/SPARK_EXECUTOR/1/stdout.gz", "executor\n")
    result = cli("logs", "new-failed")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"line {i}" for i in range(151, 251)]  # the last 100 by default
    assert result.stderr.strip() == f"==> s3://{LOGS}/{DRIVER}stdout.gz <=="
    assert cli("logs", "new-failed", "--lines", "3").stdout.splitlines() == ["line 248", "line 249", "line 250"]
    errors = cli("logs", "new-failed", "--stderr", "-n", "1")
    assert errors.exit_code == 0 and errors.stdout == "ZeroDivisionError: division by zero\n"


def test_logs_of_an_emr_step_picks_the_last_written_step(logs_bucket: None) -> None:
    _put_log("serverless/new-failed/j-1/steps/s-1/stdout.gz", "first step\n")
    _put_log("serverless/new-failed/j-1/node/i-1/applications/spark/stdout.gz", "a node's log\n")
    _put_log("serverless/new-failed/j-1/steps/s-2/stdout", "second step, not gzipped\n", gz=False)
    result = cli("logs", "new-failed")
    assert result.exit_code == 0, result.output
    assert result.stdout == "second step, not gzipped\n"


def test_logs_without_a_log_exits_1_naming_where_it_looked(logs_bucket: None) -> None:
    result = cli("logs", "new-failed", "--stderr")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        "emr-autopilot: error: no driver or step stderr log for run new-failed (FAILED) under "
        f"s3://{LOGS}/serverless/new-failed/ yet"
    )
    assert cli("logs", "no-such-run").exit_code == 1
    no_uri = cli("logs", "old-ok")
    assert no_uri.exit_code == 1 and "has no S3 log location" in no_uri.stderr


def test_logs_follow_prints_new_lines_until_the_run_ended(
    logs_bucket: None, account: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    moment = datetime.now(UTC) - timedelta(minutes=2)
    running = _entry("live", "sales-daily", "STARTED", moment, log_uri=f"s3://{LOGS}/live/")
    key = ledger_key("sales-daily", moment, "live")
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=OUTPUTS, Key=key, Body=json.dumps(running).encode())
    driver = "live/applications/a/jobs/j/SPARK_DRIVER/stdout.gz"
    steps = [
        lambda: None,  # no log yet: it waits
        lambda: _put_log(driver, "one\ntwo\n"),
        lambda: _put_log(driver, "one\ntwo\nthree\n"),
        lambda: (
            _put_log(driver, "one\ntwo\nthree\nfour\n"),
            s3.put_object(Bucket=OUTPUTS, Key=key, Body=json.dumps(running | {"state": "SUCCEEDED"}).encode()),
        ),
    ]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        steps.pop(0)()

    monkeypatch.setattr(logs, "_sleep", sleep)
    result = cli("logs", "live", "--follow", "--lines", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["two", "three", "four"]  # the last line, then each new line once
    assert waits == [logs.POLL_SECONDS] * 4 and not steps


def test_show_of_a_failed_run_ends_with_the_last_lines_of_its_driver_log(logs_bucket: None) -> None:
    _put_log(
        DRIVER + "stdout.gz", "".join(f"line {i}\n" for i in range(1, 31)) + "ZeroDivisionError: division by zero\n"
    )
    out = cli("show", "new-failed").stdout
    assert out.index("driver log") > out.index("failure")
    assert f"s3://{LOGS}/{DRIVER}stdout.gz" in out and "ZeroDivisionError: division by zero" in out
    assert "line 22" in out and "line 21\n" not in out  # the last 10 lines
    shown = json.loads(cli("show", "new-failed", "--json").stdout)["log_tail"]
    assert shown["log"] == f"s3://{LOGS}/{DRIVER}stdout.gz" and len(shown["lines"]) == 10


def test_show_of_a_failed_run_without_a_driver_log_says_where_it_looked(logs_bucket: None) -> None:
    result = cli("show", "new-failed")
    assert result.exit_code == 0, result.output
    assert "no driver or step stdout log for run new-failed" in " ".join(result.stdout.split())
    assert "driver log" not in cli("show", "old-ok").stdout  # a run that succeeded has none shown


def test_a_runs_table_keeps_run_ids_whole_when_the_terminal_has_room() -> None:
    from rich.console import Console

    run_id = "sales-daily-8f2f8503d11c66f834eeec7d"  # the router's run ids: 36 characters
    record = RunRecord(run_id, "sales-daily", "FAILED", None, None, None, "s3://b/k", None, "States.TaskFailed",
                       "x" * 300, {})  # fmt: skip
    for width, whole in ((140, True), (80, False)):
        console = Console(width=width, record=True, color_system=None)
        console.print(runs_table([record], width))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        assert (run_id in text) == whole, text


# ---------------------------------------------------------------------------------------------- Spark UI, cost

COST = {
    "usd": 0.01234,
    "breakdown": [
        {"item": "vCPU", "quantity": 0.5, "unit": "vCPU-hours", "rate_usd": 0.052624, "usd": 0.026312},
        {"item": "memory", "quantity": 2.0, "unit": "GB-hours", "rate_usd": 0.0057785, "usd": 0.011557},
    ],
    "price_source": "prices.json v1: AWS Price List API",
    "prices_as_of": "2026-11-01",
    "notes": ["the first 20 GB of storage are free"],
}


def test_show_and_runs_carry_the_cost_and_a_missing_price_says_why(account: dict[str, Any]) -> None:
    _write_entry("priced", COST)
    _write_entry("unpriced", {"usd": None, "reason": "no prices for region xx-east-9", "breakdown": [],
                              "price_source": "prices.json v1", "prices_as_of": "2026-11-01"})  # fmt: skip
    shown = " ".join(cli("show", "priced").stdout.split())
    assert "cost total $0.0123" in shown and "vCPU 0.5 vCPU-hours x $0.052624 = $0.0263" in shown, shown
    assert "note the first 20 GB of storage are free" in shown and "as of 2026-11-01" in shown
    assert "unknown: no prices for region xx-east-9" in " ".join(cli("show", "unpriced").stdout.split())
    assert json.loads(cli("show", "priced", "--json").stdout)["cost"] == COST
    listed = {r["run_id"]: r["cost"] for r in json.loads(cli("runs", "--json").stdout)}
    assert listed["priced"] == COST and listed["unpriced"]["usd"] is None and listed["old-ok"] is None
    table = CliRunner().invoke(app, ["--region", REGION, "runs"], env={"COLUMNS": "100"}).stdout
    lines = table.splitlines()
    assert "COST" in lines[0] and max(len(line) for line in lines) <= 100, table
    cells = {line.split()[0]: line for line in lines[1:] if line.split()}
    assert "$0.0123" in cells["priced"] and " n/a " in cells["unpriced"] and " - " in cells["old-ok"]


def test_show_lists_every_submission_of_a_retried_step(account: dict[str, Any]) -> None:
    spot = {"attempt": 1, "step_id": "s-1", "state": "FAILED", "failure_class": "spot_interruption",
            "reason": "1 spot instance(s) reclaimed while the step ran (i-a)"}  # fmt: skip
    ok = {"attempt": 2, "step_id": "s-2", "state": "COMPLETED", "failure_class": None, "reason": None}
    once = {"attempt": 1, "step_id": "s-3", "state": "COMPLETED", "failure_class": None, "reason": None}
    steps = [{"name": "r: etl", "attempts": [spot, ok]}, {"name": "r: load", "attempts": [once]}]
    _write_entry("retried", None, runtime="emr-ec2", steps=steps)
    shown = " ".join(cli("show", "retried").stdout.split())
    assert "step attempts r: etl #1 FAILED s-1 spot_interruption: 1 spot instance(s) reclaimed" in shown, shown
    assert "r: etl #2 COMPLETED s-2" in shown and "r: load" not in shown  # a step that ran once is not listed
    _write_entry("plain", None, runtime="emr-ec2", steps=[{"name": "r: load", "attempts": [once]}])
    assert "step attempts" not in cli("show", "plain").stdout


def test_show_lists_every_attempt_of_a_retried_job_run(account: dict[str, Any]) -> None:
    failed = {"attempt": 1, "state": "FAILED", "state_details": "Job failed: executor lost",
              "started_at": "2026-12-07T01:00:00Z", "ended_at": "2026-12-07T01:02:00Z"}  # fmt: skip
    ok = {"attempt": 2, "state": "SUCCESS", "state_details": None, "started_at": "2026-12-07T01:02:05Z"}
    _write_entry("retried-job", None, runtime="emr-serverless", attempts=[failed, ok])
    shown = " ".join(cli("show", "retried-job").stdout.split())
    assert "job run attempts #1 FAILED: Job failed: executor lost (2026-12-07T01:00:00Z 2026-12-07T01:02:00Z)" in shown
    assert "#2 SUCCESS (2026-12-07T01:02:05Z)" in shown, shown
    _write_entry("once", None, runtime="emr-serverless", attempts=[ok])
    assert "job run attempts" not in cli("show", "once").stdout


def test_show_prints_the_logical_date_and_the_scheduled_time(account: dict[str, Any]) -> None:
    trigger = {"type": "schedule", "scheduled_time": "2024-06-03T00:00:00Z", "timezone": "Europe/Berlin",
               "logical_date": "2024-06-02"}  # fmt: skip
    _write_entry("nightly-run", None, runtime="emr-serverless", trigger=trigger, logical_date="2024-06-02")
    shown = " ".join(cli("show", "nightly-run").stdout.split())
    assert "trigger schedule logical date 2024-06-02 scheduled 2024-06-03T00:00:00Z (Europe/Berlin clock)" in shown
    assert json.loads(cli("show", "nightly-run", "--json").stdout)["raw"]["logical_date"] == "2024-06-02"
    _write_entry("console-run", None, runtime="emr-serverless", trigger={"type": "console"})
    assert "logical date" not in cli("show", "console-run").stdout


def test_show_prefers_the_links_the_ledger_recorded(account: dict[str, Any]) -> None:
    _write_entry("linked", None, links={"execution": "https://example.test/exec", "logs": "https://example.test/l"})
    shown = json.loads(cli("show", "linked", "--json").stdout)
    assert shown["links"] == {"execution": "https://example.test/exec", "logs": "https://example.test/l"}
    assert "https://example.test/exec" in cli("show", "linked").stdout


def _write_entry(run_id: str, cost: dict[str, Any] | None, **more: Any) -> None:
    started = datetime.now(UTC) - timedelta(minutes=10)
    entry = _entry(run_id, "sales-daily", "SUCCEEDED", started, ended_at=iso(started + timedelta(minutes=2))) | more
    if cost is not None:
        entry["cost"] = cost
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=OUTPUTS, Key=ledger_key("sales-daily", started, run_id), Body=json.dumps(entry).encode()
    )


@pytest.fixture
def stubbed(account: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Stubber]]:
    """moto has none of the Spark UI APIs (GetDashboardForJobRun, CreatePersistentAppUI, DescribePersistentAppUI,
    GetPersistentAppUIPresignedURL): the CLI's emr-serverless, emr and emr-containers clients are botocore Stubbers
    (which check every request against the service model); S3 and CloudFormation stay moto's."""
    stubs: dict[str, Stubber] = {}
    original = Deployment.client

    def client(self: Deployment, service: str) -> Any:
        if service not in ("emr-serverless", "emr", "emr-containers"):
            return original(self, service)
        return _stub(stubs, service).client

    monkeypatch.setattr(Deployment, "client", client)
    yield stubs
    for stub in stubs.values():
        stub.assert_no_pending_responses()


def _stub(stubs: dict[str, Stubber], service: str) -> Stubber:
    if service not in stubs:
        stubs[service] = Stubber(boto3.client(service, region_name=REGION))
        stubs[service].activate()
    return stubs[service]


def test_ui_of_a_serverless_run_is_its_dashboard_link(stubbed: dict[str, Stubber]) -> None:
    _write_entry("sl", None, application_id="00app", job_run_id="00job", runtime="emr-serverless")
    stub = _stub(stubbed, "emr-serverless")
    stub.add_response("get_dashboard_for_job_run", {"url": "https://ui.test/a"},
                      {"applicationId": "00app", "jobRunId": "00job"})  # fmt: skip
    stub.add_response("get_dashboard_for_job_run", {"url": "https://ui.test/b"},
                      {"applicationId": "00app", "jobRunId": "00job", "attempt": 2})  # fmt: skip
    result = cli("ui", "sl")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "https://ui.test/a" and "valid for one hour" in result.stderr
    shown = json.loads(cli("ui", "sl", "--attempt", "2", "--json").stdout)
    assert shown["url"] == "https://ui.test/b" and shown["runtime"] == "emr-serverless"


def test_ui_of_a_cluster_run_polls_the_persistent_ui_until_ready(stubbed: dict[str, Stubber]) -> None:
    _write_entry("ec2", None, cluster_id="j-1ABC", runtime="emr-ec2")
    arn = f"arn:aws:elasticmapreduce:{REGION}:123456789012:cluster/j-1ABC"
    stub = _stub(stubbed, "emr")
    stub.add_response("describe_cluster", {"Cluster": {"Id": "j-1ABC", "ClusterArn": arn}}, {"ClusterId": "j-1ABC"})
    stub.add_response("create_persistent_app_ui", {"PersistentAppUIId": "p-1"}, {"TargetResourceArn": arn})
    wanted = {"PersistentAppUIId": "p-1", "PersistentAppUIType": "SHS"}
    stub.add_response("get_persistent_app_ui_presigned_url", {"PresignedURLReady": False}, wanted)
    stub.add_response("get_persistent_app_ui_presigned_url",
                      {"PresignedURLReady": True, "PresignedURL": "https://shs.test/p-1"}, wanted)  # fmt: skip
    result = cli("ui", "ec2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "https://shs.test/p-1" and "cluster j-1ABC" in result.stderr


def test_ui_of_an_eks_run_names_its_job_run_and_says_when_the_ui_is_not_ready(stubbed: dict[str, Stubber]) -> None:
    _write_entry("eks", None, virtual_cluster_id="vc1", job_run_id="jr1", runtime="emr-eks")
    arn = f"arn:aws:emr-containers:{REGION}:123456789012:/virtualclusters/vc1"
    stubbed_eks = _stub(stubbed, "emr-containers")
    stubbed_eks.add_response("describe_virtual_cluster", {"virtualCluster": {"id": "vc1", "arn": arn}}, {"id": "vc1"})
    stub = _stub(stubbed, "emr")
    stub.add_response("create_persistent_app_ui", {"PersistentAppUIId": "p-2"},
                      {"TargetResourceArn": arn, "EMRContainersConfig": {"JobRunId": "jr1"}})  # fmt: skip
    stub.add_response("get_persistent_app_ui_presigned_url", {"PresignedURLReady": False},
                      {"PersistentAppUIId": "p-2", "PersistentAppUIType": "SHS"})  # fmt: skip
    result = cli("ui", "eks", "--timeout", "0")
    assert result.exit_code == 1, result.output
    assert "persistent application UI p-2 is not ready after 0s (PresignedURLReady false)" in result.stderr


@pytest.mark.parametrize(
    ("run_id", "args", "code", "message"),
    [
        ("waiting", [], 1, "run waiting is QUEUED: it has no job run or cluster yet (it is waiting for a run slot)"),
        ("nope", [], 1, "no run 'nope' in the ledger of autopilot-dev"),
        ("old-ok", [], 1, "run old-ok is SUCCEEDED: its ledger entry names no job run or cluster, so there is no"),
        ("new-failed", ["--attempt", "0"], 2, "Usage: emr-autopilot ui [OPTIONS] {RUN}"),
    ],
)
def test_ui_without_a_job_run_or_with_bad_usage(
    stubbed: dict[str, Stubber], run_id: str, args: list[str], code: int, message: str
) -> None:
    result = cli("ui", run_id, *args)
    assert result.exit_code == code, result.output
    assert message in " ".join(result.stderr.replace("│", " ").split())


def test_ui_attempt_is_for_serverless_runs_only(stubbed: dict[str, Stubber]) -> None:
    _write_entry("ec2b", None, cluster_id="j-2", runtime="emr-ec2")
    result = cli("ui", "ec2b", "--attempt", "1")
    assert result.exit_code == 2 and "--attempt: only EMR Serverless job runs have attempts" in result.stderr


def test_show_names_the_upstream_runs_a_downstream_run_read_and_the_one_that_failed(account: dict[str, Any]) -> None:
    east = {"pipeline": "sales-east", "run_id": "e-1", "ledger_uri": "s3://o/_runs/sales-east/2026/12/07/e-1.json"}
    west = {"pipeline": "sales-west", "run_id": "w-1", "ledger_uri": "s3://o/_runs/sales-west/2026/12/07/w-1.json"}
    _write_entry("summary-1", None, upstream_runs=[east, west])
    shown = " ".join(cli("show", "summary-1").stdout.split())
    assert f"lineage upstream sales-east e-1 {east['ledger_uri']} upstream sales-west w-1 {west['ledger_uri']}" in shown
    _write_entry("summary-2", None, state="UPSTREAM_FAILED", upstream_runs=[west], failed_upstream=east,
                 reason="upstream sales-east run e-1 FAILED")  # fmt: skip
    shown = " ".join(cli("show", "summary-2").stdout.split())
    assert "summary-2 UPSTREAM_FAILED" in shown and f"failed sales-east e-1 {east['ledger_uri']}" in shown, shown
    assert "lineage" not in cli("show", "old-ok").stdout  # a run no upstream started has none
