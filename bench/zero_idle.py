"""Zero-idle transient clusters (issue 18), side by side on the twin: one 3-step pipeline (steps of 12, 25 and 40
minutes on the twin's clock, 20 instances) run once with each step an `addStep.sync` task (before: Step Functions
notices a step's end at its next poll of EMR, every 60 s during a task's first 10 minutes and every 300 s after, on
the twin's compressed clock) and once as deployed (after: RunStep waits on a task token the step's EMR event answers).

Both runs read their figures from the run ledger the finalize function writes (`idle_cluster_seconds`, `idle`).
The twin's clock is compressed by TIME_SCALE: the poll schedule and the steps' lengths are modelled delays, so the
.sync run's wall seconds are divided by TIME_SCALE to give AWS seconds; the event path (EMR event -> EventBridge ->
guardrail Lambda -> SendTaskSuccess -> next RunStep -> finalize Lambda -> AddJobFlowSteps) is the twin's real
machinery, which the clock does not compress: its wall seconds are printed as they are (an upper bound on this
machine; AWS's own EventBridge delivery is not modelled).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "lambdas" / "common" / "python")]
for _name, _value in {
    "CDK_DEFAULT_ACCOUNT": "123456789012",
    "CDK_DEFAULT_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION": "1",
}.items():
    os.environ.setdefault(_name, _value)

import yaml  # noqa: E402

PIPELINE = "bench-chain"
STEP_MINUTES = (12, 25, 40)
INSTANCES = 20  # 1 primary + 19 core units (the 20-instance cluster)
TIME_SCALE = 0.01  # 1 s on the twin's clock lasts 10 ms: the 77-minute pipeline runs in about 46 s of wall time


def bench_config() -> dict[str, Any]:
    """config/dev.yaml with one pipeline: sales-chain's three steps, timed out well after their length."""
    config = yaml.safe_load((REPO / "config" / "dev.yaml").read_text())
    pipeline = copy.deepcopy(config["pipelines"]["sales-chain"])
    pipeline["runtime"]["instances"]["core"] = {"on_demand_units": INSTANCES - 1}
    for step, minutes in zip(pipeline["runtime"]["steps"], STEP_MINUTES, strict=True):
        step["timeout_minutes"] = minutes * 2
    config["pipelines"] = {PIPELINE: pipeline}
    return config


def synthesize(workdir: Path) -> Path:
    import aws_cdk as cdk

    from app import build_app, cli_context

    config_path = workdir / "bench.yaml"
    config_path.write_text(yaml.safe_dump(bench_config()))
    outdir = workdir / "cdk.out"
    context = {**cli_context(), "config_path": str(config_path)}
    build_app("bench", cdk.App(outdir=str(outdir), context=context), nag=False).synth()
    return outdir


def polling_twin(twin: Any, machine_arn: str) -> str:
    """The deployed workflow with RunStep as it was before (an addStep.sync task), under the same role plus what
    addStep.sync needs (AddJobFlowSteps, DescribeStep, Step Functions' managed rule): a second state machine."""
    sfn, iam = twin.client("stepfunctions"), twin.client("iam")
    described = sfn.describe_state_machine(stateMachineArn=machine_arn)
    definition = json.loads(described["definition"])
    run_step = definition["States"]["RunSteps"]["ItemProcessor"]["States"]["RunStep"]
    step = run_step["Parameters"]["Payload"]["step"]
    run_step["Resource"] = "arn:aws:states:::elasticmapreduce:addStep.sync"
    run_step["Parameters"] = {"ClusterId.$": "$.cluster_id", "Step": step}
    run_step["Retry"] = []
    role_name = described["roleArn"].rsplit("/", 1)[-1]
    arn = f"arn:aws:{{}}:us-east-1:{twin.account}:{{}}"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["elasticmapreduce:AddJobFlowSteps", "elasticmapreduce:DescribeStep"],
                "Resource": arn.format("elasticmapreduce", "cluster/*"),
            },
            {
                "Effect": "Allow",
                "Action": ["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                "Resource": arn.format("events", "rule/StepFunctionsGetEventForEMRAddJobFlowStepsRule"),
            },
        ],
    }
    iam.put_role_policy(RoleName=role_name, PolicyName="bench-add-step-sync", PolicyDocument=json.dumps(policy))
    created = sfn.create_state_machine(
        name=f"{PIPELINE}-sync", definition=json.dumps(definition), roleArn=described["roleArn"]
    )
    return str(created["stateMachineArn"])


