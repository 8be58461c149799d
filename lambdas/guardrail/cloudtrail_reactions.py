"""Reactions to CloudTrail ("AWS API Call via CloudTrail").

From EMR: RunJobFlow by someone else without an auto-termination policy gets one; TerminateJobFlows /
CancelSteps by someone else on a run of this app marks the run CANCELLED with the principal. From Step
Functions: StopExecution of a run names who aborted it (`aborted_by` in the ABORTED entry). Who did it is
stored first-report-wins in the claims table, so the race with the workflow's own ending is decided once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from autopilot_common.clients import Clients
from autopilot_common.ledger import FINAL_STATES, iso
from autopilot_common.ledger import read_entry as read_ledger
from autopilot_common.ledger import write_entry as write_ledger
from autopilot_common.tags import TAG_DEPLOYMENT, TAG_EXECUTION, TAG_PIPELINE, TAG_RUN_ID
from guardrail_settings import GuardrailEventError, GuardrailSettings
from run_teardown import RunRef, cluster_tags, execution_status, notify

if TYPE_CHECKING:
    from autopilot_common.clients import DynamoDBClient, EMRClient

CANCELLATION_KEY_PREFIX = "autopilot-guardrail.cancellation#"
STOP_KEY_PREFIX = "autopilot-guardrail.stop#"
CANCELLATION_TTL = timedelta(days=30)


@dataclass(frozen=True)
class Cancellation:
    """Someone other than this app stopped a run's compute (seen in CloudTrail)."""

    run_id: str
    by: str
    action: str
    at: str

    def ledger_fields(self) -> dict[str, Any]:
        return {
            "state": "CANCELLED",
            "cancelled_by": self.by,
            "cancelled_at": self.at,
            "cancel_action": self.action,
        }


@dataclass(frozen=True)
class Stop:
    """Someone stopped a run's execution (StopExecution, seen in CloudTrail): the ABORTED entry names them."""

    run_id: str
    by: str
    at: str

    def ledger_fields(self) -> dict[str, Any]:
        return {"aborted_by": self.by, "aborted_at": self.at}


def record_stop(dynamodb: DynamoDBClient, table: str, stop: Stop, now: datetime) -> bool:
    """Store who stopped the run (first report wins); True when this call stored it."""
    return _store_first(dynamodb, table, STOP_KEY_PREFIX + stop.run_id, now, by=stop.by, at=stop.at)


def find_stop(dynamodb: DynamoDBClient, table: str, run_id: str) -> Stop | None:
    found = _stored(dynamodb, table, STOP_KEY_PREFIX + run_id)
    return Stop(run_id=run_id, by=found["by"], at=found["at"]) if found else None


def record_cancellation(dynamodb: DynamoDBClient, table: str, cancellation: Cancellation, now: datetime) -> bool:
    """Store the cancellation (first report wins); True when this call stored it."""
    return _store_first(
        dynamodb,
        table,
        CANCELLATION_KEY_PREFIX + cancellation.run_id,
        now,
        by=cancellation.by,
        action=cancellation.action,
        at=cancellation.at,
    )


def find_cancellation(dynamodb: DynamoDBClient, table: str, run_id: str) -> Cancellation | None:
    found = _stored(dynamodb, table, CANCELLATION_KEY_PREFIX + run_id)
    return Cancellation(run_id=run_id, by=found["by"], action=found["action"], at=found["at"]) if found else None


def _store_first(dynamodb: DynamoDBClient, table: str, key: str, now: datetime, **fields: str) -> bool:
    """Put a report under `key` unless one is there (it expires after CANCELLATION_TTL); True when stored."""
    item = {"id": {"S": key}, **{name: {"S": value} for name, value in fields.items()}}
    item["expiration"] = {"N": str(int((now + CANCELLATION_TTL).timestamp()))}
    try:
        dynamodb.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(id)")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _stored(dynamodb: DynamoDBClient, table: str, key: str) -> dict[str, str] | None:
    """The string fields of the report under `key` (consistent read), or None."""
    item = dynamodb.get_item(TableName=table, Key={"id": {"S": key}}, ConsistentRead=True).get("Item")
    return {name: value["S"] for name, value in item.items() if "S" in value} if item else None


@dataclass
class CloudTrailReaction:
    """What the guardrail did about one CloudTrail record."""

    event_name: str
    principal: str
    action: str  # "auto-termination applied", "run cancelled", "ignored: <why>"
    cluster_ids: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


