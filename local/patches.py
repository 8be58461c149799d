"""The twin's hooks into moto (each replaces something moto gets wrong or does not do; see local.twin)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from moto.core.responses import ActionResult, BaseResponse
from moto.events import models as events_models
from moto.s3 import notifications as s3_notifications
from moto.stepfunctions.parser import models as sfn_models
from moto.stepfunctions.parser.backend import execution as sfn_execution

from local.faults import TwinClientError

if TYPE_CHECKING:
    from local.twin import Twin

_ORIGINALS: dict[str, Any] = {}


def install(twin: Twin) -> None:
    """Install every hook; reinstalling (a new twin in the same process) rebinds them to `twin`."""
    _ORIGINALS.setdefault("s3_eb", s3_notifications._send_event_bridge_message)
    _ORIGINALS.setdefault("put_events", events_models.EventsBackend.put_events)
    _ORIGINALS.setdefault("send_to_targets", events_models.Rule.send_to_targets)
    _ORIGINALS.setdefault("terminated", sfn_execution.BaseExecutionWorkerCommunication.terminated)
    _ORIGINALS.setdefault("start", sfn_execution.Execution.start)
    _ORIGINALS.setdefault("call_action", BaseResponse.call_action)
    _ORIGINALS.setdefault("start_execution", sfn_models.StepFunctionsParserBackend.start_execution)

    def start_execution(self: Any, state_machine_arn: str, name: Any = None, *args: Any, **kwargs: Any) -> Any:
        # AWS names an execution started without a name with a UUID; moto leaves it None.
        return _ORIGINALS["start_execution"](self, state_machine_arn, name or str(uuid.uuid4()), *args, **kwargs)

    sfn_models.StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign]

    def s3_event_bridge(account_id: str, bucket: Any, event_name: str, key: Any) -> None:
        twin.s3_object_created(bucket, key, event_name)

    s3_notifications._send_event_bridge_message = s3_event_bridge

    # moto's own rule delivery would deliver a second time (and cannot reach Lambda/Step Functions).
    events_models.Rule.send_to_targets = lambda self, *a, **k: None  # type: ignore[method-assign]

    def put_events(self: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = _ORIGINALS["put_events"](self, events)
        for event, entry in zip(events, entries, strict=False):
            if "EventId" in entry:
                twin.put_event(
                    {
                        "source": event["Source"],
                        "detail-type": event["DetailType"],
                        "detail": json.loads(event.get("Detail") or "{}"),
                        "resources": event.get("Resources", []),
                    }
                )
        return entries

    events_models.EventsBackend.put_events = put_events  # type: ignore[method-assign]

    def terminated(self: Any) -> None:
        _ORIGINALS["terminated"](self)
        _emit_execution_status(twin, self.execution)

    sfn_execution.BaseExecutionWorkerCommunication.terminated = terminated  # type: ignore[method-assign]

    def start(self: Any) -> None:
        _ORIGINALS["start"](self)
        _emit_execution_status(twin, self)

    sfn_execution.Execution.start = start  # type: ignore[method-assign]

    def call_action(self: Any) -> Any:
        try:
            action = self._get_action()
            twin.faults.check(self.service_name, action)
            served = _serve_twin_model(twin, self, action)
            if served is not None:
                return served
        except TwinClientError as error:
            from local.twin import twin_error_response

            return twin_error_response(error)
        return _ORIGINALS["call_action"](self)

    BaseResponse.call_action = call_action  # type: ignore[method-assign]


def uninstall() -> None:
    """Restore moto as it was (tests that use plain moto after a twin ran in the same process)."""
    if not _ORIGINALS:
        return
    s3_notifications._send_event_bridge_message = _ORIGINALS["s3_eb"]
    events_models.Rule.send_to_targets = _ORIGINALS["send_to_targets"]  # type: ignore[method-assign]
    events_models.EventsBackend.put_events = _ORIGINALS["put_events"]  # type: ignore[method-assign]
    sfn_execution.BaseExecutionWorkerCommunication.terminated = _ORIGINALS["terminated"]  # type: ignore[method-assign]
    sfn_execution.Execution.start = _ORIGINALS["start"]  # type: ignore[method-assign]
    BaseResponse.call_action = _ORIGINALS["call_action"]  # type: ignore[method-assign]
    sfn_models.StepFunctionsParserBackend.start_execution = _ORIGINALS["start_execution"]  # type: ignore[method-assign]


def _serve_twin_model(twin: Twin, response: Any, action: str) -> Any:
    """A call to a service the twin models itself (EMR on EC2, EMR on EKS); None to leave it to moto."""
    if response.service_name == "emr":  # EMR on EC2: JSON 1.1, parameters in the body
        return _serve_emr(twin, action, response.body)
    if response.service_name == "emr-containers":  # EMR on EKS: REST-JSON, ids in the path (parsed by moto)
        params = {**(response.uri_match or {}), **(getattr(response, "params", None) or {})}
        result = twin.emr_containers.handle_api(action, params)
        return None if result is None else response.serialized(ActionResult(result))
    return None


def _serve_emr(twin: Twin, action: str, body: Any) -> tuple[int, dict[str, str], str] | None:
    """An `emr` JSON 1.1 call served by the twin's EMR-on-EC2 model; None for actions it leaves to moto."""
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    try:
        params = json.loads(body or "{}")
    except ValueError:
        raise TwinClientError("ValidationException", "The request body is not valid JSON") from None
    result = twin.emr_ec2.handle_api(action, params if isinstance(params, dict) else {})
    if result is None:
        return None
    return 200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(result)


def _millis(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp() * 1000)


def _emit_execution_status(twin: Twin, execution: Any) -> None:
    """A "Step Functions Execution Status Change" event, as AWS sends on every status change."""
    status = execution.exec_status.value if execution.exec_status else "RUNNING"
    output = getattr(execution, "output", None)
    twin.put_event(
        {
            "source": "aws.states",
            "detail-type": "Step Functions Execution Status Change",
            "resources": [execution.exec_arn],
            "detail": {
                "executionArn": execution.exec_arn,
                "stateMachineArn": execution.state_machine_arn,
                "name": execution.name,
                "status": status,
                "startDate": _millis(execution.start_date),
                "stopDate": _millis(getattr(execution, "stop_date", None)),
                "input": execution.execution_input if isinstance(execution.execution_input, str) else None,
                "output": json.dumps(output) if output is not None and not isinstance(output, str) else output,
                "error": getattr(execution, "error", None),
                "cause": getattr(execution, "cause", None),
            },
        }
    )