def one_run(twin: Any, machine_arn: str, landing: str, outputs: str) -> dict[str, Any]:
    """One run of the pipeline on `machine_arn`; its ledger entry and the states it entered."""
    from autopilot_cli.ledger import read_runs

    for minutes in STEP_MINUTES:
        twin.faults.run_next_job_for(minutes * 60)
    key = f"{PIPELINE}/bench-{uuid.uuid4().hex[:8]}/a.input"
    twin.client("s3").put_object(Bucket=landing, Key=key, Body=b"order_id,order_date\n1,2024-06-01\n")
    sfn = twin.client("stepfunctions")
    run_id = f"{PIPELINE}-{uuid.uuid4().hex[:8]}"
    body = {"pipeline": PIPELINE, "inputs": [f"s3://{landing}/{key}"]}
    arn = sfn.start_execution(stateMachineArn=machine_arn, name=run_id, input=json.dumps(body))["executionArn"]
    deadline = time.monotonic() + sum(STEP_MINUTES) * 60 * TIME_SCALE * 3 + 120
    while (status := sfn.describe_execution(executionArn=arn)["status"]) == "RUNNING":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_id} still RUNNING")
        time.sleep(0.2)
    twin.wait_idle(timeout=60)
    if status != "SUCCEEDED":
        raise RuntimeError(f"{run_id} {status}: {sfn.describe_execution(executionArn=arn).get('cause')}")
    (entry,) = [r.raw for r in read_runs(twin.client("s3"), outputs, PIPELINE) if r.run_id == run_id]
    events = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    entry["_states_entered"] = sum(1 for e in events if "stateEnteredEventDetails" in e)
    return dict(entry)


def main() -> None:
    from local.twin import Twin

    minutes = ", ".join(str(m) for m in STEP_MINUTES)
    print(f"== zero-idle transient clusters: 3 steps of {minutes} min, {INSTANCES} instances, "
          f"the twin's clock x{TIME_SCALE} ==")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        assembly = synthesize(workdir)
        twin = Twin(workdir=workdir / "twin", spark=False, time_scale=TIME_SCALE).start()
        try:
            report = twin.deploy(assembly)
            outputs = report.outputs
            events_machine = str(outputs[f"StateMachine{PIPELINE.replace('-', '')}"])
            sync_machine = polling_twin(twin, events_machine)
            landing, ledger_bucket = str(outputs["LandingBucket"]), str(outputs["OutputsBucket"])
            before = one_run(twin, sync_machine, landing, ledger_bucket)
            after = one_run(twin, events_machine, landing, ledger_bucket)
        finally:
            twin.stop()
    rows = [("before: addStep.sync", before, 1 / TIME_SCALE), ("after:  step events", after, 1.0)]
    print(f"  {'':22}{'idle cluster-s':>15}{'between':>9}{'after last':>11}{'wasted inst-h':>15}{'idle $':>9}"
          f"{'states':>8}   (wall s)")  # fmt: skip
    for label, entry, to_aws in rows:
        idle = entry["idle"]
        print(
            f"  {label:22}{entry['idle_cluster_seconds'] * to_aws:15.1f}{idle['between_steps_seconds'] * to_aws:9.1f}"
            f"{(idle['after_last_step_seconds'] or 0) * to_aws:11.1f}{idle['instance_seconds'] * to_aws / 3600:15.3f}"
            f"{(idle['usd'] or 0) * to_aws:9.3f}{entry['_states_entered']:8d}   ({entry['idle_cluster_seconds']:.2f})"
        )
    delays = [[s["notice_delay_seconds"] for s in e["steps"]] for e in (before, after)]
    print(f"  notice delay per step (wall s): before {delays[0]}, after {delays[1]}")
    print(
        "  (idle cluster-s: step ends to the next step's start, plus the last end to TerminateJobFlows; before in "
        f"AWS seconds = wall / {TIME_SCALE}, after in wall seconds: the event path is not on the compressed clock)"
    )


if __name__ == "__main__":
    main()
