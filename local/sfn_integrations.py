"""Step Functions integrations moto's ASL interpreter lacks, plugged into it.

- `emr-serverless:startJobRun` (request-response and `.sync`), `cancelJobRun`, `startApplication`,
  `stopApplication`: AWS request/response shapes; errors `EMRServerless.<Code>`; a `.sync` job run
  that ends FAILED/CANCELLED fails the task with `States.TaskFailed` and the job run as the cause.
- `lambda:invoke` and Lambda task ARNs: run the function in-process (moto would need Docker).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.error_name import ErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import StatesErrorNameType
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils, state_task_factory
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import ResourceCondition
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
    StateTaskServiceAwsSdk,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
    StateTaskServiceCallback,
)
from moto.stepfunctions.parser.asl.component.state.fail import state_fail
from moto.stepfunctions.parser.asl.eval.environment import Environment
from moto.stepfunctions.parser.asl.eval.event import event_detail

from local.emr_serverless import TERMINAL, EmrServerlessTwin
from local.faults import TwinClientError
from local.lambda_runtime import FunctionError, LambdaRuntime

_ORIGINAL_FACTORY: Any = getattr(state_task_factory, "state_task_service_for")  # noqa: B009 - not re-exported


def _event_details(**details: Any) -> Any:
    """moto's EventDetails TypedDict lists every history detail as required; AWS sets one at a time."""
    return event_detail.EventDetails(**details)  # type: ignore[typeddict-item]


_ORIGINALS: dict[str, Any] = {}


class _RethrownErrorName(ErrorName):
    """A Fail state's error name, allowed to be a re-thrown `States.*` name as in AWS."""


class TwinEmrServerlessService(StateTaskServiceCallback):
    """The optimized EMR Serverless integration, backed by the twin's job-run model."""

    model: EmrServerlessTwin  # set by install()

    def __init__(self) -> None:
        super().__init__(supported_integration_patterns={cast(ResourceCondition, ResourceCondition.Sync)})

    ACTIONS = {"startJobRun", "cancelJobRun", "startApplication", "stopApplication"}

    def _validate_service_integration_is_supported(self) -> None:
        if self.resource.api_action not in self.ACTIONS:
            raise ValueError(
                f"The resource provided {self.resource.resource_arn} not recognized: the twin models "
                f"emr-serverless {sorted(self.ACTIONS)}"
            )

    def _from_error(self, env: Environment, ex: Exception) -> FailureEvent:
        if isinstance(ex, TwinClientError):
            name = f"EMRServerless.{ex.code}"
            return self._task_failed(env, CustomErrorName(name), name, ex.message)
        return super()._from_error(env=env, ex=ex)

    def _task_failed(self, env: Environment, error_name: ErrorName, error: str, cause: str) -> FailureEvent:
        """A TaskFailed history event for this task's resource."""
        details = TaskFailedEventDetails(
            error=error, cause=cause, resource=self._get_sfn_resource(), resourceType=self._get_sfn_resource_type()
        )
        return FailureEvent(
            env=env,
            error_name=error_name,
            event_type=HistoryEventType.TaskFailed,
            event_details=_event_details(taskFailedEventDetails=details),
        )

    def _eval_service_task(
        self,
        env: Environment,
        resource_runtime_part: Any,
        normalised_parameters: dict[str, Any],
        state_credentials: Any,
    ) -> None:
        action = self.resource.api_action
        params = normalised_parameters
        if action == "startJobRun":
            env.stack.append(self.model.start_job_run(params))
        elif action == "cancelJobRun":
            env.stack.append(self.model.cancel_job_run(params["ApplicationId"], params["JobRunId"]))
        elif action in {"startApplication", "stopApplication"}:
            self.model.faults.check("emr-serverless", action[0].upper() + action[1:])
            app = self.model.backend.get_application(params["ApplicationId"])
            app.state = "STARTED" if action == "startApplication" else "STOPPED"
            env.stack.append({})
        else:
            raise TwinClientError("ValidationException", f"emr-serverless:{action} is not modelled by the twin")

    def _eval_integration_pattern(
        self,
        env: Environment,
        resource_runtime_part: Any,
        normalised_parameters: dict[str, Any],
        state_credentials: Any,
    ) -> None:
        # moto's own version dereferences a callback endpoint that only exists for .waitForTaskToken
        # integrations (AttributeError on None for .sync-only services); this is the .sync part alone.
        resolve = self._build_sync_resolver(env, resource_runtime_part, normalised_parameters, state_credentials)
        while env.is_running():  # false once the task's timeout frame ends or the execution stops
            result = resolve()
            if result is not None:
                env.stack.append(result)
                return

    def _build_sync_resolver(
        self,
        env: Environment,
        resource_runtime_part: Any,
        normalised_parameters: dict[str, Any],
        state_credentials: Any,
    ) -> Callable[[], Any]:
        started = env.stack.pop()
        app_id, run_id = started["ApplicationId"], started["JobRunId"]

        def resolve() -> Any:
            if not self.model.wait(app_id, run_id, timeout=0.2):
                return None
            job_run = self.model.describe(app_id, run_id)
            if job_run["State"] == "SUCCESS":
                return job_run
            assert job_run["State"] in TERMINAL
            task_failed = StatesErrorNameType.StatesTaskFailed
            raise FailureEventException(
                self._task_failed(
                    env, StatesErrorName(typ=task_failed), task_failed.to_name(), json.dumps(job_run, default=str)
                )
            )

        return resolve


