"""Run the app's Lambda functions in-process, from their asset folders, as Lambda would.

Each function gets its own environment variables (from the template), its layers' `python/`
folders and its code folder on `sys.path`, a Lambda-like context, and AWS clients pointed at the
twin (`AWS_ENDPOINT_URL`) that sign as the function's execution role session
(`assumed-role/<role name>/<function name>`, via the runtime's `access_key_for`; the twin's CloudTrail
records them so). Invocations are serialised by one lock because `os.environ` and
`sys.path` are process-wide: the twin trades Lambda's concurrency for exact environments.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from local.faults import FunctionCrash
from local.function_logs import (
    Capture,
    capturing,
    default_log_group,
    end_lines,
    error_record,
    new_log_stream,
    start_line,
)

LOG = logging.getLogger("twin.lambda")
_LOCK = threading.RLock()


# The function an invocation on this thread runs, and its runtime's after-call hook.
_INVOKING = threading.local()


def _install_after_call_hook() -> None:
    """Wrap botocore's `_make_api_call` once: after a call made by a function's invocation returns (it took effect),
    the runtime's hooks see it (fault injection may crash the invocation there). Calls outside invocations (the
    twin's own clients, tests) are not seen."""
    from botocore.client import BaseClient

    if getattr(BaseClient._make_api_call, "_twin_after_call", False):
        return
    original = BaseClient._make_api_call

    def make_api_call(self: Any, operation_name: str, api_params: Any) -> Any:
        result = original(self, operation_name, api_params)
        function, hook = getattr(_INVOKING, "function", None), getattr(_INVOKING, "hook", None)
        if function is not None and hook is not None:
            hook(function, self.meta.service_model.service_name, operation_name)
        return result

    make_api_call._twin_after_call = True  # type: ignore[attr-defined]
    BaseClient._make_api_call = make_api_call


class FunctionNotFound(LookupError):
    """No function of that name or ARN is deployed in the twin."""


class FunctionError(RuntimeError):
    """The handler raised: `error_type` and `payload` are what Lambda reports (FunctionError=Unhandled)."""

    def __init__(self, error_type: str, message: str, trace: list[str]) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.payload = {"errorMessage": message, "errorType": error_type, "stackTrace": trace}


@dataclass
class LambdaContext:
    """The attributes of a Python Lambda context that handlers and powertools read."""

    function_name: str
    memory_limit_in_mb: int
    timeout_seconds: int
    invoked_function_arn: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    _deadline: float = field(default=0.0, repr=False)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class Invocation:
    """One invocation's record (the twin counts these per run)."""

    function_name: str
    request_id: str
    started: float
    duration: float
    error: str | None


# Lambda's quota: "Function environment variables: 4 KB, for all environment variables associated with the function,
# in aggregate" (Lambda Developer Guide, Lambda quotas). Lambda measures the variables as the JSON it reports in the
# refusal ("... exceeded the 4KB limit. String measured: {...}").
ENVIRONMENT_LIMIT_BYTES = 4096


def environment_problem(name: str, variables: dict[str, str]) -> str | None:
    """Lambda's refusal of a function whose environment exceeds 4 KB (CreateFunction, UpdateFunctionConfiguration,
    and so CloudFormation), or None. Names the largest variables, so the fix is plain."""
    measured = json.dumps(variables, separators=(",", ":"), ensure_ascii=False)
    size = len(measured.encode("utf-8"))
    if size <= ENVIRONMENT_LIMIT_BYTES:
        return None
    largest = ", ".join(f"{k} ({len(v)} chars)" for k, v in sorted(variables.items(), key=lambda kv: -len(kv[1]))[:3])
    return (
        f"{name}: Lambda was unable to configure your environment variables because the environment variables you "
        f"have provided exceeded the 4KB limit ({size} bytes measured; largest: {largest})"
    )


