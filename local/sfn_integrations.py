"""Step Functions integrations moto's ASL interpreter lacks, plugged into it: the common part and the dispatcher
(docs/twin/step-functions-integrations.md)."""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import boto3
from botocore.config import Config
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import ClientError
from moto.core.models import botocore_stubber
from moto.settings import moto_server_port
from moto.stepfunctions.parser.api import (
    HistoryEventExecutionDataDetails,
    HistoryEventType,
    TaskFailedEventDetails,
    TaskSubmittedEventDetails,
)
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.error_name import ErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import StatesErrorNameType
from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import iteration_worker
from moto.stepfunctions.parser.asl.component.state.exec.state_parallel import branches_decl
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils, state_task_factory
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import ResourceCondition
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service import StateTaskService
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
    StateTaskServiceAwsSdk,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
    StateTaskServiceCallback,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_lambda import (
    StateTaskServiceLambda,
)
from moto.stepfunctions.parser.asl.component.state.fail import state_fail
from moto.stepfunctions.parser.asl.eval.environment import Environment
from moto.stepfunctions.parser.asl.eval.event import event_detail
from moto.stepfunctions.parser.asl.utils import boto_client as moto_boto_client
from moto.stepfunctions.parser.asl.utils.encoding import to_json_str

from local.cloudtrail import CloudTrail
from local.emr_containers import TERMINAL as CONTAINERS_TERMINAL
from local.emr_containers import EmrContainersTwin, camel, pascal
from local.emr_ec2 import EmrEc2Twin
from local.emr_serverless import TERMINAL, EmrServerlessTwin
from local.faults import TwinClientError
from local.iam.enforcer import SDK_SERVICE_NAMES, AccessDenied, IamEnforcer
from local.iam.hooks import TwinLookups
from local.iam.operations import Authorization, rule_arn
from local.iam.policy import Caller
from local.lambda_runtime import FunctionError, LambdaRuntime
from local.validation import validation_errors, validation_message

_ORIGINAL_FACTORY: Any = getattr(state_task_factory, "state_task_service_for")  # noqa: B009 - not re-exported
_ORIGINAL_BOTO_CLIENT_FOR: Any = moto_boto_client.boto_client_for


def _event_details(**details: Any) -> Any:
    """moto's EventDetails TypedDict lists every history detail as required; AWS sets one at a time."""
    return event_detail.EventDetails(**details)  # type: ignore[typeddict-item]


_ORIGINALS: dict[str, Any] = {}
Params = dict[str, Any]  # a task's normalised parameters, as moto's interpreter passes them


class _RethrownErrorName(ErrorName):
    """An error name re-thrown as is, `States.*` included, as AWS does (moto's CustomErrorName refuses them)."""


# Modules that re-throw an error by name: a Fail state's ErrorPath, and a Map iteration's or Parallel branch's
# failure surfacing in the parent state (AWS keeps e.g. States.TaskFailed and its cause; moto raises ValueError).
_RETHROWING_MODULES = (state_fail, iteration_worker, branches_decl)


# The base exception of each service in the SDK behind Step Functions' optimized integrations: an error code the
# service's model does not declare surfaces under it (e.g. throttling and AccessDenied on EMR raise
# `EMR.AmazonElasticMapReduceException`, on Lambda `Lambda.AWSLambdaException`, with the code in the cause).
BASE_EXCEPTIONS = {
    "EMR": ("emr", "AmazonElasticMapReduceException"),
    "EMRServerless": ("emr-serverless", "AWSEMRServerlessException"),
    "EMRContainers": ("emr-containers", "AmazonEMRContainersException"),
    "Lambda": ("lambda", "AWSLambdaException"),
}


@functools.cache
def _modeled_errors(service: str) -> frozenset[str]:
    import botocore.session

    model = botocore.session.get_session().get_service_model(service)
    return frozenset(name for name in model.shape_names if model.shape_for(name).metadata.get("exception"))


def integration_error_name(prefix: str, code: str) -> str:
    """The error an optimized integration raises for a service error `code`: `<Prefix>.<Code>` when the service's
    model declares that exception, else `<Prefix>.<the SDK's base exception>`."""
    service, base = BASE_EXCEPTIONS[prefix]
    return f"{prefix}.{code}" if code in _modeled_errors(service) else f"{prefix}.{base}"


