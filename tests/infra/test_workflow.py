"""The workflow: its definition, its budget, and IAM derived from the ASL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from autopilot_common import run_events
from config.loader import load_config
from local.iam.reference import reference
from tests.infra.conftest import Synthesized

STATEMACHINES = Path(__file__).resolve().parents[2] / "statemachines" / "rendered"
ASL_PATH = STATEMACHINES / "emr_serverless_job.asl.json"
ASL: dict[str, Any] = json.loads(ASL_PATH.read_text(encoding="utf-8"))
RUN_TASK_PREFIX = "arn:${Partition}:states:::"
SYNC_RULE_ACTIONS = {"events:PutTargets", "events:PutRule", "events:DescribeRule"}

# Actions each optimized integration needs (AWS "IAM policies for integrated services" pages).
INTEGRATION_ACTIONS: dict[str, set[str]] = {
    "lambda:invoke": {"lambda:InvokeFunction"},
    "lambda:invoke.waitForTaskToken": {"lambda:InvokeFunction"},
    "sns:publish": {"sns:Publish"},
    "events:putEvents": {"events:PutEvents"},
    "emr-serverless:startJobRun": {"emr-serverless:StartJobRun"},
    "emr-serverless:startJobRun.sync": {
        "emr-serverless:StartJobRun",
        "emr-serverless:GetJobRun",
        "emr-serverless:CancelJobRun",
        "events:PutTargets",
        "events:PutRule",
        "events:DescribeRule",
    },
    "emr-serverless:cancelJobRun": {"emr-serverless:CancelJobRun"},
    "emr-containers:startJobRun": {"emr-containers:StartJobRun"},
    "emr-containers:startJobRun.sync": {
        "emr-containers:StartJobRun",
        "emr-containers:DescribeJobRun",
        "emr-containers:CancelJobRun",
    },
    "emr-containers:cancelJobRun": {"emr-containers:CancelJobRun"},
    "elasticmapreduce:createCluster": {"elasticmapreduce:RunJobFlow"},
    "elasticmapreduce:addStep.sync": {
        "elasticmapreduce:AddJobFlowSteps",
        "elasticmapreduce:DescribeStep",
        "elasticmapreduce:CancelSteps",
        *SYNC_RULE_ACTIONS,
    },
    "elasticmapreduce:terminateCluster.sync": {
        "elasticmapreduce:TerminateJobFlows",
        "elasticmapreduce:DescribeCluster",
        *SYNC_RULE_ACTIONS,
    },
}
PIPELINES = sorted(load_config("dev").pipelines)
# Added by CDK for `tracing_enabled` and `logs`: services without resource-level permissions.
OBSERVABILITY_PREFIXES = ("xray:", "logs:")


def _tasks(asl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every Task state, including those inside Map/Parallel states."""
    found: dict[str, dict[str, Any]] = {}
    for name, state in asl["States"].items():
        if state["Type"] == "Task":
            found[name] = state
        for inner in [state.get("ItemProcessor") or state.get("Iterator"), *state.get("Branches", [])]:
            if inner:
                found |= _tasks(inner)
    return found


def actions_from_asl(asl: dict[str, Any]) -> set[str]:
    """Every IAM action the ASL's tasks need, derived from their Resource and Parameters."""
    needed: set[str] = set()
    for state in _tasks(asl).values():
        integration = state["Resource"].removeprefix(RUN_TASK_PREFIX)
        if integration.startswith("aws-sdk:"):
            _, service, api = integration.split(":")
            needed.add(f"{service}:{api[0].upper()}{api[1:]}")
        else:
            needed |= INTEGRATION_ACTIONS[integration]
        params = state.get("Parameters", {})
        if "ExecutionRoleArn" in params and not integration.startswith("emr-containers:"):
            needed.add("iam:PassRole")  # EMR on EKS checks the emr-containers:ExecutionRoleArn condition instead
        if integration.startswith("emr-serverless:") and "Tags" in params:
            needed.add("emr-serverless:TagResource")
        if integration == "aws-sdk:cloudwatch:putMetricAlarm" and "Tags" in params:
            needed.add("cloudwatch:TagResource")  # an alarm created with tags needs TagResource too
        if integration.startswith("elasticmapreduce:createCluster"):
            needed.add("iam:PassRole")  # ServiceRole and JobFlowRole
            needed.add("iam:CreateServiceLinkedRole")  # EMR's cleanup role, made with an account's first cluster
            if "Tags" in params or "Tags.$" in params:
                needed.add("elasticmapreduce:AddTags")  # tag-on-create is authorized as AddTags
    return needed