@dataclass
class LocalFunction:
    """A deployed function: code folder, layer folders, handler string, environment."""

    name: str
    arn: str
    handler: str
    code_dir: Path
    layer_dirs: list[Path]
    environment: dict[str, str]
    timeout_seconds: int = 60
    memory_mb: int = 128
    role_arn: str | None = None  # the execution role (its session signs the function's AWS calls)
    # Asynchronous invocation (AWS::Lambda::EventInvokeConfig; Lambda's defaults without one): retries after
    # a handler error, the oldest event Lambda still runs, and where a failed event's record goes.
    async_retries: int = 2
    async_max_age_seconds: int = 21600
    on_failure_destination: str | None = None
    reserved: int | None = None  # ReservedConcurrentExecutions: at most this many invocations at once
    # LoggingConfig: where Lambda sends what the function writes (None: /aws/lambda/<name>) and how (Text | JSON).
    log_group: str | None = None
    log_format: str = "Text"
    _module: ModuleType | None = field(default=None, repr=False)
    _log_stream: str = field(default="", repr=False)  # the current execution environment's stream

    @property
    def log_group_name(self) -> str:
        return self.log_group or default_log_group(self.name)

    def paths(self) -> list[str]:
        layers = [str(d / "python") if (d / "python").is_dir() else str(d) for d in self.layer_dirs]
        return [str(self.code_dir), *layers]