def principal_of(identity: Mapping[str, Any]) -> tuple[str, str | None]:
    """(who, role ARN behind it) from a CloudTrail `userIdentity`."""
    issuer = ((identity.get("sessionContext") or {}).get("sessionIssuer") or {}).get("arn")
    who = identity.get("arn") or identity.get("invokedBy") or identity.get("principalId") or "unknown"
    return str(who), str(issuer) if issuer else None


def react_to_cloudtrail(
    detail: Mapping[str, Any], settings: GuardrailSettings, clients: Clients, now: datetime
) -> CloudTrailReaction:
    """Act on one CloudTrail record: EMR RunJobFlow, TerminateJobFlows, CancelSteps; Step Functions StopExecution."""
    name = detail.get("eventName")
    identity = detail.get("userIdentity")
    if not isinstance(name, str) or not isinstance(identity, dict):
        raise GuardrailEventError("detail.eventName / detail.userIdentity: expected a CloudTrail record")
    who, role = principal_of(identity)
    if detail.get("errorCode"):
        return CloudTrailReaction(name, who, f"ignored: the call failed ({detail['errorCode']})")
    if settings.is_app_role(role or who) or settings.is_app_role(who):
        return CloudTrailReaction(name, who, "ignored: made by this app")
    params = detail.get("requestParameters") or {}
    if name == "RunJobFlow":
        return _unmanaged_cluster(detail, params, who, settings, clients)
    if name == "TerminateJobFlows":
        ids = params.get("jobFlowIds") or []
        return _cancelled_by_someone(name, who, [str(i) for i in ids], None, settings, clients, now)
    if name == "StopExecution":
        return _stopped_by_someone(str(params.get("executionArn") or ""), who, settings, clients, now)
    if name == "CancelSteps":
        return _cancelled_by_someone(
            name,
            who,
            [str(params.get("clusterId", ""))],
            [str(s) for s in params.get("stepIds") or []],
            settings,
            clients,
            now,
        )
    return CloudTrailReaction(name, who, "ignored: not an event the guardrail acts on")


def _unmanaged_cluster(
    detail: Mapping[str, Any], params: Mapping[str, Any], who: str, settings: GuardrailSettings, clients: Clients
) -> CloudTrailReaction:
    cluster_id = str((detail.get("responseElements") or {}).get("jobFlowId") or "")
    if not cluster_id:
        raise GuardrailEventError("detail.responseElements.jobFlowId: missing; expected the new cluster's id")
    reaction = CloudTrailReaction("RunJobFlow", who, "", [cluster_id])
    policy = settings.unmanaged
    tags = {str(t.get("key")): str(t.get("value")) for t in params.get("tags") or [] if isinstance(t, dict)}
    if not policy.enforce_auto_termination:
        reaction.action = "ignored: unmanaged_clusters.enforce_auto_termination is off"
    elif tags.get(TAG_DEPLOYMENT) == settings.deployment:
        reaction.action = "ignored: a cluster of this app"
    elif policy.exempt_tag_key in tags:
        reaction.action = f"ignored: tagged {policy.exempt_tag_key} (long-running by intent)"
    elif params.get("autoTerminationPolicy"):
        reaction.action = "ignored: launched with an auto-termination policy"
    elif (params.get("instances") or {}).get("keepJobFlowAliveWhenNoSteps") is False:
        reaction.action = "ignored: terminates itself after its steps"
    elif _has_auto_termination(clients.emr, cluster_id):
        reaction.action = "ignored: already has an auto-termination policy"
    else:
        idle_seconds = policy.idle_timeout_minutes * 60
        clients.emr.put_auto_termination_policy(
            ClusterId=cluster_id, AutoTerminationPolicy={"IdleTimeout": idle_seconds}
        )
        reaction.action = "auto-termination applied"
        notify(
            clients.sns,
            settings.topic_arn,
            f"EMR Autopilot: idle auto-termination applied to {cluster_id}",
            {
                "cluster_id": cluster_id,
                "cluster_name": params.get("name"),
                "launched_by": who,
                "launched_at": detail.get("eventTime"),
                "idle_timeout_minutes": policy.idle_timeout_minutes,
                "why": "launched without an auto-termination policy and without the "
                f"{policy.exempt_tag_key} tag; add that tag to keep a cluster running on purpose",
            },
        )
    return reaction


def _has_auto_termination(emr: EMRClient, cluster_id: str) -> bool:
    try:
        return bool(emr.get_auto_termination_policy(ClusterId=cluster_id).get("AutoTerminationPolicy"))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"InvalidRequestException", "ResourceNotFoundException"}:
            return False
        raise