def _role_statements(synth: Synthesized, role_fragment: str) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        roles = json.dumps(policy["Properties"]["Roles"])
        if role_fragment in roles:
            statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    assert statements, f"no policy attached to a role matching {role_fragment!r}"
    return statements


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    out: set[str] = set()
    for statement in statements:
        action = statement["Action"]
        out |= set(action if isinstance(action, list) else [action])
    return out


def workflow_role(name: str) -> str:
    """The logical-id fragment of a pipeline's workflow role."""
    return f"Pipeline{name.replace('-', '')}WorkflowRole"


def definition_of(synth: Synthesized, name: str) -> dict[str, Any]:
    """The ASL a pipeline's state machine runs (EMR-on-EC2 ones are filled in from config at synth)."""
    return synth.stack.pipelines[name].definition


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_every_workflow_times_out_after_its_run_timeout(synth: Synthesized, pipeline: str) -> None:
    # CDK's `timeout` prop never reaches a file-based definition: the ASL itself must carry it.
    expected = synth.stack.pipelines[pipeline].pipeline.run_timeout_minutes * 60
    assert definition_of(synth, pipeline)["TimeoutSeconds"] == expected


@pytest.mark.parametrize("pipeline", ["sales-daily", "sales-cluster", "sales-adhoc", "sales-eks"])
def test_workflow_role_has_exactly_the_actions_of_its_tasks(synth: Synthesized, pipeline: str) -> None:
    statements = _role_statements(synth, workflow_role(pipeline))
    granted = {a for a in _actions(statements) if not a.startswith(OBSERVABILITY_PREFIXES)}
    assert granted == actions_from_asl(definition_of(synth, pipeline))


def test_pass_role_is_scoped_to_the_job_role_and_service(synth: Synthesized) -> None:
    statements = _role_statements(synth, workflow_role("sales-daily"))
    (pass_role,) = [s for s in statements if s["Action"] == "iam:PassRole"]
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "emr-serverless.amazonaws.com"}}
    assert "JobRole" in json.dumps(pass_role["Resource"])


def test_sync_rule_permissions_are_on_the_managed_rule_only(synth: Synthesized) -> None:
    statements = _role_statements(synth, workflow_role("sales-daily"))
    (rule,) = [s for s in statements if "events:PutRule" in s["Action"]]
    assert "rule/StepFunctionsGetEventsForEMRServerlessJobRule" in json.dumps(rule["Resource"])


@pytest.mark.parametrize("pipeline", ["sales-daily", "sales-cluster", "sales-adhoc", "sales-eks"])
def test_star_only_where_the_action_allows_nothing_narrower(synth: Synthesized, pipeline: str) -> None:
    # "*" only for observability and for actions the Service Authorization Reference gives no resource type
    # (RunJobFlow): for those nothing narrower exists.
    for statement in _role_statements(synth, workflow_role(pipeline)):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Resource"] == "*":
            narrower = [a for a in actions if not a.startswith(OBSERVABILITY_PREFIXES)]
            assert all(not reference().action(a).has_resource_types for a in narrower), narrower
            assert all(statement.get("Condition") for _ in narrower), "a '*' grant keeps a condition (request tag)"


