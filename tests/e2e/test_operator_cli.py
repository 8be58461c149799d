"""The operator CLI (`autopilot_cli`) against the twin, found as in AWS: config/dev.yaml names the stack, the twin's
CloudFormation (where `local up` and the e2e deployment register it) answers DescribeStacks with its outputs; the
operator's credentials and region come from the environment, the endpoint from `--endpoint-url`."""

from __future__ import annotations

import gzip
import json
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from autopilot_cli.app import app
from autopilot_cli.deployment import Target, find_deployment
from local.spark_runner import log_key
from tests.deployment import Deployed


@pytest.fixture
def operator(env: Deployed, monkeypatch: pytest.MonkeyPatch) -> Deployed:
    """The operator's AWS chain: any key signs as the twin's operator (whose calls the twin's IAM does not judge:
    it enforces the app's principals), the twin's region, no profile."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "operator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator")
    monkeypatch.setenv("AWS_DEFAULT_REGION", env.twin.region)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


def cli(env: Deployed, *args: str) -> Any:
    return CliRunner().invoke(app, ["--endpoint-url", env.twin.endpoint, *args], env={"COLUMNS": "200"})


def _run(env: Deployed, fail: str | None = None) -> str:
    """A console run of sales-daily over one uploaded file (.txt: the trigger ignores it); returns its run id once
    it ended."""
    folder = f"opcli-{uuid.uuid4().hex[:8]}"
    env.s3.put_object(Bucket=env.landing, Key=f"sales/{folder}/x.txt", Body=b"order_id,order_date\n1,2024-06-01\n")
    if fail:
        env.twin.faults.fail_next_job(fail)
    run_id = f"opcli-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"pipeline": "sales-daily", "inputs": [f"s3://{env.landing}/sales/{folder}/x.txt"]})
    started = cli(env, "start", "sales-daily", "--input", body, "--name", run_id)
    assert started.exit_code == 0, started.output
    env.finished(started.stdout.strip().splitlines()[-1])
    return run_id


def test_the_twin_answers_describe_stacks_with_the_deployed_outputs(operator: Deployed) -> None:
    deployment = find_deployment(Target(env="dev", endpoint_url=operator.twin.endpoint))
    assert deployment.stack_name == operator.report.stacks[0] and deployment.region == operator.twin.region
    assert deployment.outputs == {k: str(v) for k, v in operator.report.outputs.items()}
    assert deployment.state_machine("sales-daily") == operator.state_machine_of("sales-daily")


def test_start_runs_and_show_a_succeeded_run(operator: Deployed) -> None:
    env = operator
    run_id = _run(env)
    listed = cli(env, "runs", "--pipeline", "sales-daily", "--since", "1h", "--json")
    assert listed.exit_code == 0, listed.output
    assert [r["state"] for r in json.loads(listed.stdout) if r["run_id"] == run_id] == ["SUCCEEDED"]
    table = cli(env, "runs", "--state", "succeeded")
    assert table.exit_code == 0 and "ERROR" in table.stdout.splitlines()[0] and run_id in table.stdout
    shown = cli(env, "show", run_id)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    assert f"{run_id} SUCCEEDED" in text and "timeline" in text and "console" in text and "failure" not in text
    links = json.loads(cli(env, "show", run_id, "--json").stdout)["links"]
    region = env.twin.region
    assert links["execution"].endswith(f"#/v2/executions/details/{env.ledger(run_id)['execution_arn']}")
    assert links["execution"].startswith(f"https://{region}.console.aws.amazon.com/states/home?region={region}")


def test_show_of_a_failed_run_says_why_in_one_line_and_exits_0(operator: Deployed) -> None:
    env = operator
    run_id = _run(env, fail="Job failed: ValueError: bad order_date in row 7")
    shown = cli(env, "show", run_id)
    assert shown.exit_code == 0, shown.output
    assert "ValueError: bad order_date in row 7" in " ".join(shown.stdout.split())
    (failed,) = [r for r in json.loads(cli(env, "runs", "--state", "FAILED", "--json").stdout) if r["run_id"] == run_id]
    assert failed["failure"].endswith("Job failed: ValueError: bad order_date in row 7"), failed["failure"]
    assert "\n" not in failed["failure"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["show", "no-such-run"], 1, "no run 'no-such-run' in the ledger of autopilot-dev"),
        (["start", "daily"], 2, "pipeline 'daily' not found; pipelines of autopilot-dev: "),
        (["runs", "--state", "DONE"], 2, "'DONE' is not a run state; one of: QUEUED, STARTED"),
        (["runs", "--pipeline", "sales-daily", "--state", "SKIPPED", "--since", "1m"], 0, ""),
    ],
)
def test_exit_codes(operator: Deployed, args: list[str], code: int, message: str) -> None:
    result = cli(operator, *args)
    assert result.exit_code == code, result.output
    assert message in " ".join(result.stderr.replace("│", " ").split())
    if code == 0:
        assert result.stdout.strip() == "no runs match --pipeline sales-daily --state SKIPPED --since 1m"


def _upload(env: Deployed) -> str:
    folder = f"opcli-{uuid.uuid4().hex[:8]}"
    key = f"sales/{folder}/x.txt"
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id,order_date\n1,2024-06-01\n")
    return f"s3://{env.landing}/{key}"


def _hanging_run(env: Deployed) -> str:
    """A sales-daily run whose job hangs, once its job run is RUNNING and its entry STARTED; returns its run id."""
    env.twin.faults.hang_next_job()
    run_id = f"opcli-{uuid.uuid4().hex[:8]}"
    started = cli(env, "start", "sales-daily", "--inputs", _upload(env), "--name", run_id)
    assert started.exit_code == 0, started.output
    env.wait_for(lambda: env.twin.emr_serverless.running(), 30, "the job run to start")
    env.wait_for(lambda: env.ledger(run_id).get("state") == "STARTED", 30, "the STARTED entry")
    return run_id


def test_start_wait_exits_with_the_runs_outcome(operator: Deployed) -> None:
    env = operator
    ok = cli(env, "start", "sales-daily", "--inputs", _upload(env), "--wait", "--timeout", "120")
    assert ok.exit_code == 0, ok.output
    lines = ok.stdout.strip().splitlines()  # the in-process twin's function logs print in between
    arn, outcome = lines[0], lines[-1]
    assert outcome == "SUCCEEDED" and env.ledger(arn.rsplit(":", 1)[-1])["state"] == "SUCCEEDED"
    assert "ledger SUCCEEDED" in ok.stderr
    env.twin.faults.fail_next_job("Job failed: ValueError: bad order_date in row 7")
    failed = cli(env, "start", "sales-daily", "--inputs", _upload(env), "--wait", "--timeout", "120")
    assert failed.exit_code == 1, failed.output
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("emr-autopilot: error: run FAILED: ") and last.endswith(
        "ValueError: bad order_date in row 7"
    )


def test_cancel_stops_a_hanging_run_and_the_reason_reaches_the_ledger(operator: Deployed) -> None:
    env = operator
    run_id = _hanging_run(env)
    cancelled = cli(env, "cancel", run_id, "--reason", "wrong input folder", "--timeout", "60")
    assert cancelled.exit_code == 0, cancelled.output
    entry = env.ledger(run_id)
    assert entry["state"] == "ABORTED" and entry["error"] == "Cancelled" and entry["cause"] == "wrong input folder"
    (job_run,) = entry["cleanup"]["job_runs_cancelled"]
    text = " ".join(cancelled.stdout.split())
    assert f"{run_id} ABORTED" in text and "why Cancelled: wrong input folder" in text
    assert f"job runs cancelled {job_run}" in text and "clusters terminated none" in text
    env.wait_for(lambda: not env.twin.emr_serverless.running(), 30, "the job run to be cancelled")
    again = cli(env, "cancel", run_id)
    assert again.exit_code == 1 and f"run {run_id} already ended ABORTED at " in again.stderr


def test_rerun_runs_the_same_manifest_under_a_new_id_and_records_rerun_of(operator: Deployed) -> None:
    env = operator
    first = _run(env)
    rerun_id = f"opcli-{uuid.uuid4().hex[:8]}"
    again = cli(env, "rerun", first, "--name", rerun_id, "--wait", "--timeout", "120")
    assert again.exit_code == 0, again.output
    assert again.stdout.strip().splitlines()[-1] == "SUCCEEDED"
    original, rerun = env.ledger(first), env.ledger(rerun_id)
    assert rerun["rerun_of"] == first and rerun["trigger"] == {"type": "console", "rerun_of": first}
    assert rerun["input_manifest"] != original["input_manifest"]

    def objects(uri: str) -> list[str]:
        bucket, _, key = uri[5:].partition("/")
        body = json.loads(env.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        return [f"{o['bucket']}/{o['key']}" for o in body["objects"]]

    assert objects(rerun["input_manifest"]) == objects(original["input_manifest"])


def test_status_shows_what_runs_now(operator: Deployed) -> None:
    env = operator
    run_id = _hanging_run(env)
    try:
        now = cli(env, "status", "--json")
        assert now.exit_code == 0, now.output
        shown = json.loads(now.stdout[now.stdout.index("{\n") :])  # after the in-process twin's log lines
        assert [(e["pipeline"], e["ledger_state"]) for e in shown["executions"] if e["run_id"] == run_id] == [
            ("sales-daily", "STARTED")
        ]
        # the job run is named after the run (the ledger has its id only once it ended)
        (job,) = [j for j in shown["job_runs"] if j["name"] == run_id]
        assert (job["runtime"], job["state"], job["where"]) == (
            "emr-serverless",
            "RUNNING",
            "autopilot-dev-shared-spark",
        )
        table = cli(env, "status")
        assert table.exit_code == 0 and run_id in table.stdout and job["job_run_id"] in table.stdout, table.output
    finally:
        env.sfn.stop_execution(executionArn=env.ledger(run_id)["execution_arn"])
        env.wait_for(lambda: env.ledger(run_id).get("cleanup"), 30, "the guardrail's cleanup")


def test_logs_of_a_failed_run_reads_the_drivers_log_where_emr_serverless_puts_it(operator: Deployed) -> None:
    """An injected job fault leaves the driver log a failed EMR Serverless driver leaves (the twin writes it), and
    `logs` finds it; without a log, `logs` says where it looked; a driver log written where EMR Serverless (and the
    twin's Spark runner) puts it is then found from the ledger's log_uri, application and job run alone."""
    env = operator
    run_id = _run(env, fail="Job failed: ValueError: bad order_date in row 7")
    entry = json.loads(cli(env, "show", run_id, "--json").stdout)["raw"]
    assert entry["runtime"] == "emr-serverless" and entry["log_uri"].startswith("s3://")
    injected = cli(env, "logs", run_id, "--stderr", "--lines", "1")
    assert injected.exit_code == 0 and "bad order_date in row 7" in injected.stdout, injected.output
    log_bucket, _, log_prefix = entry["log_uri"][5:].partition("/")
    for item in env.s3.list_objects_v2(Bucket=log_bucket, Prefix=log_prefix).get("Contents", []):
        env.s3.delete_object(Bucket=log_bucket, Key=item["Key"])
    missing = cli(env, "logs", run_id, "--stderr")
    assert missing.exit_code == 1
    assert f"no driver or step stderr log for run {run_id} (FAILED) under {entry['log_uri']}" in missing.stderr
    bucket, _, prefix = entry["log_uri"][5:].partition("/")
    key = prefix + log_key("emr-serverless", entry["application_id"], entry["job_run_id"], "stderr.gz")
    error = "ValueError: bad order_date in row 7"
    env.s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(f"INFO SparkContext: starting\n{error}\n".encode()))
    found = cli(env, "logs", run_id, "--stderr", "--lines", "1")
    assert found.exit_code == 0, found.output
    assert found.stdout == error + "\n"
