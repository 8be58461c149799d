"""The crash matrix (issue 13): for each handler and each AWS call it makes in a scenario, the invocation crashes
right after the call took effect (`faults.crash_after`: the twin's Lambda runtime kills it as a crashed process,
`Runtime.ExitError`), the platform redelivers or retries as AWS would (SQS redelivery for the router, the
workflow's Retry for prepare/admission/finalize, Lambda's asynchronous retries for the guardrail), and then:

- every object version landed is in exactly one SUCCEEDED run (read by it, or superseded inside its window),
- nothing is left running (executions, job runs, clusters, run slots),
- every run has a final ledger entry.

The crash points are not listed by hand: each scenario runs once recording the calls its handlers make, then once
per distinct (function, service, operation) with a crash after its first occurrence. The full matrix is `slow`;
the gate runs a representative crash point per handler of the serverless scenario.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.deployment import Deployed

DEPLOYMENT = "autopilot-dev"
TERMINAL = {"SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT", "CANCELLED", "SKIPPED"}


@dataclass
class Outcome:
    """What one scenario run left behind, checked against the invariants."""

    crash: tuple[str, str, str] | None
    fired: bool
    versions: int
    problems: list[str] = field(default_factory=list)


@dataclass
class Scenario:
    name: str
    pipeline: str
    run: Callable[[Deployed], tuple[set[tuple[str, str | None]], str, set[str]]]  # (versions, folder, before)
    expect: str = "SUCCEEDED"  # the final state of its runs
    check: Callable[[Deployed], list[str]] | None = None  # the scenario's own invariants, after it settled


def _executions_since(env: Deployed, pipeline: str, before: set[str]) -> list[dict[str, Any]]:
    return [e for e in env.executions(pipeline) if e["executionArn"] not in before]


def _manifest(env: Deployed, execution: dict[str, Any]) -> dict[str, Any]:
    described = env.sfn.describe_execution(executionArn=execution["executionArn"])
    uri = json.loads(described["input"]).get("manifest")
    if not uri:  # a console run: its manifest is written by prepare under its run id
        pipeline = described["stateMachineArn"].rsplit(":", 1)[1].removeprefix(f"{DEPLOYMENT}-")
        uri = f"s3://{env.report.outputs['ArtifactsBucket']}/manifests/{pipeline}/{described['name']}.json"
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        body: dict[str, Any] = json.loads(env.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except env.s3.exceptions.NoSuchKey:
        return {"objects": [], "superseded": []}
    return body


def _land(env: Deployed, prefix: str, count: int = 2) -> tuple[set[tuple[str, str | None]], str, set[str]]:
    folder = f"{prefix}crash-{uuid.uuid4().hex[:6]}/"
    pipeline = {"sales/": "sales-daily", "sales-cluster/": "sales-cluster"}[prefix]
    before = {e["executionArn"] for e in env.executions(pipeline)}
    versions = set()
    for i in range(count):
        put = env.s3.put_object(Bucket=env.landing, Key=f"{folder}part-{i}.csv", Body=b"order_id\n1\n")
        versions.add((f"{folder}part-{i}.csv", put.get("VersionId")))
    return versions, folder, before


def _console_run(env: Deployed, pipeline: str) -> tuple[set[tuple[str, str | None]], str, set[str]]:
    """A console run over two objects (prepare reads them and writes the manifest); sales-burst is capped
    (admission writes its slot)."""
    prefix = {"sales-daily": "sales/", "sales-burst": "burst/"}[pipeline]
    folder = f"{prefix}crash-console-{uuid.uuid4().hex[:6]}/"
    before = {e["executionArn"] for e in env.executions(pipeline)}
    versions = set()
    for i in range(2):  # .txt: the trigger ignores them, only the console run reads them
        put = env.s3.put_object(Bucket=env.landing, Key=f"{folder}part-{i}.txt", Body=b"order_id\n1\n")
        versions.add((f"{folder}part-{i}.txt", put.get("VersionId")))
    inputs = sorted(f"s3://{env.landing}/{key}" for key, _ in versions)  # objects: a folder would filter by suffix
    env.start_console_run(f"{pipeline}-{uuid.uuid4().hex[:8]}", {"pipeline": pipeline, "inputs": inputs})
    return versions, folder, before


def _abort_a_run(env: Deployed) -> tuple[set[tuple[str, str | None]], str, set[str]]:
    before = {e["executionArn"] for e in env.executions("sales-daily")}
    env.twin.faults.hang_next_job()
    key = f"sales/crash-abort-{uuid.uuid4().hex[:6]}.txt"  # not .csv: only the console run reads it
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id\n1\n")
    arn = env.start_console_run(f"sales-daily-{uuid.uuid4().hex[:8]}", {"pipeline": "sales-daily", "inputs": [
        f"s3://{env.landing}/{key}"]})  # fmt: skip

    def started_or_ended() -> bool:
        status = env.sfn.describe_execution(executionArn=arn)["status"]
        return bool(env.twin.emr_serverless.running()) or status != "RUNNING"

    env.wait_for(started_or_ended, 30, "the job run to start (or the run to end)")
    if env.sfn.describe_execution(executionArn=arn)["status"] == "RUNNING":
        env.sfn.stop_execution(executionArn=arn)
    return set(), "", before


_SCALED: dict[str, Any] = {}


def _scale_out_once(env: Deployed) -> tuple[set[tuple[str, str | None]], str, set[str]]:
    """A sales-cluster run whose step waits while its scale-out alarm goes to ALARM once: the scaler steps the task
    fleet from 4 to 6 spot units; then the step ends."""
    from tests.e2e.test_scaling import DEPLOYMENT as _D
    from tests.e2e.test_scaling import _alarm, gated_run_with_task_fleet

    before = {e["executionArn"] for e in env.executions("sales-cluster")}
    try:
        with gated_run_with_task_fleet(env) as (_run_id, _arn, cluster_id, fleet):
            _alarm(env, f"{_D}-scaling-sales-cluster-{cluster_id}-out-memory-low", "ALARM")
            env.wait_for(lambda: fleet.target_spot != 4, 60, "the scaler to act")
            time.sleep(0.5)
            # Lambda's asynchronous retries (about 1 and 2 minutes on the twin's clock) count as in-flight work
            env.wait_for(lambda: env.twin._busy == 0 and fleet.state == "RUNNING", 60, "the scaler and its retries")
            _SCALED.update(fleet=(fleet.target_on_demand, fleet.target_spot), cluster=cluster_id)
    finally:
        env.twin.emr_ec2.runner = None
    return set(), "", before


def _scaled_once(env: Deployed) -> list[str]:
    from tests.e2e.test_scaling import _actions

    problems = []
    if _SCALED.get("fleet") != (0, 6):
        problems.append(f"task fleet target {_SCALED.get('fleet')}, expected one step: (0, 6)")
    actions = _actions(env, _SCALED["cluster"]) if "cluster" in _SCALED else []
    if len(actions) != 1:
        problems.append(f"{len(actions)} scaling actions recorded for one alarm transition, expected 1")
    return problems


SCENARIOS = {
    "serverless": Scenario("serverless", "sales-daily", lambda env: _land(env, "sales/")),
    "ec2": Scenario("ec2", "sales-cluster", lambda env: _land(env, "sales-cluster/", 1)),
    "console-capped": Scenario("console-capped", "sales-burst", lambda env: _console_run(env, "sales-burst")),
    "abort": Scenario("abort", "sales-daily", _abort_a_run, expect="ABORTED"),
    "scaler": Scenario("scaler", "sales-cluster", _scale_out_once, check=_scaled_once),
}


def _settle(env: Deployed, timeout: float = 120) -> None:
    """Until nothing is in flight and no crash is pending (a retry may come after Lambda's async back-off)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        env.twin.wait_idle(timeout=timeout)
        time.sleep(0.5)
        if not env.twin.busy():
            return
    raise TimeoutError("the twin did not settle")


def _version_problems(
    env: Deployed, versions: set[tuple[str, str | None]], executions: list[dict[str, Any]], statuses: dict[str, str]
) -> list[str]:
    """Every object version landed in exactly one run (read or superseded by it), and that run SUCCEEDED."""
    problems: list[str] = []
    if not versions:
        return [] if executions else ["the scenario started no run"]
    owners: Counter[tuple[str, str | None]] = Counter()
    for execution in executions:
        manifest = _manifest(env, execution)
        pinned = {(o["key"], o.get("version_id")) for o in manifest.get("objects", [])}
        pinned |= {(s["key"], s.get("version_id")) for s in manifest.get("superseded", [])}
        status = statuses[execution["executionArn"]]
        for version in pinned & versions:
            owners[version] += 1
            if status != "SUCCEEDED":
                problems.append(f"{version[0]} is in run {execution['name']}, which is {status}")
    for version in versions:
        if owners[version] != 1:
            problems.append(f"{version[0]} is " + ("lost" if not owners[version] else f"in {owners[version]} runs"))
    return problems


def run_scenario(env: Deployed, scenario: Scenario, crash: tuple[str, str, str] | None) -> Outcome:
    fired_before = len(env.twin.faults.fired)
    if crash is not None:
        env.twin.faults.crash_after(*crash)
    versions, folder, before = scenario.run(env)
    if scenario.name not in ("abort", "scaler"):
        env.wait_for(lambda: _executions_since(env, scenario.pipeline, before), 60, "a run to start")
    _settle(env)
    fired = any(f[2].startswith("crash:") for f in env.twin.faults.fired[fired_before:])
    env.twin.faults.clear()
    outcome = Outcome(crash, fired, len(versions))
    executions = _executions_since(env, scenario.pipeline, before)
    statuses = {
        e["executionArn"]: env.sfn.describe_execution(executionArn=e["executionArn"])["status"] for e in executions
    }
    runs = {r.run_id: r.raw for r in env.runs() if r.pipeline == scenario.pipeline}
    outcome.problems += _version_problems(env, versions, executions, statuses)
    # nothing left running
    outcome.problems += [
        f"execution {e['name']} still RUNNING" for e in executions if statuses[e["executionArn"]] == "RUNNING"
    ]
    if env.twin.emr_serverless.running() or env.twin.emr_containers.running():
        outcome.problems.append("a job run is still running")
    outcome.problems += [f"cluster {c} left running" for c in env.clusters_left_running()]
    if scenario.check is not None:
        outcome.problems += scenario.check(env)
    # every run has a final ledger entry, in the state its execution ended in
    for execution in executions:
        entry = runs.get(execution["name"])
        if entry is None or entry["state"] not in TERMINAL:
            outcome.problems.append(f"run {execution['name']} has no final ledger entry ({entry and entry['state']})")
        elif scenario.expect != "SUCCEEDED" and entry["state"] != scenario.expect:
            outcome.problems.append(f"run {execution['name']} ledgered {entry['state']}, expected {scenario.expect}")
    return outcome


def crash_points(env: Deployed, scenario: Scenario) -> list[tuple[str, str, str]]:
    """Every distinct (function, service, operation) the scenario's handlers call, in first-call order."""
    env.twin.faults.calls.clear()
    env.twin.faults.recording = True
    try:
        baseline = run_scenario(env, scenario, None)
    finally:
        env.twin.faults.recording = False
    assert baseline.problems == [], baseline.problems
    points = []
    for function, service, operation in env.twin.faults.calls:
        point = (function.removeprefix(f"{DEPLOYMENT}-"), service, operation)
        if point not in points:
            points.append(point)
    return points


def _matrix(env: Deployed, scenario: Scenario, only: set[tuple[str, str, str]] | None = None) -> None:
    """Crash the scenario after each call its handlers make (`only`: after those calls, each of which must be made:
    a gate point the handlers no longer call would otherwise drop out of the gate unseen)."""
    called = crash_points(env, scenario)
    assert only is None or only <= set(called), f"gate points never called: {sorted(only - set(called))}"
    points = [p for p in called if only is None or p in only]
    outcomes = []
    for point in points:
        try:
            outcomes.append(run_scenario(env, scenario, point))
        except Exception as exc:  # the scenario itself could not complete: that is a finding too
            env.twin.faults.clear()
            _settle(env)
            outcomes.append(Outcome(point, True, 0, [f"scenario did not complete: {exc}"]))
    report = {
        "scenario": scenario.name,
        "crash_points": len(points),
        "fired": sum(o.fired for o in outcomes),
        "object_versions_checked": sum(o.versions for o in outcomes),
        "violations": {f"{':'.join(o.crash or ())}": o.problems for o in outcomes if o.problems},
        "points": [":".join(p) for p in points],
    }
    print("\ncrash matrix", json.dumps(report, indent=1))
    assert all(o.fired for o in outcomes), [o.crash for o in outcomes if not o.fired]
    assert report["violations"] == {}


# The gate: representative crash points per handler (each a crash the platform must absorb: the router after it
# wrote a manifest, after it claimed (TransactWriteItems, 100 claims each) and after it started the run; prepare after
# writing a console manifest; admission after its slot write and after answering the task token; the guardrail
# after cancelling a job run; finalize after its first read; the scaler after claiming an alarm transition, before
# resizing).
GATE = {
    "serverless": {
        ("router", "dynamodb", "TransactWriteItems"),
        ("router", "s3", "PutObject"),
        ("router", "stepfunctions", "StartExecution"),
        ("admission", "stepfunctions", "SendTaskSuccess"),
    },
    "console-capped": {("prepare", "s3", "PutObject"), ("admission", "dynamodb", "TransactWriteItems")},
    "abort": {("guardrail", "emr-serverless", "CancelJobRun")},
    "ec2": {("finalize", "emr", "DescribeCluster")},
    "scaler": {("scaler", "dynamodb", "TransactWriteItems")},
}


@pytest.mark.parametrize("name", sorted(GATE))
def test_crash_matrix_gate(env: Deployed, name: str) -> None:
    _matrix(env, SCENARIOS[name], GATE[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_crash_matrix_full(env: Deployed, name: str) -> None:
    _matrix(env, SCENARIOS[name])