@pytest.mark.parametrize("pipeline", ["sales-daily", "sales-cluster", "sales-adhoc", "sales-eks"])
def test_run_events_are_put_on_the_default_bus_only(synth: Synthesized, pipeline: str) -> None:
    (grant,) = [s for s in _role_statements(synth, workflow_role(pipeline)) if "events:PutEvents" in _actions([s])]
    assert _actions([grant]) == {"events:PutEvents"}
    assert grant["Resource"] == "arn:aws:events:us-east-1:123456789012:event-bus/default"


def test_every_workflow_end_publishes_its_run_event_with_the_documented_source_and_detail_types() -> None:
    for outcome, state in (("Succeeded", "SUCCEEDED"), ("Failed", "FAILED")):
        publish = ASL["States"][f"PublishRun{outcome}"]
        (entry,) = publish["Parameters"]["Entries"]
        assert entry["Source"] == run_events.SOURCE and not entry["Source"].startswith("aws.")
        assert entry["DetailType"] == run_events.DETAIL_TYPES[state]
        assert "EventBusName" not in entry  # the default bus, the one the grant names
        assert entry["Detail.$"] == "States.JsonMerge($.run.event, $.run_end, false)"
        assert ASL["States"][f"Run{outcome}Event"]["Parameters"]["state"] == state
        # a lost event never fails a run: every error continues to the run's end
        assert {c["Next"] for c in publish["Catch"]} == {publish["Next"]} == {f"Run{outcome}"}
        assert publish["Catch"][0]["ErrorEquals"] == ["States.ALL"]


def test_job_role_reads_only_its_prefixes_and_writes_only_its_outputs(synth: Synthesized) -> None:
    statements = _role_statements(synth, "JobRole")
    text = json.dumps(statements)
    writes = [s for s in statements if set(_actions([s])) & {"s3:PutObject", "s3:DeleteObject"}]
    write_targets = json.dumps([s["Resource"] for s in writes])
    assert "/sales-daily/*" in write_targets
    assert "/emr-serverless/sales-daily/*" in write_targets
    assert "Landing" not in write_targets and "Artifacts" not in write_targets
    assert "/sales/*" in text and "/jobs/*" in text and "/manifests/sales-daily/*" in text
    assert '"s3:*"' not in text


def test_substitutions_match_the_placeholders_exactly(synth: Synthesized) -> None:
    placeholders = set(re.findall(r"\$\{(\w+)\}", ASL_PATH.read_text(encoding="utf-8")))
    props = state_machine(synth, "autopilot-dev-sales-daily")
    assert set(props["DefinitionSubstitutions"]) == placeholders
    assert props["StateMachineName"] == "autopilot-dev-sales-daily"
    assert props["TracingConfiguration"] == {"Enabled": True}
    assert props["LoggingConfiguration"]["Level"] == "ALL"
    assert props["LoggingConfiguration"]["IncludeExecutionData"] is False
    subs = props["DefinitionSubstitutions"]
    assert subs["JobArgumentsJson"] == '[\\"--date-column\\", \\"order_date\\"]'
    assert subs["ExecutionTimeoutMinutes"] == "60"


def test_lambda_invocations_per_run_are_prepare_and_the_run_slot() -> None:
    lambda_tasks = {n for n, s in _tasks(ASL).items() if ":lambda:invoke" in s["Resource"]}
    # Prepare, then acquire and release of the run slot (the failure path releases instead of the success path),
    # finalize at the end of either path (the job run's cost, links and the notification text), and, only for a run
    # under a daily budget, its spend (a Choice skips it for every other run).
    assert lambda_tasks == {
        "Prepare",
        "AcquireRunSlot",
        "ReleaseRunSlot",
        "ReleaseAfterFailure",
        "FinalizeSucceeded",
        "FinalizeFailed",
        "RecordSpend",
        "RecordSpendAfterFailure",
    }
    for name, then in (("RecordSpend", "WriteSuccessMarker"), ("RecordSpendAfterFailure", "NotifyFailure")):
        gate = ASL["States"][f"{name}IfBudgeted"]
        assert gate["Choices"] == [{"Variable": "$.run.reservation.usd", "IsPresent": True, "Next": name}]
        assert gate["Default"] == then == ASL["States"][name]["Next"]
        assert ASL["States"][name]["Parameters"]["Payload"]["update.$"] == "$.ledger_update"


