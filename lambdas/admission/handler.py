"""Admission Lambda: `acquire` (the workflow's AcquireRunSlot, waitForTaskToken), `release` (ReleaseRunSlot) and
`spend` (RecordSpend: a budgeted run ended; `update` is its final ledger update, whose `cost.usd` replaces the
run's reserved estimate in the day's spend, or is null/absent and the estimate stays).

A release after a failure (`error`: the workflow's caught error) also answers the failure as the ledger records it
(`autopilot_common.causes.ledger_cause`: never an empty cause, at most about 1 KB).

Environment: see `AdmissionSettings.from_env`, and the usual `POWERTOOLS_*` variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from autopilot_common.admission import (
    AcquireRequest,
    AdmissionSettings,
    Reservation,
    acquire,
    budget_notifier,
    record_spend,
    release,
)
from autopilot_common.causes import ledger_cause
from autopilot_common.clients import Clients
from autopilot_common.observability import observability

obs = observability("autopilot-admission")
logger, metrics = obs.logger, obs.metrics
SETTINGS = AdmissionSettings.from_env(os.environ)  # fails the cold start naming a missing or malformed variable
CLIENTS = Clients()


def notify_budget_hold(note: Mapping[str, Any]) -> None:
    """Publish a budget hold. The SNS client is created at the first hold, not at cold start: building a boto3
    client loads its service model (~50 ms, a third of this function's cold import)."""
    publish = budget_notifier(CLIENTS.sns, SETTINGS.topic_arn)
    if publish is not None:
        publish(note)


NOTIFY = notify_budget_hold if SETTINGS.caps.any_budget and SETTINGS.topic_arn else None


def recorded_cost(update: Any) -> float | None:
    """`cost.usd` of a run's final ledger update: a non-negative number, else None (unknown: no cost, or null)."""
    cost = update.get("cost") if isinstance(update, dict) else None
    usd = cost.get("usd") if isinstance(cost, dict) else None
    if isinstance(usd, bool) or not isinstance(usd, int | float) or usd < 0:
        return None
    return float(usd)


@obs.handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    action = event.get("action")
    if action == "spend":
        run_id = str(event["run_id"])
        settled = record_spend(
            CLIENTS.dynamodb,
            CLIENTS.sfn,
            SETTINGS.table,
            SETTINGS.caps,
            run_id,
            recorded_cost(event.get("update")),
            notify=NOTIFY,
        )
        logger.info("spend recorded" if settled else "run reserved no spend", run_id=run_id, budget=settled)
        return {"budget": settled}
    if action == "release":
        run_id = str(event["run_id"])
        hints: dict[str, Any] = {}
        if event.get("pipeline") and event.get("reservation"):
            hints = {"pipeline": str(event["pipeline"]), "reservation": Reservation.from_json(event["reservation"])}
        freed = release(CLIENTS.dynamodb, CLIENTS.sfn, SETTINGS.table, run_id, SETTINGS.caps, notify=NOTIFY, **hints)
        logger.info("run slot released" if freed else "run held no slot", run_id=run_id)
        result: dict[str, Any] = {"released": freed}
        if isinstance(event.get("error"), dict):  # a failed run: the failure as its ledger entry records it
            error = str(event["error"].get("Error") or "States.Runtime")
            result["failure"] = {"error": error, "cause": ledger_cause(error, event["error"].get("Cause"))}
        return result
    if action != "acquire":
        raise ValueError(f"action: got {action!r}; expected 'acquire', 'release' or 'spend'")
    request = AcquireRequest.from_event(event)
    outcome = acquire(
        CLIENTS.dynamodb,
        CLIENTS.sfn,
        CLIENTS.s3,
        SETTINGS.table,
        SETTINGS.caps,
        request,
        ledger_bucket=SETTINGS.ledger_bucket,
        notify=NOTIFY,
    )
    # The dimension only beside the metric: Powertools keeps dimensions across invocations when a flush has no
    # metric (a release publishes none), so adding it on every call warned "Dimension 'pipeline' has already been
    # added" on the next one.
    metrics.add_dimension(name="pipeline", value=str(event.get("pipeline", "unknown")))
    metrics.add_metric(name=f"Runs{outcome.state.title()}", unit=MetricUnit.Count, value=1)
    budget = outcome.over_budget.as_dict() if outcome.over_budget else None
    logger.info(
        "run slot requested", run_id=request.run_id, state=outcome.state, position=outcome.position, over_budget=budget
    )
    return {
        "state": outcome.state,
        "position": outcome.position,
        "admitted": list(outcome.admitted),
        "over_budget": budget,
    }