def _cancelled_by_someone(
    name: str,
    who: str,
    cluster_ids: list[str],
    step_ids: list[str] | None,
    settings: GuardrailSettings,
    clients: Clients,
    now: datetime,
) -> CloudTrailReaction:
    reaction = CloudTrailReaction(name, who, "ignored: no run of this app affected", [c for c in cluster_ids if c])
    for cluster_id in reaction.cluster_ids:
        try:
            tags, _ = cluster_tags(clients.emr, cluster_id)
        except ClientError:
            continue
        runs: list[tuple[str, str | None]] = []
        if step_ids is None or (tags.get(TAG_DEPLOYMENT) == settings.deployment and TAG_RUN_ID in tags):
            if tags.get(TAG_DEPLOYMENT) == settings.deployment and TAG_RUN_ID in tags:
                runs.append((tags[TAG_RUN_ID], tags.get(TAG_EXECUTION)))
        else:  # steps of this app's runs on a long-running cluster are named `<run id>: <step>`
            for step_id in step_ids:
                step = clients.emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
                run_id = str(step.get("Name", "")).split(": ", 1)[0]
                if settings.pipeline_of_run_id(run_id) is not None and (run_id, None) not in runs:
                    runs.append((run_id, None))
        for run_id, execution_arn in runs:
            cancellation = Cancellation(run_id=run_id, by=who, action=f"{name} on {cluster_id}", at=iso(now))
            record_cancellation(clients.dynamodb, settings.claims_table, cancellation, now)
            reaction.run_ids.append(run_id)
            _amend_if_ended(cancellation, tags.get(TAG_PIPELINE), execution_arn, settings, clients)
    if reaction.run_ids:
        reaction.action = "run cancelled"
        notify(
            clients.sns,
            settings.topic_arn,
            f"EMR Autopilot: run cancelled by {who.rsplit('/', 1)[-1]}",
            {"runs": reaction.run_ids, "cancelled_by": who, "action": name, "clusters": reaction.cluster_ids},
        )
    return reaction


def _stopped_by_someone(
    execution_arn: str, who: str, settings: GuardrailSettings, clients: Clients, now: datetime
) -> CloudTrailReaction:
    """Remember who stopped a run; when the cleanup already wrote ABORTED, name them in the entry now (one of
    the two always sees the other's write: the stop is stored before the ledger is read)."""
    pipeline = settings.pipeline_of_execution(execution_arn)
    if pipeline is None:
        return CloudTrailReaction("StopExecution", who, "ignored: not an execution of this app")
    run_id = execution_arn.rsplit(":", 1)[-1]
    stop = Stop(run_id=run_id, by=who, at=iso(now))
    record_stop(clients.dynamodb, settings.claims_table, stop, now)
    reaction = CloudTrailReaction("StopExecution", who, "run stop recorded", run_ids=[run_id])
    _, started = execution_status(clients.sfn, execution_arn)
    if started is None:
        return reaction
    run = RunRef(pipeline, run_id, execution_arn, started)
    entry = read_ledger(clients.s3, settings.outputs_bucket, run.ledger_key)
    if entry is not None and entry.get("state") == "ABORTED" and not entry.get("aborted_by"):
        entry |= stop.ledger_fields()
        if entry.get("cause") == "the execution was stopped (StopExecution)":
            entry["cause"] = f"the execution was stopped (StopExecution) by {who}"
        write_ledger(clients.s3, settings.outputs_bucket, run.ledger_key, entry)
    return reaction


def _amend_if_ended(
    cancellation: Cancellation,
    pipeline_name: str | None,
    execution_arn: str | None,
    settings: GuardrailSettings,
    clients: Clients,
) -> None:
    """When the workflow already wrote its ending, turn it into CANCELLED now; otherwise the cleanup of
    the execution's end reads the stored cancellation (one of the two always sees the other's write)."""
    pipeline = settings.pipelines.get(pipeline_name or "") or settings.pipeline_of_run_id(cancellation.run_id)
    if pipeline is None:
        return
    if execution_arn is None:
        execution_arn = pipeline.state_machine_arn.replace(":stateMachine:", ":execution:") + ":" + cancellation.run_id
    status, started = execution_status(clients.sfn, execution_arn)
    if started is None:
        return
    run = RunRef(pipeline, cancellation.run_id, execution_arn, started)
    entry = read_ledger(clients.s3, settings.outputs_bucket, run.ledger_key)
    if entry is None or entry.get("state") not in FINAL_STATES or entry.get("state") == "CANCELLED":
        return
    entry["previous_state"] = entry.get("state")
    entry |= cancellation.ledger_fields()
    write_ledger(clients.s3, settings.outputs_bucket, run.ledger_key, entry)