def state_machine(synth: Synthesized, name: str) -> dict[str, Any]:
    (machine,) = [
        m["Properties"]
        for m in synth.resources("AWS::StepFunctions::StateMachine").values()
        if m["Properties"]["StateMachineName"] == name
    ]
    return machine


def _graph(asl: dict[str, Any]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, state in asl["States"].items():
        nxt = {state["Next"]} if "Next" in state else set()
        nxt |= {c["Next"] for c in state.get("Choices", [])}
        nxt |= {c["Next"] for c in state.get("Catch", [])}
        if "Default" in state:
            nxt.add(state["Default"])
        edges[name] = nxt
    return edges


def test_workflow_has_no_loops_or_waits_so_transitions_do_not_grow_with_job_length() -> None:
    edges = _graph(ASL)
    assert not [s for s in ASL["States"].values() if s["Type"] in {"Wait", "Map", "Parallel"}]
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str) -> None:
        assert node not in visiting, f"cycle through {node}"
        if node in done:
            return
        visiting.add(node)
        for nxt in edges[node]:
            visit(nxt)
        visiting.discard(node)
        done.add(node)

    visit(ASL["StartAt"])
    assert done == set(ASL["States"]), "unreachable states"


def test_happy_path_budget() -> None:
    # Prepare .. RunSucceeded along the success edges (Choice defaults, no catches).
    path, node = [], ASL["StartAt"]
    while True:
        path.append(node)
        state = ASL["States"][node]
        if state["Type"] in {"Succeed", "Fail"}:
            break
        node = state.get("Default") or state["Next"]
    assert path[-1] == "RunSucceeded"
    # FinalizeSucceeded and NotifySucceeded came with issue 16 (cost, links, the SUCCEEDED notification), the run
    # event's two states (RunSucceededEvent, PublishRunSucceeded) with issue 17.
    assert len(path) == 17, path  # + the budget's Choice (RecordSpendIfBudgeted)
    assert path[-5:] == [
        "WriteSuccessMarker", "NotifySucceeded", "RunSucceededEvent", "PublishRunSucceeded", "RunSucceeded"
    ], path  # fmt: skip
    assert path.index("FinalizeSucceeded") + 1 == path.index("SucceededLedgerUpdate") < path.index("RecordSucceeded")


def test_every_task_failure_leads_to_cleanup() -> None:
    for name, state in _tasks(ASL).items():
        if name in {"Prepare", "ReadJobMetrics", "CancelJob", "RecordFailed", "NotifyFailure", "PublishRunFailed"}:
            continue
        if name in {"ReleaseRunSlot", "ReleaseAfterFailure", "RecordSpend", "RecordSpendAfterFailure"}:
            # never fail the run: they continue on error
            continue
        if name in {"FinalizeSucceeded", "FinalizeFailed"}:  # the ledger still records the outcome without them
            assert {c["Next"] for c in state["Catch"]} == {f"{name}Unavailable"}, name
            continue
        if name == "NotifySucceeded":  # the run already succeeded (ledger, _SUCCESS): a lost notice is no failure
            assert {c["Next"] for c in state["Catch"]} == {"RunSucceededEvent"}, name
            continue
        if name == "PublishRunSucceeded":  # nor is a lost run event
            assert {c["Next"] for c in state["Catch"]} == {"RunSucceeded"}, name
            continue
        catches = {c["Next"] for c in state.get("Catch", []) if "States.ALL" in c["ErrorEquals"]}
        assert catches == {"CancelJobIfStarted"}, name
    assert ASL["States"]["RunFailed"]["Type"] == "Fail"