def uninstall() -> None:
    """Put moto's interpreter back as it was."""
    setattr(state_task_factory, "state_task_service_for", _ORIGINAL_FACTORY)  # noqa: B010 - monkeypatch
    setattr(state_fail, "CustomErrorName", CustomErrorName)  # noqa: B010 - monkeypatch
    if "invoke" in _ORIGINALS:
        setattr(lambda_eval_utils, "_invoke_lambda_function", _ORIGINALS["invoke"])  # noqa: B010 - monkeypatch
    if "aws_sdk" in _ORIGINALS:
        setattr(StateTaskServiceAwsSdk, "_eval_service_task", _ORIGINALS["aws_sdk"])  # noqa: B010 - monkeypatch


def install(*, emr_serverless: EmrServerlessTwin, runtime: LambdaRuntime) -> None:
    """Plug the twin's integrations into moto's interpreter (idempotent)."""
    TwinEmrServerlessService.model = emr_serverless

    def service_for(service_name: str) -> Any:
        if service_name == "emr-serverless":
            return TwinEmrServerlessService()
        return _ORIGINAL_FACTORY(service_name=service_name)

    setattr(state_task_factory, "state_task_service_for", service_for)  # noqa: B010 - monkeypatch
    # AWS lets a Fail state re-throw a caught `States.*` error through ErrorPath; moto refuses the name.
    setattr(state_fail, "CustomErrorName", _RethrownErrorName)  # noqa: B010 - monkeypatch

    def invoke(parameters: dict[str, Any], region: str, state_credentials: Any) -> dict[str, Any]:
        payload = parameters.get("Payload")
        event = json.loads(payload) if isinstance(payload, str | bytes) else payload
        try:
            result = runtime.invoke(parameters["FunctionName"], event)
        except FunctionError as exc:
            return {
                "StatusCode": 200,
                "FunctionError": "Unhandled",
                "Payload": exc.payload,
                "ExecutedVersion": "$LATEST",
            }
        return {"StatusCode": 200, "Payload": result, "ExecutedVersion": "$LATEST"}

    _ORIGINALS.setdefault("invoke", lambda_eval_utils._invoke_lambda_function)
    setattr(lambda_eval_utils, "_invoke_lambda_function", invoke)  # noqa: B010 - monkeypatch

    # aws-sdk:s3:getObject returns `Body` as a string in Step Functions; moto leaves botocore's stream.
    original = _ORIGINALS.setdefault("aws_sdk", StateTaskServiceAwsSdk._eval_service_task)

    def eval_aws_sdk(self: Any, env: Environment, *args: Any, **kwargs: Any) -> None:
        original(self, env, *args, **kwargs)
        result = env.stack[-1] if env.stack else None
        if isinstance(result, dict) and hasattr(result.get("Body"), "read"):
            result["Body"] = result["Body"].read().decode("utf-8")

    setattr(StateTaskServiceAwsSdk, "_eval_service_task", eval_aws_sdk)  # noqa: B010 - monkeypatch