def denied_error(denied: AccessDenied) -> TwinClientError:
    """An IAM refusal as the service error the integration reports."""
    error = TwinClientError(denied.code, denied.message)
    error.status = denied.status
    return error


def integration_caller(env: Environment) -> Caller | None:
    """The state machine's role session that an execution's integrations act as (None: no IAM installed)."""
    trail, iam = _TwinService.trail, _TwinService.iam
    if trail is None or iam is None:
        return None
    role_arn = env.aws_execution_details.role_arn
    if not iam.is_app_role(role_arn):
        return None  # a role the twin's IAM does not hold is not an app principal (e.g. a test's made-up role)
    execution_arn = env.states.context_object.context_object_data["Execution"]["Id"]
    principal = trail.principal_of(trail.state_machine_access_key(role_arn, execution_arn))
    return iam.caller_for_session(principal.arn if principal else role_arn, role_arn)


class _TwinService(StateTaskServiceCallback):
    """An optimized integration backed by a twin model: service errors named as the integration names them
    (`integration_error_name`), calls authorized as the state machine's role, `.sync` waiting."""

    ERROR_PREFIX = ""  # e.g. "EMR": a TwinClientError becomes the task error "EMR.<Code or base exception>"
    SERVICE = ""  # the botocore service name of the calls (the IAM operation table's key)
    SYNC_RULES: dict[str, str] = {}  # .sync action -> the managed EventBridge rule Step Functions keeps for it
    trail: CloudTrail | None = None  # set by install(): where the calls are recorded
    iam: IamEnforcer | None = None  # set by install(): who may do what
    lookups: TwinLookups | None = None
    ACTIONS: frozenset[str] = frozenset()
    SYNC_ACTIONS: frozenset[str] = frozenset()

    def _authorize(self, env: Environment, operation: str, params: dict[str, Any]) -> None:
        """Authorize one API call the integration makes, as the state machine's role (AccessDenied -> the error
        the integration raises, its cause in AWS's wording), then validate it against the service's model as the
        service does (ValidationException)."""
        caller = integration_caller(env)
        if caller is not None and self.iam is not None:
            try:
                self.iam.check(caller, self.SERVICE, operation, params, self.lookups)
            except AccessDenied as denied:
                raise denied_error(denied) from None
        errors = validation_errors(self.SERVICE, operation, params)
        if errors:
            raise TwinClientError("ValidationException", validation_message(errors))

    def _authorize_sync_rule(self, env: Environment) -> None:
        """A `.sync` task needs its managed rule (events:PutTargets/PutRule/DescribeRule), as the developer
        guide's policy for each `.sync` integration lists."""
        rule = self.SYNC_RULES.get(self.resource.api_action)
        caller = integration_caller(env)
        if rule is None or caller is None or self.iam is None or self.lookups is None:
            return
        for action in ("events:PutTargets", "events:PutRule", "events:DescribeRule"):
            try:
                self.iam.authorize(caller, Authorization(action, rule_arn(self.lookups, rule)), service="events")
            except AccessDenied as denied:
                raise denied_error(denied) from None

    def __init__(self) -> None:
        super().__init__(supported_integration_patterns={cast(ResourceCondition, ResourceCondition.Sync)})

    def _validate_service_integration_is_supported(self) -> None:
        action, arn = self.resource.api_action, self.resource.resource_arn
        if action not in self.ACTIONS:
            raise ValueError(
                f"The resource provided {arn} not recognized: the twin models "
                f"{self.resource.service_name} {sorted(self.ACTIONS)}"
            )
        if self.resource.condition is not None and action not in self.SYNC_ACTIONS:
            raise ValueError(f"The resource provided {arn} not recognized: {action} has no .{self.resource.condition}")

    def _from_error(self, env: Environment, ex: Exception) -> FailureEvent:
        if isinstance(ex, TwinClientError):
            name = integration_error_name(self.ERROR_PREFIX, ex.code)
            return self._task_failed(env, CustomErrorName(name), name, self._cause(ex))
        return super()._from_error(env=env, ex=ex)

    def _cause(self, error: TwinClientError) -> str:
        """The cause as the integration reports a service error: the message, then the SDK's details."""
        sdk = SDK_SERVICE_NAMES.get(self.SERVICE, self.SERVICE)
        return (
            f"{error.message} (Service: {sdk}; Status Code: {error.status}; Error Code: {error.code}; "
            f"Request ID: {uuid.uuid4()}; Proxy: null)"
        )

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

    def _states_task_failed(self, env: Environment, cause: Any) -> FailureEventException:
        """States.TaskFailed with `cause` as JSON: how a `.sync` task fails when its job ends badly."""
        task_failed = StatesErrorNameType.StatesTaskFailed
        error_name, text = StatesErrorName(typ=task_failed), json.dumps(cause, default=str)
        return FailureEventException(self._task_failed(env, error_name, task_failed.to_name(), text))

    def _job_run_resolver(
        self,
        env: Environment,
        wait: Callable[[], bool],
        describe: Callable[[], dict[str, Any]],
        *,
        succeeded: str,
        terminal: set[str] | frozenset[str],
    ) -> Callable[[], Any]:
        """A .sync resolver for a job run: None while it runs, its description once `succeeded`, else TaskFailed."""

        def resolve() -> Any:
            if not wait():
                return None
            job_run = describe()
            if job_run["State"] == succeeded:
                return job_run
            assert job_run["State"] in terminal
            raise self._states_task_failed(env, job_run)

        return resolve

    def _build_sync_resolver(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> Callable[[], Any]:
        raise NotImplementedError  # each service: a callable returning the .sync result, or None while it waits

    def _eval_integration_pattern(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> None:
        self._wait_sync(env, resource_runtime_part, normalised_parameters, state_credentials)

    def _wait_sync(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> bool:
        """The `.sync` part alone: its result on the stack (True), or False once the execution is over.

        moto's own version dereferences a callback endpoint that only exists for .waitForTaskToken
        integrations (AttributeError on None for .sync-only services).
        """
        self._authorize_sync_rule(env)
        resolve = self._build_sync_resolver(env, resource_runtime_part, normalised_parameters, state_credentials)
        while env.is_running():  # false once the task's timeout frame ends or the execution stops / times out
            result = resolve()
            if result is not None:
                env.stack.append(result)
                return True
        return False

    def _after_eval_execution(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> None:
        args = (env, resource_runtime_part, normalised_parameters, state_credentials)
        if self.resource.condition is None:  # request-response
            StateTaskService._after_eval_execution(self, *args)  # TaskSucceeded
            return
        submitted = env.stack[-1]
        details = TaskSubmittedEventDetails(
            resource=self._get_sfn_resource(),
            resourceType=self._get_sfn_resource_type(),
            output=to_json_str(submitted),
            outputDetails=HistoryEventExecutionDataDetails(truncated=False),
        )
        env.event_manager.add_event(
            context=env.event_history_context,
            event_type=HistoryEventType.TaskSubmitted,
            event_details=_event_details(taskSubmittedEventDetails=details),
        )
        if self._wait_sync(*args):
            StateTaskService._after_eval_execution(self, *args)  # TaskSucceeded with the .sync result
        else:
            # Aborted or timed out while waiting: no TaskSucceeded; the job/cluster is left as it is (as on AWS).
            env.stack.append(submitted)


class TwinEmrServerlessService(_TwinService):
    """The optimized EMR Serverless integration, backed by the twin's job-run model."""

    model: EmrServerlessTwin  # set by install()
    ERROR_PREFIX = "EMRServerless"
    SERVICE = "emr-serverless"
    SYNC_RULES = {"startJobRun": "StepFunctionsGetEventsForEMRServerlessJobRule"}
    ACTIONS = frozenset({"startJobRun", "cancelJobRun", "startApplication", "stopApplication"})
    SYNC_ACTIONS = frozenset({"startJobRun"})

    def _eval_service_task(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> None:
        action = self.resource.api_action
        params = normalised_parameters
        self._authorize(env, action[0].upper() + action[1:], camel(params))
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

    def _build_sync_resolver(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> Callable[[], Any]:
        started = env.stack.pop()
        app_id, run_id = started["ApplicationId"], started["JobRunId"]

        def describe() -> dict[str, Any]:  # Step Functions reads the ended job run with GetJobRun, as the role
            self._authorize(env, "GetJobRun", {"applicationId": app_id, "jobRunId": run_id})
            return self.model.describe(app_id, run_id)

        return self._job_run_resolver(
            env, lambda: self.model.wait(app_id, run_id, timeout=0.2), describe, succeeded="SUCCESS", terminal=TERMINAL
        )


class TwinEmrContainersService(_TwinService):
    """The optimized EMR on EKS integration (`emr-containers:*`), backed by the twin's job-run model."""

    model: EmrContainersTwin  # set by install()
    ERROR_PREFIX = "EMRContainers"
    SERVICE = "emr-containers"
    ACTIONS = frozenset({"startJobRun", "cancelJobRun", "createVirtualCluster", "deleteVirtualCluster"})
    SYNC_ACTIONS = frozenset({"startJobRun", "deleteVirtualCluster"})

    def _eval_service_task(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> None:
        action, params, model = self.resource.api_action, normalised_parameters, self.model
        request = camel(params)
        if action in ("cancelJobRun", "deleteVirtualCluster"):
            request = {"virtualClusterId": request.get("virtualClusterId"), "id": request.get("id")}
        self._authorize(env, action[0].upper() + action[1:], request)
        try:
            if action == "startJobRun":
                result = model.start_job_run(params)
            elif action == "cancelJobRun":
                result = model.cancel_job_run(params["VirtualClusterId"], params["Id"])
            elif action == "createVirtualCluster":
                result = model.create_virtual_cluster(params)
            else:
                result = model.delete_virtual_cluster(params["Id"])
        except KeyError as missing:
            raise TwinClientError("ValidationException", f"The field {missing.args[0]} is required") from None
        env.stack.append(pascal(result))

    def _build_sync_resolver(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> Callable[[], Any]:
        started = env.stack.pop()
        if self.resource.api_action == "deleteVirtualCluster":
            return lambda: started  # the twin terminates a virtual cluster at once
        vc_id, run_id = started["VirtualClusterId"], started["Id"]

        def describe() -> dict[str, Any]:  # Step Functions reads the ended job run with DescribeJobRun, as the role
            self._authorize(env, "DescribeJobRun", {"virtualClusterId": vc_id, "id": run_id})
            described: dict[str, Any] = pascal(self.model.describe_job_run(vc_id, run_id))
            return described

        return self._job_run_resolver(
            env,
            lambda: self.model.wait(vc_id, run_id, timeout=0.2),
            describe,
            succeeded="COMPLETED",
            terminal=CONTAINERS_TERMINAL,
        )


def uninstall() -> None:
    """Put moto's interpreter back as it was."""
    setattr(state_task_factory, "state_task_service_for", _ORIGINAL_FACTORY)  # noqa: B010 - monkeypatch
    for module in _RETHROWING_MODULES:
        setattr(module, "CustomErrorName", CustomErrorName)  # noqa: B010 - monkeypatch
    if "invoke" in _ORIGINALS:
        setattr(lambda_eval_utils, "_invoke_lambda_function", _ORIGINALS["invoke"])  # noqa: B010 - monkeypatch
    if "lambda_cause" in _ORIGINALS:
        setattr(StateTaskServiceLambda, "_error_cause_from_client_error", staticmethod(_ORIGINALS["lambda_cause"]))  # noqa: B010
    if "aws_sdk" in _ORIGINALS:
        setattr(StateTaskServiceAwsSdk, "_eval_service_task", _ORIGINALS["aws_sdk"])  # noqa: B010 - monkeypatch
    for module in _boto_client_modules(_twin_boto_client_for):
        setattr(module, "boto_client_for", _ORIGINAL_BOTO_CLIENT_FOR)  # noqa: B010 - monkeypatch
    _TwinService.trail = None
    _TwinService.iam = _TwinService.lookups = None
    setattr(retrier_decl, "time", time)  # noqa: B010 - monkeypatch


def _calling_environment() -> Environment | None:
    """The interpreter Environment of the state evaluating up the call stack (moto passes it as `env`)."""
    frame = sys._getframe(2)
    for _ in range(40):
        if frame is None:
            return None
        env = frame.f_locals.get("env")
        if isinstance(env, Environment):
            return env
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _twin_boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
    """moto's `boto_client_for`, signing as the execution's state machine role session (moto: a fixed "ak").

    The client is shared by every execution (`_integration_client`); what it signs with is the access key this call
    leaves on the calling thread: the thread running the execution's state, which makes its calls right after."""
    access_key = "ak"
    env = _calling_environment()
    if _TwinService.trail is not None and env is not None:
        execution_arn = env.states.context_object.context_object_data["Execution"]["Id"]
        access_key = _TwinService.trail.state_machine_access_key(env.aws_execution_details.role_arn, execution_arn)
    _SIGNING.access_key = access_key
    endpoint = None if botocore_stubber.enabled else f"http://localhost:{moto_server_port()}"
    return _integration_client(region, service, endpoint)


_SESSION_LOCK = threading.Lock()
_SIGNING = threading.local()  # the access key the integration calls made on this thread sign with


class _StateCredentials(Credentials):  # type: ignore[misc]
    """The credentials of the execution whose state runs on the calling thread (`_twin_boto_client_for`): botocore
    freezes a client's credentials at every request it signs (RequestSigner.get_auth_instance)."""

    def __init__(self) -> None:
        super().__init__("ak", "sk")

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        return ReadOnlyCredentials(getattr(_SIGNING, "access_key", "ak"), "sk", None)


@functools.cache
def _integration_session() -> boto3.session.Session:
    """The integrations' own session: its loader keeps the service models it read (boto3's default session is reset
    around every function invocation, `lambda_runtime`, so clients made from it read them from disk again)."""
    return boto3.session.Session()


_CLIENTS: dict[tuple[str, str, str | None], Any] = {}


def _integration_client(region: str, service: str, endpoint: str | None) -> Any:
    """The integrations' client of `service`, made once and shared by every execution (boto3 clients are thread-safe;
    making one costs milliseconds of CPU, which each execution of a burst paid for each service it called), made
    under the session's lock so a burst's first executions do not each make one. It signs each request as the
    execution on the calling thread (`_StateCredentials`)."""
    key = (region, service, endpoint)
    client = _CLIENTS.get(key)
    if client is None:
        with _SESSION_LOCK:  # a boto3 session is not thread-safe; its clients are
            client = _CLIENTS.get(key)
            if client is None:
                client = _CLIENTS[key] = _new_client(region, service, endpoint)
    return client


def _new_client(region: str, service: str, endpoint: str | None) -> Any:
    kwargs: dict[str, Any] = {} if endpoint is None else {"endpoint_url": endpoint}
    client = _integration_session().client(
        service_name=service,
        region_name=region,
        aws_access_key_id="ak",
        aws_secret_access_key="sk",
        config=Config(
            parameter_validation=True,  # AWS validates an aws-sdk integration's parameters against the API model
            retries={"max_attempts": 0, "total_max_attempts": 1},
            connect_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
            read_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
        ),
        **kwargs,
    )
    client._request_signer._credentials = _StateCredentials()
    return client


def _boto_client_modules(current: Any) -> list[Any]:
    """moto's interpreter modules that imported `boto_client_for` (by name) and still hold `current`."""
    return [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("moto.stepfunctions.parser.")
        and name != moto_boto_client.__name__
        and getattr(module, "boto_client_for", None) is current
    ]


def install(
    *,
    emr_serverless: EmrServerlessTwin,
    runtime: LambdaRuntime,
    emr_ec2: EmrEc2Twin | None = None,
    emr_containers: EmrContainersTwin | None = None,
    trail: CloudTrail | None = None,
    iam: IamEnforcer | None = None,
    lookups: TwinLookups | None = None,
    time_scale: float = 1.0,
) -> None:
    """Plug the twin's integrations into moto's interpreter (idempotent)."""
    from local.emr_ec2.sfn import ScaledSleep, TwinEmrService  # it builds on _TwinService: imported once this is

    TwinEmrService.time_scale = time_scale
    # A Retry's wait (IntervalSeconds x BackoffRate^n, capped, jittered) runs on the twin's clock too.
    setattr(retrier_decl, "time", ScaledSleep())  # noqa: B010 - monkeypatch
    _TwinService.trail = trail
    _TwinService.iam, _TwinService.lookups = iam, lookups
    if trail is not None:  # moto's own integrations sign as the state machine's role session
        for module in _boto_client_modules(_ORIGINAL_BOTO_CLIENT_FOR):
            setattr(module, "boto_client_for", _twin_boto_client_for)  # noqa: B010 - monkeypatch
    _install_services(emr_serverless, emr_ec2, emr_containers)
    # AWS lets a Fail state re-throw a caught `States.*` error through ErrorPath, and a failed Map iteration or
    # Parallel branch fail its parent with the branch's error (e.g. States.TaskFailed); moto refuses the names.
    for module in _RETHROWING_MODULES:
        setattr(module, "CustomErrorName", _RethrownErrorName)  # noqa: B010 - monkeypatch
    _install_lambda(runtime)
    _install_aws_sdk()


def _install_services(
    emr_serverless: EmrServerlessTwin, emr_ec2: EmrEc2Twin | None, emr_containers: EmrContainersTwin | None
) -> None:
    from local.emr_ec2.sfn import TwinEmrService

    TwinEmrServerlessService.model = emr_serverless
    if emr_ec2 is not None:
        TwinEmrService.model = emr_ec2
    if emr_containers is not None:
        TwinEmrContainersService.model = emr_containers

    def service_for(service_name: str) -> Any:
        if service_name == "emr-serverless":
            return TwinEmrServerlessService()
        if service_name == "elasticmapreduce" and emr_ec2 is not None:
            return TwinEmrService()
        if service_name == "emr-containers" and emr_containers is not None:
            return TwinEmrContainersService()
        return _ORIGINAL_FACTORY(service_name=service_name)

    setattr(state_task_factory, "state_task_service_for", service_for)  # noqa: B010 - monkeypatch


# What the Lambda runtime reports for an invocation that did not end in the handler (crash, timeout, out of memory).
LAMBDA_UNKNOWN_ERRORS = frozenset({"Runtime.ExitError", "Sandbox.Timedout", "Runtime.OutOfMemory"})


def _install_lambda(runtime: LambdaRuntime) -> None:
    def invoke(parameters: dict[str, Any], region: str, state_credentials: Any) -> dict[str, Any]:
        _authorize_invoke(parameters)
        payload = parameters.get("Payload")
        event = json.loads(payload) if isinstance(payload, str | bytes) else payload
        try:
            result = runtime.invoke(parameters["FunctionName"], event)
        except FunctionError as exc:
            payload = exc.payload
            if exc.error_type in LAMBDA_UNKNOWN_ERRORS:
                # "Unhandled errors in Lambda are reported as Lambda.Unknown in the error output. These include
                # out-of-memory errors and function timeouts." (Step Functions, "Handle Lambda service exceptions")
                payload = {**payload, "errorType": "Lambda.Unknown"}
            return {
                "StatusCode": 200,
                "FunctionError": "Unhandled",
                "Payload": payload,
                "ExecutedVersion": "$LATEST",
            }
        return {"StatusCode": 200, "Payload": result, "ExecutedVersion": "$LATEST"}

    _ORIGINALS.setdefault("invoke", lambda_eval_utils._invoke_lambda_function)
    setattr(lambda_eval_utils, "_invoke_lambda_function", invoke)  # noqa: B010 - monkeypatch
    original_cause = _ORIGINALS.setdefault("lambda_cause", StateTaskServiceLambda._error_cause_from_client_error)

    def error_cause(client_error: ClientError) -> tuple[str, str]:
        # moto names every client error Lambda.<Code>; AWS only the ones Lambda's model declares.
        error, cause = original_cause(client_error)
        return integration_error_name("Lambda", client_error.response["Error"]["Code"]), cause

    setattr(StateTaskServiceLambda, "_error_cause_from_client_error", staticmethod(error_cause))  # noqa: B010


def _authorize_invoke(parameters: dict[str, Any]) -> None:
    """lambda:InvokeFunction as the state machine's role; a refusal is the ClientError the SDK would raise."""
    env = _calling_environment()
    caller = integration_caller(env) if env is not None else None
    iam, lookups = _TwinService.iam, _TwinService.lookups
    if caller is None or iam is None:
        return
    try:
        iam.check(caller, "lambda", "Invoke", parameters, lookups)
    except AccessDenied as denied:
        response: Any = {
            "Error": {"Code": denied.code, "Message": denied.message},
            "ResponseMetadata": {"HTTPStatusCode": denied.status, "RequestId": denied.request_id},
        }
        raise ClientError(response, "Invoke") from None


def _install_aws_sdk() -> None:
    # aws-sdk:s3:getObject returns `Body` as a string in Step Functions; moto leaves botocore's stream.
    original = _ORIGINALS.setdefault("aws_sdk", StateTaskServiceAwsSdk._eval_service_task)

    def eval_aws_sdk(self: Any, env: Environment, *args: Any, **kwargs: Any) -> None:
        original(self, env, *args, **kwargs)
        result = env.stack[-1] if env.stack else None
        if isinstance(result, dict) and hasattr(result.get("Body"), "read"):
            result["Body"] = result["Body"].read().decode("utf-8")

    setattr(StateTaskServiceAwsSdk, "_eval_service_task", eval_aws_sdk)  # noqa: B010 - monkeypatch
