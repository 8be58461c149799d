"""The twin's hooks into moto (each replaces something moto gets wrong or does not do; see local.twin)."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

from moto import backends as moto_backends
from moto.core.responses import ActionResult, BaseResponse, EmptyResult
from moto.core.utils import unix_time as moto_unix_time
from moto.emrserverless import models as serverless_models
from moto.emrserverless import urls as emrserverless_urls
from moto.emrserverless.responses import EMRServerlessResponse
from moto.events import models as events_models
from moto.events.exceptions import ValidationException as EventsValidationException
from moto.s3 import notifications as s3_notifications
from moto.s3.responses import S3Response
from moto.sqs import models as sqs_models
from moto.sqs.exceptions import InvalidAttributeName
from moto.stepfunctions import exceptions as sfn_exceptions
from moto.stepfunctions import responses as sfn_responses
from moto.stepfunctions.parser import models as sfn_models
from moto.stepfunctions.parser.api import (
    ExecutionFailedEventDetails,
    ExecutionStatus,
    HistoryEventType,
    InvalidToken,
    TaskDoesNotExist,
    TaskTimedOut,
)
from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import EvalTimeoutError
from moto.stepfunctions.parser.asl.component.program.program import Program
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import ResourceCondition
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
    StateTaskServiceCallback,
)
from moto.stepfunctions.parser.asl.eval.callback.callback import (
    CallbackConsumerTimeout,
    CallbackNotifyConsumerError,
    CallbackOutcome,
    CallbackOutcomeFailure,
    CallbackOutcomeSuccess,
)
from moto.stepfunctions.parser.asl.eval.environment import Environment
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.eval.event.event_manager import EventManager
from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped, ProgramTimedOut
from moto.stepfunctions.parser.backend import execution as sfn_execution

from local import moto_dynamodb, moto_stepfunctions, validation
from local.app_ui import APP_UI_ACTIONS
from local.cloudtrail import access_key_id_from
from local.faults import TwinClientError
from local.iam import hooks as iam_hooks
from local.lambda_runtime import environment_problem

if TYPE_CHECKING:
    from local.lambda_runtime import LocalFunction
    from local.twin import Twin

LOG = logging.getLogger("twin.patches")
_ORIGINALS: dict[str, Any] = {}
_TERMINATION_LOCK = threading.Lock()
_STOP_REASONS: dict[str, tuple[str | None, str | None]] = {}  # execution ARN -> StopExecution's (error, cause)
# S3 PUT sub-resources that are not object writes (PutObjectAcl, UploadPart, ...): no data event.
DASHBOARD_PATH = "{0}/applications/(?P<applicationId>[^/]+)/jobruns/(?P<jobRunId>[^/]+)/dashboard$"
ATTEMPTS_PATH = "{0}/applications/(?P<applicationId>[^/]+)/jobruns/(?P<jobRunId>[^/]+)/attempts$"
_NOT_OBJECT_WRITES = ("uploadId", "partNumber", "acl", "tagging", "retention", "legal-hold")


def _start_execution(self: Any, state_machine_arn: str, name: Any = None, *args: Any, **kwargs: Any) -> Any:
    # AWS names an execution started without a name with a UUID; moto leaves it None, and checks neither the
    # name nor the input's size (Step Functions: 1-80 allowed characters, input <= 256 KiB of UTF-8).
    name = name or str(uuid.uuid4())
    problem = validation.execution_name_problem(str(name))
    if problem is not None:
        raise sfn_exceptions.InvalidName(problem)
    execution_input = kwargs.get("execution_input", args[0] if args else None)
    if execution_input is not None and validation.utf8_size(execution_input) > validation.STATES_PAYLOAD_BYTES:
        raise sfn_exceptions.ValidationException(
            validation.validation_message(
                [
                    f"Value at 'input' failed to satisfy constraint: Member must have length less than or equal to "
                    f"{validation.STATES_PAYLOAD_BYTES}"
                ]  # fmt: skip
            )
        )
    return _ORIGINALS["start_execution"](self, state_machine_arn, name, *args, **kwargs)


def _event_details(**details: Any) -> Any:
    return EventDetails(**details)  # type: ignore[typeddict-item]


def install(twin: Twin) -> None:
    """Install every hook; reinstalling (a new twin in the same process) rebinds them to `twin`."""
    moto_dynamodb.install()
    moto_stepfunctions.install()
    _ORIGINALS.setdefault("s3_eb", s3_notifications._send_event_bridge_message)
    _ORIGINALS.setdefault("put_events", events_models.EventsBackend.put_events)
    _ORIGINALS.setdefault("send_to_targets", events_models.Rule.send_to_targets)
    _ORIGINALS.setdefault("terminated", sfn_execution.BaseExecutionWorkerCommunication.terminated)
    _ORIGINALS.setdefault("start", sfn_execution.Execution.start)
    _ORIGINALS.setdefault("call_action", BaseResponse.call_action)
    _ORIGINALS.setdefault("start_execution", sfn_models.StepFunctionsParserBackend.start_execution)
    _ORIGINALS.setdefault("stop", sfn_execution.Execution.stop)
    _ORIGINALS.setdefault("set_error", Environment.set_error)
    _ORIGINALS.setdefault("describe_execution", sfn_responses.StepFunctionResponse.describe_execution)
    _ORIGINALS.setdefault("stop_execution", sfn_responses.StepFunctionResponse.stop_execution)
    _ORIGINALS.setdefault("send_task_failure_response", sfn_responses.StepFunctionResponse.send_task_failure)
    _ORIGINALS.setdefault("key_response", S3Response.key_response)
    _ORIGINALS.setdefault("bucket_response", S3Response.bucket_response)
    _ORIGINALS.setdefault("callback_timeout", StateTaskServiceCallback._evaluate_with_timeout)
    _ORIGINALS.setdefault("send_task_success", sfn_models.StepFunctionsParserBackend.send_task_success)
    _ORIGINALS.setdefault("send_task_failure", sfn_models.StepFunctionsParserBackend.send_task_failure)
    _ORIGINALS.setdefault("add_event", EventManager.add_event)
    _ORIGINALS.setdefault("program_eval_body", Program._eval_body)
    _ORIGINALS.setdefault("serverless_list_job_runs", serverless_models.EMRServerlessBackend.list_job_runs)
    serverless_models.EMRServerlessBackend.list_job_runs = _list_job_runs  # type: ignore[method-assign]
    # moto's server lists its own package folder (os.listdir + an isdir per service) on every request, under the lock
    # that picks the service's app: the twin's overhead, not AWS's. The folder does not change while the twin runs.
    _ORIGINALS.setdefault("list_of_moto_modules", moto_backends.list_of_moto_modules)
    moto_backends.list_of_moto_modules = _moto_modules
    _ORIGINALS.setdefault("receive_message", sqs_models.SQSBackend.receive_message)
    sqs_models.SQSBackend.receive_message = _receive_message  # type: ignore[method-assign]
    _ORIGINALS.setdefault("retained", sqs_models.SQSBackend.is_message_valid_based_on_retention_period)
    sqs_models.SQSBackend.is_message_valid_based_on_retention_period = _retained  # type: ignore[method-assign]
    _ORIGINALS.setdefault("get_queue_attributes", sqs_models.SQSBackend.get_queue_attributes)
    sqs_models.SQSBackend.get_queue_attributes = _queue_attributes  # type: ignore[method-assign]

    sfn_models.StepFunctionsParserBackend.start_execution = _start_execution  # type: ignore[method-assign]
    # moto routes no GetDashboardForJobRun (botocore emr-serverless: GET .../jobruns/{jobRunId}/dashboard): the twin's
    # server must, before it builds its emr-serverless app (on the first request to the service).
    emrserverless_urls.url_paths.setdefault(DASHBOARD_PATH, EMRServerlessResponse.dispatch)
    # ... nor ListJobRunAttempts (GET .../jobruns/{jobRunId}/attempts).
    emrserverless_urls.url_paths.setdefault(ATTEMPTS_PATH, EMRServerlessResponse.dispatch)

    def s3_event_bridge(account_id: str, bucket: Any, event_name: str, key: Any) -> None:
        twin.s3_object_created(bucket, key, event_name)

    s3_notifications._send_event_bridge_message = s3_event_bridge

    # moto's own rule delivery would deliver a second time (and cannot reach Lambda/Step Functions).
    events_models.Rule.send_to_targets = lambda self, *a, **k: None  # type: ignore[method-assign]

    def put_events(self: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if validation.put_events_size(events) > validation.ASYNC_PAYLOAD_BYTES:  # EventBridge's 1 MB
            raise EventsValidationException("Total size of the entries in the request is over the limit.")
        # Sources starting with `aws.` are AWS services': PutEvents refuses the entry (PutEventsRequestEntry "Source"),
        # moto accepts it.
        refused = {i for i, event in enumerate(events) if str(event.get("Source") or "").startswith("aws.")}
        accepted = iter(_ORIGINALS["put_events"](self, [e for i, e in enumerate(events) if i not in refused]))
        entries: list[dict[str, Any]] = [
            {"ErrorCode": "NotAuthorizedForSourceException", "ErrorMessage": "Not authorized for the source."}
            if i in refused
            else next(accepted)
            for i in range(len(events))
        ]
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

    _install_executions(twin)
    _install_s3_data_events(twin)
    StateTaskServiceCallback._evaluate_with_timeout = _callback_evaluate_with_timeout  # type: ignore[method-assign]
    sfn_models.StepFunctionsParserBackend.send_task_success = _send_task_success  # type: ignore[method-assign,assignment]
    sfn_models.StepFunctionsParserBackend.send_task_failure = _send_task_failure  # type: ignore[method-assign,assignment]
    EventManager.add_event = _add_event_within_history_quota  # type: ignore[method-assign]
    Program._eval_body = _program_eval_body  # type: ignore[method-assign]

    def call_action(self: Any) -> Any:
        try:
            action = self._get_action()
            denied = iam_hooks.authorize_http(twin, self, action)
            if denied is not None:
                return denied
            if self.service_name == "emr":
                served = _serve_emr(twin, self, action)
                return _ORIGINALS["call_action"](self) if served is None else served
            twin.faults.check(self.service_name, action)
            served = _serve_twin_model(twin, self, action)
            if served is not None:
                return served
        except TwinClientError as error:
            from local.twin import twin_error_response

            return twin_error_response(error)
        result = _ORIGINALS["call_action"](self)
        if self.service_name == "stepfunctions" and action == "StopExecution":
            _record_stop_execution(twin, self, result)
        return result

    BaseResponse.call_action = call_action  # type: ignore[method-assign]


_RECEIVING = threading.Lock()


def _receive_message(
    self: Any, queue_name: str, count: int, wait_seconds_timeout: int, *args: Any, **kwargs: Any
) -> list[Any]:
    """moto's ReceiveMessage, one at a time: moto marks messages received without a lock, so two concurrent receives
    (Lambda's pollers read a queue five at a time) could both take one message, which SQS's visibility timeout
    prevents. A long poll waits outside the lock."""
    deadline = time.monotonic() + wait_seconds_timeout
    while True:
        with _RECEIVING:
            received: list[Any] = _ORIGINALS["receive_message"](self, queue_name, count, 0, *args, **kwargs)
        remaining = deadline - time.monotonic()
        if received or remaining <= 0:
            return received
        self.get_queue(queue_name).wait_for_messages(min(remaining, 1.0))


def _retained(self: Any, queue_name: str, message: Any) -> bool:
    """moto's retention check of one message, reading the queue's retention period only: moto built every attribute
    of the queue for it (three times), counting all its messages each time, for every message a receive looked at,
    so a receive from a queue holding n messages cost n² (a 1,000-object burst's queues). SQS keeps a message for the
    queue's `MessageRetentionPeriod` seconds from when it was sent."""
    retention = int(self.get_queue(queue_name).message_retention_period)
    return bool(retention + message.sent_timestamp / 1000 > moto_unix_time())


def _queue_attributes(self: Any, queue_name: str, attribute_names: list[str]) -> dict[str, Any]:
    """moto's GetQueueAttributes (same validation, same answer) with the queue's attributes built once per call: moto
    built them once per name asked for plus once more, each time counting every message of the queue."""
    queue = self.get_queue(queue_name)
    if not attribute_names:
        return {}
    valid = ["All", *queue.BASE_ATTRIBUTES, *queue.FIFO_ATTRIBUTES, *queue.KMS_ATTRIBUTES]
    invalid = next((name for name in attribute_names if name not in valid), None)
    if invalid is not None:
        raise InvalidAttributeName(invalid)
    attributes: dict[str, Any] = queue.attributes
    if "All" in attribute_names:
        return attributes
    return {name: attributes[name] for name in attribute_names if attributes.get(name) is not None}


@functools.cache
def _moto_modules() -> tuple[str, ...]:
    """`moto.backends.list_of_moto_modules()`, read once."""
    return tuple(_ORIGINALS["list_of_moto_modules"]())


def _list_job_runs(self: Any, application_id: str, *args: Any, **kwargs: Any) -> Any:
    """EMR Serverless ListJobRuns: moto refuses an application that has no job run yet (ResourceNotFoundException),
    AWS lists none; only an application that does not exist is refused (API reference, ListJobRuns: Errors)."""
    if application_id in self.applications and application_id not in self.job_runs:
        return []
    return _ORIGINALS["serverless_list_job_runs"](self, application_id, *args, **kwargs)


HISTORY_LIMIT_CAUSE = "The execution reached the maximum number of history events ({limit})."
history_limit = validation.STATES_HISTORY_EVENTS  # Step Functions' quota; tests may lower it (module attribute)


class HistoryQuotaReached(BaseException):
    """The next history event would be past the quota. A BaseException: no Catch, Retry or state may swallow it
    (AWS's quota cannot be caught); the program's wrapper below turns it into the execution's failure."""


def _add_event_within_history_quota(self: Any, context: Any, event_type: Any, *args: Any, **kwargs: Any) -> int:
    """Step Functions ends an execution whose history reaches the quota (25,000 events): the last event is
    ExecutionFailed with States.Runtime and "The execution reached the maximum number of history events (25000).",
    the one before it the last the workflow made (moto records without end)."""
    if self._event_id_gen._next_id >= history_limit and event_type != HistoryEventType.ExecutionFailed:
        raise HistoryQuotaReached(HISTORY_LIMIT_CAUSE.format(limit=history_limit))
    return int(_ORIGINALS["add_event"](self, context, event_type, *args, **kwargs))


def _program_eval_body(self: Any, env: Any) -> None:
    if not env.is_frame():
        _aws_context_times(env.states.context_object.context_object_data)
    try:
        _ORIGINALS["program_eval_body"](self, env)
    except moto_stepfunctions.ExecutionEnded:
        # it ended (stopped, timed out) while a task waited on its token: moto's body, run again with the program
        # no longer running, skips its loop and writes the execution's end event (ExecutionAborted, ExecutionTimedOut)
        _ORIGINALS["program_eval_body"](self, env)
    except HistoryQuotaReached as reached:
        if env.is_frame():
            raise  # a Map iteration or Parallel branch: the execution's own program ends it
        env.set_error(ExecutionFailedEventDetails(error="States.Runtime", cause=str(reached)))
        env.event_manager.add_event(
            context=env.event_history_context,
            event_type=HistoryEventType.ExecutionFailed,
            event_details=_event_details(
                executionFailedEventDetails=ExecutionFailedEventDetails(error="States.Runtime", cause=str(reached))
            ),
        )


def _aws_context_times(context: dict[str, Any]) -> None:
    """The context object's `Execution.StartTime` as AWS gives it, an ISO 8601 string in UTC with milliseconds
    ("2019-03-26T20:14:13.192Z": Step Functions developer guide, "Accessing execution data from the Context object");
    moto 5.2.5 leaves a datetime there, which no Lambda payload could carry."""
    execution = context.get("Execution") or {}
    started = execution.get("StartTime")
    if isinstance(started, datetime):
        execution["StartTime"] = started.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _callback_evaluate_with_timeout(self: Any, env: Any) -> None:
    """A `.waitForTaskToken` attempt that timed out: its token answers TaskTimedOut from then on, and a retry
    waits on a new token, as in AWS.

    moto never marks the token's callback endpoint, so SendTaskSuccess/Failure for it succeeded (silently
    dropped) while the execution went on, e.g. in the timeout's Catch path; and a retry reused the token."""
    try:
        if self.resource.condition == ResourceCondition.WaitForTaskToken and self.heartbeat is None:
            moto_stepfunctions.evaluate_waiting_task(self, env)  # one thread per waiting execution, not two
        else:
            _ORIGINALS["callback_timeout"](self, env)
    except EvalTimeoutError:
        context = env.states.context_object
        token = (context.context_object_data.get("Task") or {}).get("Token")
        endpoint = env.callback_pool_manager.get(token) if token else None
        if endpoint is not None:
            endpoint.report(CallbackConsumerTimeout())
            env.callback_pool_manager.add(context.update_task_token())
        raise


def _send_task_success(self: Any, task_token: str, outcome: str) -> dict[str, Any]:
    _answer_task(self, task_token, CallbackOutcomeSuccess(callback_id=task_token, output=outcome), running=True)
    return {}


def _send_task_failure(self: Any, task_token: str, error: Any = None, cause: Any = None) -> dict[str, Any]:
    failure = CallbackOutcomeFailure(callback_id=task_token, error=error, cause=cause)
    _answer_task(self, task_token, failure, running=False)
    return {}


def _answer_task(backend: Any, token: str, outcome: CallbackOutcome, *, running: bool) -> None:
    """moto's SendTaskSuccess/Failure, with its error mapping fixed: it tested the wrapper exception instead of
    the consumer error it carries, and built TaskTimedOut/TaskDoesNotExist without their required message
    (a 500). A token whose task timed out answers TaskTimedOut, as in AWS."""
    executions = backend._get_executions(ExecutionStatus.RUNNING) if running else backend._get_executions()
    for execution in executions:
        try:
            if execution.exec_worker.env.callback_pool_manager.notify(callback_id=token, outcome=outcome):
                return
        except CallbackNotifyConsumerError as refused:
            if isinstance(refused.callback_consumer_error, CallbackConsumerTimeout):
                raise TaskTimedOut("Task Timed Out", "TaskTimedOut", 400) from None
            raise TaskDoesNotExist("Task Does Not Exist", "TaskDoesNotExist", 400) from None
    raise InvalidToken()  # type: ignore[no-untyped-call]


def _install_executions(twin: Twin) -> None:
    """Execution status changes as AWS has them: one event per end, ABORTED at once, no FAILED after an abort."""

    def terminated(self: Any) -> None:
        # Once per execution: StopExecution ends it at once (below), its worker reports again when it unwinds.
        with _TERMINATION_LOCK:
            if getattr(self.execution, "_twin_terminated", False):
                return
            self.execution._twin_terminated = True
        _ORIGINALS["terminated"](self)
        _emit_execution_status(twin, self.execution)

    sfn_execution.BaseExecutionWorkerCommunication.terminated = terminated  # type: ignore[method-assign]

    def start(self: Any) -> None:
        _ORIGINALS["start"](self)
        _emit_execution_status(twin, self)

    sfn_execution.Execution.start = start  # type: ignore[method-assign]

    def stop_execution(self: Any) -> Any:
        # moto 5.2.5 drops StopExecution's error and cause; AWS keeps them on the execution (DescribeExecution,
        # the ABORTED status change event): handed to `stop` below, which moto calls with empty ones.
        arn = self._get_param("executionArn")
        _STOP_REASONS[arn] = (self._get_param("error"), self._get_param("cause"))
        try:
            return _ORIGINALS["stop_execution"](self)
        finally:
            _STOP_REASONS.pop(arn, None)

    sfn_responses.StepFunctionResponse.stop_execution = stop_execution  # type: ignore[method-assign]

    def send_task_failure_response(self: Any) -> Any:
        # moto 5.2.5 drops SendTaskFailure's cause; AWS hands it to the task's Catch (`Cause`) and the execution.
        self.stepfunction_backend.send_task_failure(
            self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
        )
        return EmptyResult()

    sfn_responses.StepFunctionResponse.send_task_failure = send_task_failure_response  # type: ignore[method-assign]

    def stop(self: Any, stop_date: Any, error: Any, cause: Any) -> None:
        # AWS: StopExecution makes the execution ABORTED at once; moto waits for the running state to return
        # (a Lambda task runs to its end in-process), so the status is reflected here, when the stop took.
        given_error, given_cause = _STOP_REASONS.get(self.exec_arn, (None, None))
        error, cause = error or given_error, cause or given_cause
        self.error, self.cause = error or None, cause or None
        _ORIGINALS["stop"](self, stop_date, error, cause)
        worker = self.exec_worker
        env = getattr(worker, "env", None)
        if env is not None and isinstance(env.program_state(), ProgramStopped):
            worker._execution_communication.terminated()
            moto_stepfunctions.wake_waiting(env)  # a task waiting on its token: its thread unwinds and ends

    sfn_execution.Execution.stop = stop  # type: ignore[method-assign]

    def set_error(self: Any, error: Any) -> None:
        # A state still unwinding after an abort or a timeout must not turn the execution FAILED.
        with self._state_mutex:
            if isinstance(self._program_state, ProgramStopped | ProgramTimedOut):
                return
            _ORIGINALS["set_error"](self, error)

    Environment.set_error = set_error  # type: ignore[method-assign]

    def describe_execution(self: Any) -> Any:
        result = _ORIGINALS["describe_execution"](self)
        described = result.result
        if isinstance(described, dict) and str(described.get("status")) == "TIMED_OUT":  # moto omits its stopDate
            execution = self.stepfunction_backend.describe_execution(described["executionArn"])
            described.setdefault("stopDate", execution.stop_date)
        return result

    sfn_responses.StepFunctionResponse.describe_execution = describe_execution  # type: ignore[method-assign]


def _install_s3_data_events(twin: Twin) -> None:
    """S3 data events for object writes (moto serves S3 outside `call_action`: its key_response is the path)."""

    def key_response(self: Any, request: Any, full_url: str, headers: Any) -> Any:
        denied = iam_hooks.authorize_s3(twin, request, full_url)
        if denied is not None:
            return denied
        result = _ORIGINALS["key_response"](self, request, full_url, headers)
        try:
            _record_s3_write(twin, self, request, full_url, result)
        except Exception:  # recording must never break the S3 call itself
            LOG.exception("recording an S3 data event failed")
        return result

    S3Response.key_response = key_response  # type: ignore[method-assign]

    def bucket_response(self: Any, request: Any, full_url: str, headers: Any) -> Any:
        denied = iam_hooks.authorize_s3(twin, request, full_url)
        return denied if denied is not None else _ORIGINALS["bucket_response"](self, request, full_url, headers)

    S3Response.bucket_response = bucket_response  # type: ignore[method-assign]


def uninstall() -> None:
    """Restore moto as it was (tests that use plain moto after a twin ran in the same process)."""
    if not _ORIGINALS:
        return
    moto_stepfunctions.uninstall()
    s3_notifications._send_event_bridge_message = _ORIGINALS["s3_eb"]
    events_models.Rule.send_to_targets = _ORIGINALS["send_to_targets"]  # type: ignore[method-assign]
    events_models.EventsBackend.put_events = _ORIGINALS["put_events"]  # type: ignore[method-assign]
    sfn_execution.BaseExecutionWorkerCommunication.terminated = _ORIGINALS["terminated"]  # type: ignore[method-assign]
    sfn_execution.Execution.start = _ORIGINALS["start"]  # type: ignore[method-assign]
    BaseResponse.call_action = _ORIGINALS["call_action"]  # type: ignore[method-assign]
    sfn_models.StepFunctionsParserBackend.start_execution = _ORIGINALS["start_execution"]  # type: ignore[method-assign]
    sfn_execution.Execution.stop = _ORIGINALS["stop"]  # type: ignore[method-assign]
    Environment.set_error = _ORIGINALS["set_error"]  # type: ignore[method-assign]
    sfn_responses.StepFunctionResponse.describe_execution = _ORIGINALS["describe_execution"]  # type: ignore[method-assign]
    sfn_responses.StepFunctionResponse.stop_execution = _ORIGINALS["stop_execution"]  # type: ignore[method-assign]
    sfn_responses.StepFunctionResponse.send_task_failure = _ORIGINALS["send_task_failure_response"]  # type: ignore[method-assign]
    S3Response.key_response = _ORIGINALS["key_response"]  # type: ignore[method-assign]
    S3Response.bucket_response = _ORIGINALS["bucket_response"]  # type: ignore[method-assign]
    StateTaskServiceCallback._evaluate_with_timeout = _ORIGINALS["callback_timeout"]  # type: ignore[method-assign]
    sfn_models.StepFunctionsParserBackend.send_task_success = _ORIGINALS["send_task_success"]  # type: ignore[method-assign]
    sfn_models.StepFunctionsParserBackend.send_task_failure = _ORIGINALS["send_task_failure"]  # type: ignore[method-assign]
    EventManager.add_event = _ORIGINALS["add_event"]  # type: ignore[method-assign]
    Program._eval_body = _ORIGINALS["program_eval_body"]  # type: ignore[method-assign]
    serverless_models.EMRServerlessBackend.list_job_runs = _ORIGINALS["serverless_list_job_runs"]  # type: ignore[method-assign]
    moto_backends.list_of_moto_modules = _ORIGINALS["list_of_moto_modules"]
    sqs_models.SQSBackend.receive_message = _ORIGINALS["receive_message"]  # type: ignore[method-assign]
    sqs_models.SQSBackend.is_message_valid_based_on_retention_period = _ORIGINALS["retained"]  # type: ignore[method-assign]
    sqs_models.SQSBackend.get_queue_attributes = _ORIGINALS["get_queue_attributes"]  # type: ignore[method-assign]
    emrserverless_urls.url_paths.pop(DASHBOARD_PATH, None)
    emrserverless_urls.url_paths.pop(ATTEMPTS_PATH, None)


def _serve_twin_model(twin: Twin, response: Any, action: str) -> Any:
    """A call to a service the twin models itself (EMR on EKS here; EMR on EC2: `_serve_emr`); None: moto's."""
    if response.service_name == "awslambda" and action == "AddPermission":
        return _add_permission(twin, response)
    if response.service_name == "ec2" and action == "DescribeSpotPriceHistory":
        return response.serialized(ActionResult({"SpotPriceHistory": _spot_price_history(response)}))
    if response.service_name == "awslambda" and action == "GetFunctionConfiguration":
        return _function_configuration(twin, response)
    if response.service_name == "awslambda" and action == "UpdateFunctionConfiguration":
        return _update_function_configuration(twin, response)
    if response.service_name == "ssm" and action == "PutParameter":
        params = iam_hooks.request_params(response, "PutParameter")
        named = validation.parameter_name_problem(str(params.get("Name", "")), twin.region, twin.account)
        if named is not None:  # moto takes any length and depth (the deploy checks the same: local/deploy.py)
            code, _, message = named.partition(": ")
            body = json.dumps({"__type": code, "message": message})
            return 400, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code}, body
        too_big = validation.parameter_value_problem(str(params.get("Value", "")), params.get("Tier"))
        if too_big is not None:  # moto stores any size
            body = json.dumps({"__type": "ValidationException", "message": too_big})
            return 400, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": "ValidationException"}, body
        return None
    if response.service_name == "emr-containers":  # EMR on EKS: REST-JSON, ids in the path (parsed by moto)
        params = {**(response.uri_match or {}), **(getattr(response, "params", None) or {})}
        result = twin.emr_containers.handle_api(action, params)
        return None if result is None else response.serialized(ActionResult(result))
    if response.service_name == "emr-serverless" and action == "GetDashboardForJobRun":  # moto has no such API
        dashboard = twin.app_uis.dashboard_for_job_run(
            str(response._get_param("applicationId")),
            str(response._get_param("jobRunId")),
            response._get_param("attempt"),
        )
        return 200, {"Content-Type": "application/json"}, json.dumps(dashboard)
    if response.service_name == "emr-serverless" and action in {"GetJobRun", "ListJobRunAttempts"}:
        return _serverless_attempts(twin, response, action)
    if response.service_name == "emr-serverless" and action == "CancelJobRun":
        # moto would only flip its record's state; the twin's model must stop the run it is driving.
        result = twin.emr_serverless.cancel_job_run(
            str(response._get_param("applicationId")), str(response._get_param("jobRunId"))
        )
        return (
            200,
            {"Content-Type": "application/json"},
            json.dumps({"applicationId": result["ApplicationId"], "jobRunId": result["JobRunId"]}),
        )
    return None


def _serverless_attempts(twin: Twin, response: Any, action: str) -> Any:
    """GetJobRun (of one attempt: moto ignores `attempt`) and ListJobRunAttempts (moto has none), from the twin's
    job runs; a job run the twin does not track is moto's to answer (GetJobRun) or unknown."""
    application_id, job_run_id = str(response._get_param("applicationId")), str(response._get_param("jobRunId"))
    tracked = twin.emr_serverless.runs.get((application_id, job_run_id))
    if tracked is None:
        if action == "GetJobRun":
            return None
        raise TwinClientError("ResourceNotFoundException", f"Job run {job_run_id} does not exist")
    if action == "GetJobRun":
        attempt = response._get_param("attempt")
        return response.serialized(ActionResult({"jobRun": tracked.attempt_record(attempt)}))
    attempts = list(reversed(tracked.attempts()))  # newest first, as ListJobRuns lists job runs
    start = int(response._get_param("nextToken") or 0)
    size = int(response._get_param("maxResults") or 50)  # botocore: ListJobRunAttemptsRequestMaxResultsInteger 1-50
    page = [_attempt_summary(application_id, run) for run in attempts[start : start + size]]
    result: dict[str, Any] = {"jobRunAttempts": page}
    if start + size < len(attempts):
        result["nextToken"] = str(start + size)
    return response.serialized(ActionResult(result))


def _attempt_summary(application_id: str, run: Any) -> dict[str, Any]:
    """botocore emr-serverless JobRunAttemptSummary of one attempt's record."""
    return {
        "applicationId": application_id,
        "id": run.id,
        "name": run.name,
        "mode": getattr(run, "mode", None) or "BATCH",
        "arn": run.arn,
        "createdBy": run.execution_role_arn,
        "jobCreatedAt": run.created_at,
        "createdAt": getattr(run, "attempt_created_at", None) or run.created_at,
        "updatedAt": getattr(run, "attempt_updated_at", None) or run.updated_at,
        "executionRole": run.execution_role_arn,
        "state": run.state,
        "stateDetails": run.state_details or "",
        "releaseLabel": run.release_label,
        "type": "Spark",
        "attempt": getattr(run, "attempt", None) or 1,
    }


SPOT_FRACTION_OF_ON_DEMAND = 0.35  # the twin's spot market: a flat 65% discount on the list price


def _spot_price_history(response: Any) -> list[dict[str, Any]]:
    """The twin's spot prices: moto answers $0.00001 for every type (and a 2006 timestamp), which would price every
    spot instance at nothing. The twin answers one current price per requested type the shipped price table knows,
    at `SPOT_FRACTION_OF_ON_DEMAND` of its on-demand price, in the requested zone; other types have no history (as a
    type not offered in a zone has none in AWS)."""
    from autopilot_common.pricing import MissingPrice, shipped_prices

    region = response.region
    zone = response._get_param("AvailabilityZone") or f"{region}a"
    history = []
    for instance_type in response._get_param("InstanceTypes", []) or []:
        try:
            on_demand = shipped_prices().instance(region, instance_type)["ec2_hour"]
        except MissingPrice:
            continue
        history.append(
            {
                "AvailabilityZone": zone,
                "InstanceType": instance_type,
                "ProductDescription": "Linux/UNIX",
                "SpotPrice": f"{on_demand * SPOT_FRACTION_OF_ON_DEMAND:.6f}",
                "Timestamp": datetime.now(UTC),
            }
        )
    return history


# What UpdateFunctionConfiguration may change on a function the twin runs (the rest of the API's members are not
# modelled: refused by name rather than ignored).
UPDATABLE_FUNCTION_MEMBERS = {"FunctionName", "Environment", "Timeout", "MemorySize"}


def _update_function_configuration(twin: Twin, response: Any) -> Any:
    """Lambda UpdateFunctionConfiguration of a function the twin runs: its environment variables (replaced whole, as
    the API does), timeout and memory. Lambda starts new execution environments with the new configuration, so the
    next invocation is a cold start (its module is imported again under the new environment)."""
    params = iam_hooks.request_params(response, "UpdateFunctionConfiguration")
    try:
        function = twin.runtime.resolve(str(params["FunctionName"]))
    except LookupError:
        return None  # not one of the twin's functions: moto's own answer
    unknown = sorted(set(params) - UPDATABLE_FUNCTION_MEMBERS)
    if unknown:
        message = f"local-twin: UpdateFunctionConfiguration models {sorted(UPDATABLE_FUNCTION_MEMBERS)}, not {unknown}"
        body = json.dumps({"Type": "User", "message": message})
        return 400, {"Content-Type": "application/json", "x-amzn-ErrorType": "InvalidParameterValueException"}, body
    if "Environment" in params:
        variables = {str(k): str(v) for k, v in (params["Environment"].get("Variables") or {}).items()}
        too_big = environment_problem(function.name, variables)
        if too_big is not None:
            body = json.dumps({"Type": "User", "message": too_big})
            return 400, {"Content-Type": "application/json", "x-amzn-ErrorType": "InvalidParameterValueException"}, body
        function.environment = variables
    if "Timeout" in params:
        function.timeout_seconds = int(params["Timeout"])
    if "MemorySize" in params:
        function.memory_mb = int(params["MemorySize"])
    function._module = None  # new execution environments: the next invocation is a cold start
    return _configuration_response(function)


def _function_configuration(twin: Twin, response: Any) -> Any:
    """Lambda GetFunctionConfiguration for a function the twin runs (moto does not hold them): the members of
    botocore's FunctionConfiguration shape the twin knows, LoggingConfig included (where its logs go)."""
    params = iam_hooks.request_params(response, "GetFunctionConfiguration")
    try:
        function = twin.runtime.resolve(str(params["FunctionName"]))
    except LookupError:
        return None  # not one of the twin's functions: moto's own answer (ResourceNotFoundException)
    return _configuration_response(function)


def _configuration_response(function: LocalFunction) -> Any:
    configuration: dict[str, Any] = {
        "FunctionName": function.name,
        "FunctionArn": function.arn,
        "Handler": function.handler,
        "Timeout": function.timeout_seconds,
        "MemorySize": function.memory_mb,
        "Version": "$LATEST",
        "State": "Active",
        "Environment": {"Variables": dict(function.environment)},
        "LoggingConfig": {"LogFormat": function.log_format, "LogGroup": function.log_group_name},
    }
    if function.role_arn:
        configuration["Role"] = function.role_arn
    return 200, {"Content-Type": "application/json"}, json.dumps(configuration)


def _add_permission(twin: Twin, response: Any) -> Any:
    """Lambda AddPermission for a function the twin runs (moto would not find it): one statement of the function's
    resource-based policy, which the twin's IAM evaluates for EventBridge (and other service) invocations."""
    params = iam_hooks.request_params(response, "AddPermission")
    try:
        function = twin.runtime.resolve(str(params["FunctionName"]))
    except LookupError:
        return None  # not one of the twin's functions: moto's own answer
    principal = str(params["Principal"])
    statement: dict[str, Any] = {
        "Sid": params["StatementId"],
        "Effect": "Allow",
        "Principal": {"Service": principal} if principal.endswith(".amazonaws.com") else {"AWS": principal},
        "Action": params["Action"],
        "Resource": function.arn,
    }
    condition: dict[str, Any] = {}
    if params.get("SourceArn"):
        condition["ArnLike"] = {"AWS:SourceArn": params["SourceArn"]}
    if params.get("SourceAccount"):
        condition["StringEquals"] = {"AWS:SourceAccount": params["SourceAccount"]}
    if condition:
        statement["Condition"] = condition
    twin.iam.add_resource_policy(function.arn, f"permission {params['StatementId']}", {"Statement": [statement]})
    return 201, {"Content-Type": "application/json"}, json.dumps({"Statement": json.dumps(statement)})


def _record_stop_execution(twin: Twin, response: Any, result: Any) -> None:
    """A StopExecution that succeeded, in CloudTrail (with who called it)."""
    try:
        status, _, body = result
        if int(status) != 200:
            return
        request = json.loads(response.body or "{}")
        answer = json.loads(body or "{}")
        twin.cloudtrail.states_call("StopExecution", request, answer, caller=_caller(twin, response))
    except Exception:  # recording must never break the call itself
        LOG.exception("recording a StopExecution CloudTrail event failed")


def _caller(twin: Twin, response: Any) -> tuple[dict[str, Any], str, str]:
    """(userIdentity, sourceIPAddress, userAgent) of the HTTP request behind a moto response object."""
    headers = response.headers or {}
    key, _ = access_key_id_from(headers)
    source_ip = getattr(getattr(response, "request", None), "remote_addr", None) or "127.0.0.1"
    return twin.cloudtrail.caller(key, source_ip, str(headers.get("User-Agent") or ""))


def _serve_emr(twin: Twin, response: Any, action: str) -> tuple[int, dict[str, str], str] | None:
    """An `emr` JSON 1.1 call served by the twin's EMR-on-EC2 model, recorded in CloudTrail; None: moto's.

    Faults and the model's errors are recorded as failed calls (errorCode/errorMessage), as CloudTrail does.
    """
    body = response.body
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    try:
        params = json.loads(body or "{}")
    except ValueError:
        raise TwinClientError("ValidationException", "The request body is not valid JSON") from None
    params = params if isinstance(params, dict) else {}
    try:
        twin.faults.check("emr", action)
        if action in APP_UI_ACTIONS:
            result: dict[str, Any] | None = twin.app_uis.handle_api(action, params)
        else:
            result = twin.emr_ec2.handle_api(action, params)
    except TwinClientError as error:
        twin.cloudtrail.emr_call(action, params, None, caller=_caller(twin, response), error=error)
        raise
    if result is None:
        return None
    twin.cloudtrail.emr_call(action, params, result, caller=_caller(twin, response))
    return 200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(result)


def _record_s3_write(twin: Twin, response: Any, request: Any, full_url: str, result: Any) -> None:
    """An S3 data event for a successful PutObject / CopyObject / CompleteMultipartUpload (S3 serves no JSON)."""
    status, response_headers, response_body = result
    if int(status) != 200:
        return
    query = parse_qs(urlparse(full_url).query, keep_blank_values=True)
    headers = request.headers
    extra: dict[str, Any] = {}
    if request.method == "PUT" and not any(name in query for name in _NOT_OBJECT_WRITES):
        operation = "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
        if operation == "CopyObject":
            extra["x-amz-copy-source"] = unquote(str(headers["x-amz-copy-source"])).lstrip("/")
    elif request.method == "POST" and "uploadId" in query:
        operation = "CompleteMultipartUpload"
        extra["uploadId"] = query["uploadId"][0]
    else:
        return
    bucket = response.bucket_name
    if not bucket or not twin.cloudtrail.logs_data_events(bucket):
        return
    key_id, auth_method = access_key_id_from(headers, query)
    source_ip = getattr(request, "remote_addr", None) or "127.0.0.1"
    body = response.body if isinstance(response.body, bytes | str) else b""
    twin.cloudtrail.s3_write(
        operation,
        bucket,
        response.parse_key_name(),
        caller=twin.cloudtrail.caller(key_id, source_ip, str(headers.get("User-Agent") or "")),
        host=str(headers.get("Host") or ""),
        auth_method=auth_method,
        extra_parameters=extra,
        response_headers=response_headers,
        bytes_in=0 if operation == "CopyObject" else len(body),
        bytes_out=len(response_body or b""),
        request_id=(response_headers or {}).get("x-amz-request-id"),
    )


def _millis(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp() * 1000)


# An event carries the execution's input and output only up to 248 KiB each; larger ones are left out, with
# `inputDetails`/`outputDetails.included` false (Step Functions developer guide, "Step Functions events":
# https://docs.aws.amazon.com/step-functions/latest/dg/cw-events.html).
EVENT_DATA_LIMIT_BYTES = 248 * 1024


def _event_data(value: str | None) -> tuple[str | None, dict[str, bool] | None]:
    """(the value as the event carries it, its `*Details`): None and None when there is no value."""
    if value is None:
        return None, None
    included = len(value.encode("utf-8")) <= EVENT_DATA_LIMIT_BYTES
    return (value if included else None), {"included": included}


def _emit_execution_status(twin: Twin, execution: Any) -> None:
    """A "Step Functions Execution Status Change" event, as AWS sends on every status change."""
    status = execution.exec_status.value if execution.exec_status else "RUNNING"
    output = getattr(execution, "output", None)
    given = execution.execution_input if isinstance(execution.execution_input, str) else None
    event_input, input_details = _event_data(given)
    event_output, output_details = _event_data(
        json.dumps(output) if output is not None and not isinstance(output, str) else output
    )
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
                "input": event_input,
                "output": event_output,
                "inputDetails": input_details,
                "outputDetails": output_details,
                "error": getattr(execution, "error", None),
                "cause": getattr(execution, "cause", None),
            },
        }
    )