class LambdaRuntime:
    """Holds the deployed functions and invokes them in-process."""

    def __init__(self, *, endpoint: str, region: str, account: str) -> None:
        self.endpoint = endpoint
        self.region = region
        self.account = account
        self.functions: dict[str, LocalFunction] = {}
        self.invocations: list[Invocation] = []
        # The access key id a function's clients sign with (the twin maps it to the role session); "twin" if unset.
        self.access_key_for: Callable[[LocalFunction], str] | None = None
        # Called after each AWS call an invocation makes: (function, service, operation); it may raise FunctionCrash.
        self.after_call: Callable[[str, str, str], None] | None = None
        # Receives each invocation's log events (epoch ms, message) for the function's log group and stream, as
        # Lambda sends them to CloudWatch Logs; None: dropped.
        self.deliver_logs: Callable[[LocalFunction, list[tuple[int, str]]], None] | None = None
        _install_after_call_hook()

    def session_arn(self, function: LocalFunction) -> str | None:
        """`arn:aws:sts::<acct>:assumed-role/<role name>/<function name>`: who the function's calls are, in AWS."""
        if not function.role_arn:
            return None
        return f"arn:aws:sts::{self.account}:assumed-role/{function.role_arn.rsplit('/', 1)[-1]}/{function.name}"

    def register(self, function: LocalFunction) -> None:
        self.functions[function.name] = function

    def resolve(self, name_or_arn: str) -> LocalFunction:
        """Accepts a name, a function ARN, or a qualified ARN (`...:function:name:alias`)."""
        name = name_or_arn
        if name_or_arn.startswith("arn:"):
            name = name_or_arn.split(":")[6]
        elif ":" in name_or_arn:
            name = name_or_arn.split(":")[0]
        try:
            return self.functions[name]
        except KeyError:
            raise FunctionNotFound(f"Function not found: {name_or_arn}") from None

    def invoke(self, name_or_arn: str, event: Any) -> Any:
        """Invoke synchronously; returns the handler's result or raises FunctionError. What the function writes goes
        to its log group (`deliver_logs`), never to the twin's console."""
        function = self.resolve(name_or_arn)
        # Events cross a JSON boundary in AWS: handlers never see Python objects shared with the caller.
        payload = json.loads(json.dumps(event))
        capture = Capture()
        with _LOCK, self._environment(function):
            try:
                with capturing(capture):
                    return self._invoke_captured(function, payload, capture)
            finally:
                self._deliver(function, capture)

    def _invoke_captured(self, function: LocalFunction, payload: Any, capture: Capture) -> Any:
        cold = function._module is None
        if cold:
            function._log_stream = new_log_stream()
        context = LambdaContext(
            function_name=function.name,
            memory_limit_in_mb=function.memory_mb,
            timeout_seconds=function.timeout_seconds,
            invoked_function_arn=function.arn,
            log_group_name=function.log_group_name,
            log_stream_name=function._log_stream,
        )
        started = time.monotonic()
        context._deadline = started + function.timeout_seconds
        error: str | None = None
        init_ms: float | None = None
        _INVOKING.function, _INVOKING.hook = function.name, self.after_call
        try:
            handler = self._handler(function)
            if cold:
                init_ms = (time.monotonic() - started) * 1000
                started = time.monotonic()
            capture.add(start_line(function.log_format, context.aws_request_id, int(time.time() * 1000)))
            result = handler(payload, context)
            return json.loads(json.dumps(result)) if result is not None else None
        except FunctionCrash as crash:  # the process died: Lambda reports Runtime.ExitError, Unhandled
            error = "Runtime.ExitError"
            message = f"RequestId: {context.aws_request_id} Error: {crash}"
            capture.add(error_record(context.aws_request_id, error, message, []))
            LOG.info("function %s crashed: %s", function.name, crash)
            raise FunctionError(error, message, []) from None
        except Exception as exc:  # the handler's failure is the invocation's result
            error = type(exc).__name__
            trace = traceback.format_exception(type(exc), exc, exc.__traceback__)
            capture.add(error_record(context.aws_request_id, error, str(exc), trace))
            LOG.info("function %s failed: %s", function.name, exc)
            raise FunctionError(error, str(exc), trace) from exc
        finally:
            _INVOKING.function = _INVOKING.hook = None
            duration = time.monotonic() - started
            for line in end_lines(
                function.log_format,
                context.aws_request_id,
                at=int(time.time() * 1000),
                duration_ms=duration * 1000,
                memory_mb=function.memory_mb,
                init_ms=init_ms,
                ok=error is None,
            ):
                capture.add(line)
            self.invocations.append(Invocation(function.name, context.aws_request_id, started, duration, error))

    def _deliver(self, function: LocalFunction, capture: Capture) -> None:
        if self.deliver_logs is None or not capture.events:
            return
        try:
            self.deliver_logs(function, capture.events)
        except Exception:  # a twin bug: the invocation's outcome stands; the twin's log has the traceback
            LOG.exception("could not deliver %s's log events to %s", function.name, function.log_group_name)

    def _handler(self, function: LocalFunction) -> Any:
        module_name, _, attr = function.handler.rpartition(".")
        if function._module is None:
            path = function.code_dir / (module_name.replace(".", "/") + ".py")
            spec = importlib.util.spec_from_file_location(f"twin_fn_{function.name.replace('-', '_')}", path)
            if spec is None or spec.loader is None:
                raise FunctionNotFound(f"{function.name}: handler file {path} not found")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # the cold start, under the function's environment
            function._module = module
        return getattr(function._module, attr)

    @contextmanager
    def _environment(self, function: LocalFunction) -> Iterator[None]:
        import boto3

        saved_env = dict(os.environ)
        saved_path = list(sys.path)
        # boto3's default session caches the first credentials it resolves: a fresh one per invocation, so
        # clients the function makes sign with its own role session (module-level clients keep theirs).
        saved_session, boto3.DEFAULT_SESSION = boto3.DEFAULT_SESSION, None
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_ACCESS_KEY_ID": self.access_key_for(function) if self.access_key_for else "twin",
                "AWS_SECRET_ACCESS_KEY": "twin",
                "AWS_LAMBDA_FUNCTION_NAME": function.name,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
                "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon in the twin
                **function.environment,
            }
        )
        os.environ.pop("AWS_PROFILE", None)
        sys.path[:0] = function.paths()
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            sys.path[:] = saved_path
            boto3.DEFAULT_SESSION = saved_session
