"""The local twin: moto in server mode on 127.0.0.1, plus what this product needs and moto lacks.

What it adds to moto, item by item, and why: docs/twin/index.md; its options: docs/twin/flags.md.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
from botocore.config import Config

from local import eventbridge
from local.app_ui import AppUis
from local.cloudtrail import DEFAULT_ACCESS_KEY, CloudTrail
from local.cloudwatch import CloudWatchAlarms
from local.emr_containers import EmrContainersTwin
from local.emr_ec2 import EmrEc2Twin
from local.emr_serverless import EmrServerlessTwin
from local.faults import FaultInjector, TwinClientError
from local.iam.enforcer import IamEnforcer
from local.lambda_runtime import FunctionError, LambdaRuntime, LocalFunction
from local.scheduler import SchedulerTwin
from local.spark_runner import SparkRunner
from local.twin_log import TwinLog
from local.validation import ASYNC_PAYLOAD_BYTES, SYNC_PAYLOAD_BYTES

LOG = logging.getLogger("twin")
ACCOUNT = "123456789012"
CURRENT: Twin | None = None

_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_RATE_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}

# Lambda's waits before the second and third attempt of a failed asynchronous event (about 1 and 2 minutes).
ASYNC_RETRY_WAITS = (60.0, 120.0)
# Batches an SQS event source mapping reads at once when messages are available (Lambda's start: `Twin._poll`).
POLLERS_AT_START = 5

_S3_REASONS = {
    "ObjectCreated:Put": "PutObject",
    "ObjectCreated:Post": "PostObject",
    "ObjectCreated:Copy": "CopyObject",
    "ObjectCreated:CompleteMultipartUpload": "CompleteMultipartUpload",
}


@dataclass
class EventSourceMapping:
    """An SQS -> Lambda event source mapping as the template declares it."""

    queue_url: str
    queue_arn: str
    function_name: str
    batch_size: int = 10
    window_seconds: float = 0.0
    report_batch_item_failures: bool = False
    enabled: bool = True
    max_concurrency: int | None = None  # ScalingConfig.MaximumConcurrency


@dataclass
class Delivery:
    """One event delivered to one target (kept for tests and the demo's progress view)."""

    rule: str
    target_arn: str
    event_id: str
    detail_type: str
    error: str | None = None
    at: float = field(default_factory=time.monotonic)


@dataclass
class AsyncFailure:
    """An asynchronous event Lambda gave up on (sent to the function's on-failure destination, if it has one)."""

    function_name: str
    request_id: str
    condition: str  # RetriesExhausted | EventAgeExceeded
    attempts: int
    error_type: str


class Twin:
    """A running local AWS. `start()`, `deploy(cdk_out)`, use `client(...)`, `stop()`."""

    def __init__(
        self,
        *,
        workdir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
        spark: bool = True,
        time_scale: float = 1.0,
        retry_delay_seconds: float = 1.0,
        iam: bool = True,
        s3_event_key_encoding: str = "raw",
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port
        self.region = region
        self.account = ACCOUNT
        self.spark = spark
        # The twin's clock: durations AWS decides (batching windows, Step Functions' EMR .sync poll intervals) are
        # multiplied by this, so tests and the demo run them faster (1.0: as AWS).
        self.time_scale = time_scale
        self.retry_delay_seconds = retry_delay_seconds  # failed SQS records become visible again after this
        if s3_event_key_encoding not in ("raw", "url"):
            raise ValueError(f"s3_event_key_encoding: got {s3_event_key_encoding!r}; expected 'raw' or 'url'")
        self.s3_event_key_encoding = s3_event_key_encoding
        self.iam_enforced = iam  # False only for debugging: AWS would refuse what the twin then lets through
        self.faults = FaultInjector()
        self.deliveries: list[Delivery] = []
        self.async_failures: list[AsyncFailure] = []
        self.events: list[dict[str, Any]] = []
        self.mappings: list[EventSourceMapping] = []
        self.endpoint = ""
        # (event, rule): rule None -> matched against every rule's pattern; a rule -> its targets only (schedules)
        self._bus: queue.Queue[tuple[dict[str, Any], Any] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sequencer = itertools.count(int(time.time() * 1000) << 8)
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._bus_clients: dict[str, Any] = {}
        self._clients_lock = threading.RLock()
        self._session = boto3.session.Session()
        self._queue_urls: dict[str, str] = {}
        self.runtime: LambdaRuntime
        self.emr_serverless: EmrServerlessTwin
        self.emr_ec2: EmrEc2Twin
        self.emr_containers: EmrContainersTwin
        self.iam: IamEnforcer
        self.app_uis: AppUis
        self.cloudtrail = CloudTrail(account=self.account, region=self.region, emit=self.put_event)
        self.cloudwatch = CloudWatchAlarms(account=self.account, region=self.region, emit=self.put_event)
        self.scheduler = SchedulerTwin(self)  # EventBridge Scheduler schedules, fired on demand for a given instant
        self._schedules = threading.Event()  # set: no background schedule ticking (see start_schedules)
        self._schedules.set()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Twin:
        global CURRENT
        from moto.core.config import default_user_config
        from moto.server import ThreadedMotoServer

        self.log = TwinLog(self.workdir).install()  # moto's, werkzeug's and the twin's lines: <workdir>/logs/twin.log
        self._saved_config = {k: default_user_config.get(k) for k in ("stepfunctions", "lambda", "iam")}
        default_user_config["stepfunctions"] = {"execute_state_machine": True}
        default_user_config["lambda"] = {"use_docker": False}
        default_user_config["iam"] = {"load_aws_managed_policies": True}  # roles attach AWS managed policies
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        self.endpoint = f"http://{self.host}:{self.port}"
        os.environ["MOTO_PORT"] = str(self.port)  # moto's ASL aws-sdk integrations call localhost:MOTO_PORT
        self.runtime = LambdaRuntime(endpoint=self.endpoint, region=self.region, account=self.account)
        self.runtime.access_key_for = self._function_access_key
        self.runtime.after_call = self.faults.after_call
        self.runtime.deliver_logs = self._deliver_function_logs
        runner = (
            SparkRunner(self.client("s3"), workdir=self.workdir / "spark", s3_for_role=self._role_s3)
            if self.spark
            else None
        )
        self.emr_serverless = EmrServerlessTwin(
            account=self.account, region=self.region, runner=runner, faults=self.faults, emit=self.put_event
        )
        self.emr_serverless.s3_for_role = self._role_s3
        self.emr_containers = EmrContainersTwin(
            account=self.account, region=self.region, runner=runner, faults=self.faults, emit=self.put_event
        )
        self.emr_ec2 = EmrEc2Twin(
            account=self.account,
            region=self.region,
            runner=runner,
            faults=self.faults,
            emit=self.put_event,
            workdir=self.workdir / "emr-ec2",
            s3=self.client("s3"),
        )
        self.emr_ec2.s3_for_role = self._role_s3
        self.emr_ec2.time_scale = self.time_scale
        CURRENT = self
        from local import cloudwatch, patches, sfn_integrations
        from local.iam.hooks import TwinLookups, make_enforcer

        self.iam = make_enforcer(self, self.iam_enforced)
        self.app_uis = AppUis(self)
        self.app_uis.server.start()
        _load_aws_managed_policies(self.account)
        if not self.iam_enforced:
            LOG.warning("IAM ENFORCEMENT IS OFF: the twin lets through calls AWS would refuse (debugging only)")

        sfn_integrations.install(
            emr_serverless=self.emr_serverless,
            runtime=self.runtime,
            emr_ec2=self.emr_ec2,
            emr_containers=self.emr_containers,
            trail=self.cloudtrail,
            iam=self.iam,
            lookups=TwinLookups(self),
            time_scale=self.time_scale,
        )
        patches.install(self)
        cloudwatch.install(self.cloudwatch)
        self._spawn(self._bus_worker, "eventbridge-bus")
        LOG.info("twin listening on %s", self.endpoint)
        return self

    def stop(self) -> None:
        global CURRENT
        self._stop.set()
        self.stop_schedules()
        self.cloudtrail.cancel_pending()
        self._bus.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        for run in self.emr_serverless.running():
            run.cancel.set()
        self.emr_containers.shutdown()
        self.emr_ec2.shutdown()
        self._server.stop()
        self.app_uis.server.stop()
        from moto.core.config import default_user_config

        from local import cloudwatch, patches, sfn_integrations

        patches.uninstall()
        sfn_integrations.uninstall()
        cloudwatch.uninstall()
        default_user_config.update(self._saved_config)  # type: ignore[typeddict-item]
        self.log.uninstall()
        if CURRENT is self:
            CURRENT = None

    # ------------------------------------------------------------------ function logs

    @property
    def logs_dir(self) -> Path:
        """`<workdir>/logs`: twin.log, and one plain file per function (`<function name>.log`)."""
        return self.workdir / "logs"

    def _deliver_function_logs(self, function: LocalFunction, events: list[tuple[int, str]]) -> None:
        """An invocation's lines, as Lambda sends them: PutLogEvents to the function's log group and its
        environment's stream (CreateLogStream on the first), plus a plain copy under `logs_dir`.

        In-process calls to moto's CloudWatch Logs backend: the function's role is not asked (Lambda's service
        writes them). A log group that does not exist is created, as Lambda does for `/aws/lambda/<name>` when the
        role allows logs:CreateLogGroup."""
        from moto.logs.models import logs_backends

        backend = logs_backends[self.account][self.region]
        group = function.log_group_name
        if group not in backend.groups:
            backend.create_log_group(group, {})
        if function._log_stream not in backend.groups[group].streams:
            backend.create_log_stream(group, function._log_stream)
        # PutLogEvents: at most 10,000 events per call, in chronological order (logs PutLogEvents, botocore's
        # logs model: logEvents min 1, max 10000).
        ordered = sorted(events, key=lambda event: event[0])
        for start in range(0, len(ordered), 10000):
            batch = [{"timestamp": at, "message": message} for at, message in ordered[start : start + 10000]]
            backend.put_log_events(group, function._log_stream, batch)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with (self.logs_dir / f"{function.name}.log").open("a", encoding="utf-8") as copy:
            for at, message in ordered:
                stamp = datetime.fromtimestamp(at / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
                copy.write(f"{stamp} {function._log_stream} {message}\n")

    def client(self, service: str, principal: str | None = None, **kwargs: Any) -> Any:
        """A boto3 client for the twin (fake credentials, retries like the SDK's standard mode).

        Its calls are recorded in CloudTrail as `principal` (an IAM user ARN, e.g.
        `arn:aws:iam::123456789012:user/alice`, or a role session, e.g.
        `arn:aws:sts::123456789012:assumed-role/SomeRole/session`); without one, as the IAM user `twin-operator`.
        """
        access_key = self.cloudtrail.access_key_for(principal) if principal else DEFAULT_ACCESS_KEY
        return self.client_with_key(service, access_key, **kwargs)

    def set_time_scale(self, time_scale: float) -> None:
        """Run the twin's clock at another speed from now on (batching windows, EMR .sync polls, injected step
        durations are multiplied by `time_scale`; 1.0 is AWS's)."""
        from local.emr_ec2.sfn import TwinEmrService

        self.time_scale = time_scale
        self.emr_ec2.time_scale = time_scale
        TwinEmrService.time_scale = time_scale

    def client_with_key(self, service: str, access_key: str, **kwargs: Any) -> Any:
        """A boto3 client for the twin that signs with `access_key` (see `local.cloudtrail`: the key names who
        calls), with the SDK's standard retries. Made from the twin's own session, which keeps the service models
        it read (boto3's default session is reset around every function invocation, and a client made from a fresh
        session reads its model from disk again: about 150 ms instead of 5)."""
        with self._clients_lock:  # a boto3 session is not thread-safe; its clients are
            return self._session.client(
                service,
                endpoint_url=self.endpoint,
                region_name=self.region,
                aws_access_key_id=access_key,
                aws_secret_access_key="twin",
                config=Config(retries={"mode": "standard", "total_max_attempts": 3}),
                **kwargs,
            )

    def _role_s3(self, role_arn: str, session: str) -> Any:
        return self.role_client("s3", role_arn, session)

    def role_client(self, service: str, role_arn: str, session: str) -> Any:
        """A client acting as a session of `role_arn` (e.g. a Spark job's execution role)."""
        principal = f"arn:aws:sts::{self.account}:assumed-role/{role_arn.rsplit('/', 1)[-1]}/{session}"
        return self.client_with_key(service, self.cloudtrail.access_key_for(principal, role_arn=role_arn))

    def deploy(self, cdk_out: Path) -> Any:
        """Create what the cloud assembly declares; returns the deploy report."""
        from local.deploy import deploy_assembly

        known = len(self.mappings)
        report = deploy_assembly(self, cdk_out)
        for mapping in self.mappings[known:]:  # a later deploy polls its own mappings only
            backlog = threading.Event()
            for slot in range(self._pollers(mapping)):
                poll = functools.partial(self._poll, mapping, slot, backlog)
                self._spawn(poll, f"esm-{mapping.function_name}-{slot}")
        return report

    def _pollers(self, mapping: EventSourceMapping) -> int:
        """How many batches the mapping's pollers read at once: AWS's five, never more than the mapping's
        ScalingConfig.MaximumConcurrency or the function's reserved concurrency allow (see `_poll`); one for a
        function throttled to 0, whose batches are never invoked (see `_throttled`)."""
        limits = [POLLERS_AT_START, mapping.max_concurrency, self.runtime.resolve(mapping.function_name).reserved]
        return max(1, min(limit for limit in limits if limit is not None))

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ------------------------------------------------------------------ events

    def put_event(self, event: dict[str, Any]) -> None:
        """Put an event on the default bus (fills the envelope fields AWS adds)."""
        self._enqueue(self._envelope(event), None)

    def _envelope(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": event["detail-type"],
            "source": event["source"],
            "account": event.get("account", self.account),
            "time": event.get("time") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": event.get("region", self.region),
            "resources": event.get("resources", []),
            "detail": event.get("detail", {}),
        }

    def _enqueue(self, event: dict[str, Any], rule: Any) -> None:
        with self._busy_lock:
            self._busy += 1
        self._bus.put((event, rule))

    # ------------------------------------------------------------------ schedules

    def fire_schedule(self, rule: str) -> dict[str, Any] | None:
        """One tick of a schedule rule: a "Scheduled Event" delivered to that rule's targets (only).

        `rule` is the rule's name or a substring of exactly one scheduled rule's name (CDK names are long).
        Returns the event, or None when the rule is DISABLED (a disabled schedule delivers nothing).
        """
        found = self.scheduled_rule(rule)
        if found.state != "ENABLED":
            return None
        event = self._envelope(
            {"source": "aws.events", "detail-type": "Scheduled Event", "resources": [found.arn], "detail": {}}
        )
        self._enqueue(event, found)
        return event

    def scheduled_rule(self, rule: str) -> Any:
        """The moto rule with a ScheduleExpression named `rule`, or whose name is the only one containing it."""
        from moto.events.models import events_backends

        backend = events_backends[self.account][self.region]
        scheduled = [r for bus in list(backend.event_buses.values()) for r in list(bus.rules.values())
                     if r.scheduled_expression]  # fmt: skip
        exact = [r for r in scheduled if r.name == rule]
        matches = exact or [r for r in scheduled if rule in r.name]
        if len(matches) == 1:
            return matches[0]
        names = sorted(r.name for r in (matches or scheduled))
        if not matches:
            raise LookupError(f"no scheduled rule named or containing {rule!r}; scheduled rules: {names}")
        raise LookupError(f"{rule!r} matches several scheduled rules, name one: {names}")

    def start_schedules(self, scale: float = 1.0) -> list[str]:
        """Fire every enabled `rate(...)` rule in the background, each period multiplied by `scale`.

        Off by default (tests call `fire_schedule` when they want a tick). cron(...) rules are not run
        (returned names are the rules that are). `stop_schedules()` (or `stop()`) ends the ticking.
        """
        self.stop_schedules()
        ticking = self._schedules = threading.Event()
        rates: dict[str, float] = {}
        from moto.events.models import events_backends

        for bus in list(events_backends[self.account][self.region].event_buses.values()):
            for r in list(bus.rules.values()):
                match = _RATE.match(r.scheduled_expression or "")
                if match and r.state == "ENABLED":
                    rates[r.name] = int(match.group(1)) * _RATE_UNIT_SECONDS[match.group(2).rstrip("s")] * scale
                elif r.scheduled_expression:
                    LOG.warning("schedule %s of rule %s is not run by start_schedules", r.scheduled_expression, r.name)
        due = {name: time.monotonic() + period for name, period in rates.items()}

        def tick() -> None:
            while due and not ticking.wait(max(0.0, min(due.values()) - time.monotonic())):
                for name, when in list(due.items()):
                    if when <= time.monotonic():
                        due[name] = when + rates[name]
                        try:
                            self.fire_schedule(name)
                        except LookupError:
                            del due[name]  # the rule is gone

        self._spawn(tick, "schedules")
        return sorted(rates)

    def stop_schedules(self) -> None:
        """End what `start_schedules` started (no-op otherwise)."""
        self._schedules.set()

    def s3_object_created(self, bucket: Any, key: Any, event_name: str) -> None:
        """Called (via the patch) for every S3 notification moto raises on a bucket with EventBridge on.

        Only object creation is modelled; moto also raises an ACL event on every PutObject (AWS sends
        "Object ACL Updated" only for PutObjectAcl), so other kinds are ignored rather than mis-sent.
        """
        name = event_name.removeprefix("s3:")
        if not name.startswith("ObjectCreated:"):
            return
        if name == "ObjectCreated:Put" and getattr(key, "multipart", None) is not None:
            return  # moto's CompleteMultipartUpload stores through put_object first; AWS sends one event
        detail_object: dict[str, Any] = {
            "key": key.name if self.s3_event_key_encoding == "raw" else quote_plus(key.name, safe="/"),
            "size": key.size,
            "etag": key.etag.replace('"', ""),
            "sequencer": f"{next(self._sequencer):018X}",
        }
        if key.version_id and key.version_id != "null":
            detail_object["version-id"] = key.version_id
        self.put_event(
            {
                "source": "aws.s3",
                "detail-type": "Object Created",
                "resources": [f"arn:aws:s3:::{bucket.name}"],
                "detail": {
                    "version": "0",
                    "bucket": {"name": bucket.name},
                    "object": detail_object,
                    "request-id": uuid.uuid4().hex[:16].upper(),
                    "requester": self.account,
                    "source-ip-address": "127.0.0.1",
                    "reason": _S3_REASONS.get(name, "PutObject"),
                },
            }
        )

    def _bus_worker(self) -> None:
        while not self._stop.is_set():
            item = self._bus.get()
            if item is None:
                return
            event, rule = item
            try:
                self.events.append(event)
                if rule is None:
                    self._dispatch(event)
                else:  # a scheduled event goes to its own rule's targets, never through patterns
                    for target in list(rule.targets):
                        self._deliver(rule, target, event)
            except Exception:
                LOG.exception("event dispatch failed")
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def _dispatch(self, event: dict[str, Any]) -> None:
        from moto.events.models import events_backends

        backend = events_backends[self.account][self.region]
        for bus in list(backend.event_buses.values()):
            for rule in list(bus.rules.values()):
                pattern = rule.event_pattern._pattern
                if rule.state != "ENABLED" or not pattern or not eventbridge.matches(pattern, event):
                    continue
                for target in list(rule.targets):
                    self._deliver(rule, target, event)

    def _deliver(self, rule: Any, target: dict[str, Any], event: dict[str, Any]) -> None:
        record = Delivery(rule.name, target["Arn"], event["id"], event["detail-type"])
        self.deliveries.append(record)
        try:
            body = eventbridge.render_target_input(
                event,
                input=target.get("Input"),
                input_path=target.get("InputPath"),
                input_transformer=target.get("InputTransformer"),
                rule_arn=rule.arn,
                rule_name=rule.name,
            )
            service = target["Arn"].split(":")[2]
            self._authorize_delivery(rule, target, service)
            if service == "sqs":
                sqs = self._bus_client("sqs")
                sqs.send_message(QueueUrl=self._queue_url(sqs, target["Arn"]), MessageBody=body)
            elif service == "lambda":
                if len(body.encode("utf-8")) > ASYNC_PAYLOAD_BYTES:  # Lambda's asynchronous invocation quota
                    raise ValueError(f"RequestEntityTooLargeException: the event is over {ASYNC_PAYLOAD_BYTES} bytes")
                self._spawn(lambda: self._invoke_async(target["Arn"], json.loads(body)), "lambda-async")
            elif service == "states":
                self.client("stepfunctions").start_execution(stateMachineArn=target["Arn"], input=body)
            else:
                raise NotImplementedError(f"target service {service} is not modelled by the twin")
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            LOG.warning("delivery of %s to %s failed: %s", event["detail-type"], target["Arn"], exc)

    def _bus_client(self, service: str) -> Any:
        """The bus's own client of a service, made once (a boto3 client is thread-safe; making one costs more than
        a delivery)."""
        with self._clients_lock:
            if service not in self._bus_clients:
                self._bus_clients[service] = self.client(service)
            return self._bus_clients[service]

    def _queue_url(self, sqs: Any, queue_arn: str) -> str:
        """A queue's URL by its ARN, asked once (a URL names the queue: a queue deleted and made again has the
        same)."""
        if queue_arn not in self._queue_urls:
            self._queue_urls[queue_arn] = sqs.get_queue_url(QueueName=queue_arn.split(":")[5])["QueueUrl"]
        return self._queue_urls[queue_arn]

    def _authorize_delivery(self, rule: Any, target: dict[str, Any], service: str) -> None:
        """EventBridge may deliver only what the target allows: a queue's policy or a function's permissions must
        allow events.amazonaws.com for this rule (aws:SourceArn); a state machine is started with the target's
        role, which must allow states:StartExecution. Refused deliveries fail (AWS: FailedInvocations)."""
        from local.iam.operations import Authorization

        context = {"aws:SourceArn": rule.arn, "aws:SourceAccount": self.account}
        if service == "sqs":
            self.iam.authorize(
                self.iam.service_caller("events.amazonaws.com"),
                Authorization("sqs:SendMessage", target["Arn"], context),
                service="sqs",
            )
        elif service == "lambda":
            self.iam.authorize(
                self.iam.service_caller("events.amazonaws.com"),
                Authorization("lambda:InvokeFunction", target["Arn"], context),
                service="lambda",
            )
        elif service == "states":
            role = target.get("RoleArn")
            if not role:
                raise PermissionError(f"rule {rule.name}: a Step Functions target needs a RoleArn")
            session = f"arn:aws:sts::{self.account}:assumed-role/{role.rsplit('/', 1)[-1]}/events"
            self.iam.authorize(
                self.iam.caller_for_session(session, role),
                Authorization("states:StartExecution", target["Arn"]),
                service="stepfunctions",
            )

    def _invoke_async(self, arn: str, event: Any) -> None:
        """Lambda's asynchronous invocation: a handler error is retried `async_retries` times (Lambda waits about
        1 minute before the second attempt and 2 minutes before the third, on the twin's clock); an event that
        still fails, or outlives `async_max_age_seconds`, goes to the on-failure destination as Lambda's record
        (sent as the function's execution role, which needs sqs:SendMessage), or is dropped without one.
        ("Error handling and automatic retries", "Capturing records of Lambda asynchronous invocations",
        Lambda developer guide.)"""
        with self._busy_lock:
            self._busy += 1
        try:
            function = self.runtime.resolve(arn)
            request_id = str(uuid.uuid4())
            age = 0.0
            attempts = 0
            condition = "RetriesExhausted"
            while True:
                attempts += 1
                try:
                    self.runtime.invoke(arn, event)
                    return
                except FunctionError as exc:
                    error = exc
                if attempts > function.async_retries:
                    break
                wait = ASYNC_RETRY_WAITS[min(attempts, len(ASYNC_RETRY_WAITS)) - 1]
                if age + wait > function.async_max_age_seconds:
                    condition = "EventAgeExceeded"
                    break
                age += wait
                if self._stop.wait(wait * self.time_scale):
                    return
            if function.on_failure_destination:
                self._send_async_failure(function, request_id, condition, attempts, event, error)
            else:
                LOG.warning(
                    "asynchronous event for %s dropped after %d attempts: no on-failure destination", arn, attempts
                )
            self.async_failures.append(AsyncFailure(function.name, request_id, condition, attempts, error.error_type))
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _send_async_failure(
        self, function: Any, request_id: str, condition: str, attempts: int, event: Any, error: FunctionError
    ) -> None:
        record = {
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "requestContext": {
                "requestId": request_id,
                "functionArn": f"{function.arn}:$LATEST",
                "condition": condition,
                "approximateInvokeCount": attempts,
            },
            "requestPayload": event,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": error.payload,
        }
        destination = function.on_failure_destination
        try:  # Lambda addresses the queue by ARN: only sqs:SendMessage is asked of the role
            url = self.client("sqs").get_queue_url(QueueName=destination.split(":")[5])["QueueUrl"]
            sqs = self.client_with_key("sqs", self._function_access_key(function))
            sqs.send_message(QueueUrl=url, MessageBody=json.dumps(record))
        except Exception:  # AWS drops the record too when the destination refuses it (and logs nothing we see)
            LOG.exception("on-failure record for %s could not be sent to %s", function.name, destination)

    def _function_access_key(self, function: Any) -> str:
        """What a function's clients sign with: its execution role session (the twin's default without a role)."""
        session = self.runtime.session_arn(function)
        return self.cloudtrail.access_key_for(session, role_arn=function.role_arn) if session else DEFAULT_ACCESS_KEY

    # ------------------------------------------------------------------ SQS -> Lambda

    def _poll(self, mapping: EventSourceMapping, slot: int, backlog: threading.Event) -> None:
        """One of a mapping's pollers, as Lambda's ("Configuring scaling behavior for SQS event source mappings",
        Lambda developer guide, https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html): "Lambda
        uses long polling to poll a queue until it becomes active. When messages are available, Lambda starts
        processing five batches at a time"; each batch is up to BatchSize, gathered for up to
        MaximumBatchingWindowInSeconds. Slot 0 long-polls the idle queue; the others read while messages are still
        available after a batch was taken (`backlog`), so a quiet queue's few messages stay in one batch as before.
        The twin stops at five readers: its invocations run one at a time (`lambda_runtime`), so more would only
        compete for the machine's cores."""
        # Lambda's poller reads the queue with the function's execution role (it needs sqs:ReceiveMessage,
        # DeleteMessage, ChangeMessageVisibility, GetQueueAttributes on the queue).
        function = self.runtime.resolve(mapping.function_name)
        sqs = self.client_with_key("sqs", self._function_access_key(function))
        carried: list[dict[str, Any]] = []  # read past the last batch's 6 MB cut: the next batch starts with them
        while not self._stop.is_set():
            if slot and not carried and not backlog.wait(0.5):
                continue
            try:
                messages, carried = self._gather(sqs, mapping, carried)
            except Exception:
                LOG.exception("polling %s failed", mapping.queue_url)
                time.sleep(0.5)
                continue
            try:
                if messages and self._visible(sqs, mapping):
                    backlog.set()
            except Exception:  # the batch in hand is invoked all the same (else it would wait out its visibility)
                LOG.exception("reading the backlog of %s failed", mapping.queue_url)
            if not messages:
                if slot:
                    backlog.clear()  # the backlog is drained: back to one long-polling reader
                continue
            with self._busy_lock:
                self._busy += 1
            try:
                if function.reserved == 0:
                    self._throttled(sqs, mapping, messages)
                else:
                    self._invoke_batch(sqs, mapping, messages)
            except Exception:  # the poller lives on (a dead one stopped the queue for good); the batch comes back
                LOG.exception("batch from %s not completed; its messages return after their visibility timeout",
                              mapping.queue_url)  # fmt: skip
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def _gather(
        self, sqs: Any, mapping: EventSourceMapping, carried: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A batch and the messages read past it: up to BatchSize messages, gathered for up to the window (on the
        twin's clock as it is when the first message comes) from the first one received, and never more than one
        synchronous invocation carries: Lambda invokes when "the payload size reaches 6 MB" (Lambda developer guide,
        "Lambda event source mappings", batching behavior), so a message that would take the event over 6 MB
        (`SYNC_PAYLOAD_BYTES`, as `_invoke_batch` serializes it) and every message read with or after it are left
        for the next batch (the poller keeps them in hand: returned to the queue they would count a receive more
        towards the dead-letter queue). `carried` (the previous call's leftovers) starts the batch."""
        messages: list[dict[str, Any]] = []
        over: list[dict[str, Any]] = []
        size = len(json.dumps({"Records": []}))
        window = deadline = 0.0

        def take(got: list[dict[str, Any]]) -> None:
            nonlocal size
            for message in got:
                record = len(json.dumps(self._record(mapping, message)).encode("utf-8")) + (2 if messages else 0)
                if over or (messages and size + record > SYNC_PAYLOAD_BYTES) or len(messages) >= mapping.batch_size:
                    over.append(message)
                else:
                    messages.append(message)
                    size += record

        take(carried)
        if messages:
            window = mapping.window_seconds * self.time_scale
            deadline = time.monotonic() + window
        while not over and len(messages) < mapping.batch_size and not self._stop.is_set():
            response = sqs.receive_message(
                QueueUrl=mapping.queue_url,
                MaxNumberOfMessages=min(10, mapping.batch_size - len(messages)),
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
                # Long polling until the first message (1 s rather than AWS's 20, so that `stop()` is prompt).
                WaitTimeSeconds=0 if messages else 1,
            )
            got = response.get("Messages", [])
            if got and not messages:
                window = mapping.window_seconds * self.time_scale
                deadline = time.monotonic() + window
            take(got)
            if not messages:
                return messages, over
            if window <= 0 and not got:
                break
            if time.monotonic() >= deadline:
                break
            if not got:
                time.sleep(0.05)
        return messages, over

    @staticmethod
    def _visible(sqs: Any, mapping: EventSourceMapping) -> bool:
        """Whether messages are still available on the mapping's queue."""
        visible = "ApproximateNumberOfMessages"
        attributes = sqs.get_queue_attributes(QueueUrl=mapping.queue_url, AttributeNames=[visible])["Attributes"]
        return int(attributes.get(visible, 0)) > 0

    def _record(self, mapping: EventSourceMapping, message: dict[str, Any]) -> dict[str, Any]:
        """One message as a record of the event Lambda invokes the function with."""
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": mapping.queue_arn,
            "awsRegion": self.region,
        }

    def _throttled(self, sqs: Any, mapping: EventSourceMapping, messages: list[dict[str, Any]]) -> None:
        """A batch for a function whose reserved concurrency is 0: Lambda never invokes it, and "if your function is
        throttled, returns an error, or doesn't respond, the message becomes visible again" (Lambda developer guide,
        "Using Lambda with Amazon SQS"), one receive more towards the queue's maxReceiveCount (then the dead-letter
        queue). The twin returns it after `retry_delay_seconds`, as it returns a failed batch."""
        LOG.info("%s is throttled (reserved concurrency 0): %d messages return to %s",
                 mapping.function_name, len(messages), mapping.queue_url)  # fmt: skip
        self._return_messages(sqs, mapping, messages)
        time.sleep(min(1.0, self.retry_delay_seconds))  # so that a throttled mapping does not spin on the machine

    def _return_messages(self, sqs: Any, mapping: EventSourceMapping, messages: list[dict[str, Any]]) -> None:
        """Make messages visible again after `retry_delay_seconds` (ChangeMessageVisibilityBatch, ten a call)."""
        delay = max(0, round(self.retry_delay_seconds))
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": delay}
                       for i, m in enumerate(chunk)]  # fmt: skip
            sqs.change_message_visibility_batch(QueueUrl=mapping.queue_url, Entries=entries)

    def _invoke_batch(self, sqs: Any, mapping: EventSourceMapping, messages: list[dict[str, Any]]) -> None:
        records = [self._record(mapping, m) for m in messages]
        failed: set[str] = set()
        try:
            response = self.runtime.invoke(mapping.function_name, {"Records": records})
            if mapping.report_batch_item_failures:
                failed = batch_item_failures(response, [m["MessageId"] for m in messages])
        except FunctionError:
            failed = {m["MessageId"] for m in messages}
        # Ten a call, as SQS's batch actions allow (IAM authorizes them as DeleteMessage/ChangeMessageVisibility).
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
            sqs.delete_message_batch(QueueUrl=mapping.queue_url, Entries=entries)
        self._return_messages(sqs, mapping, [m for m in messages if m["MessageId"] in failed])

    # ------------------------------------------------------------------ waiting

    def busy(self) -> bool:
        """Events, batches, executions, job runs, EMR cluster transitions or steps still in flight."""
        with self._busy_lock:
            if self._busy:
                return True
        if self.cloudtrail.pending():
            return True
        sqs = self.client("sqs")
        for mapping in self.mappings:
            attrs = sqs.get_queue_attributes(QueueUrl=mapping.queue_url, AttributeNames=["All"])["Attributes"]
            if int(attrs.get("ApproximateNumberOfMessages", 0)) or int(
                attrs.get("ApproximateNumberOfMessagesNotVisible", 0)
            ):
                return True
        return bool(
            self.emr_ec2.busy()
            or self.running_executions()
            or self.emr_serverless.running()
            or self.emr_containers.running()
        )

    def running_executions(self) -> list[str]:
        sfn = self.client("stepfunctions")
        arns: list[str] = []
        for machine in sfn.list_state_machines()["stateMachines"]:
            for page in sfn.get_paginator("list_executions").paginate(
                stateMachineArn=machine["stateMachineArn"], statusFilter="RUNNING"
            ):
                arns.extend(e["executionArn"] for e in page["executions"])
        return arns

    def wait_idle(self, timeout: float = 120.0, settle: float = 0.3) -> None:
        """Wait until nothing is in flight (twice in a row, `settle` apart)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            quiet = quiet + 1 if not self.busy() else 0
            if quiet >= 2:
                return
            time.sleep(settle)
        raise TimeoutError(f"twin still busy after {timeout} s: executions {self.running_executions()}")


def batch_item_failures(response: Any, message_ids: Sequence[str]) -> set[str]:
    """The messages a function's partial batch response (`ReportBatchItemFailures`) sends back, as Lambda reads it
    (Lambda developer guide, "Handling errors for an SQS event source in Lambda", success and failure conditions):
    no response, an empty one, or a null or empty `batchItemFailures` is a complete success; an item without
    `itemIdentifier`, with a null or empty one, or naming a message that is not in the batch is a complete failure
    (every message returns), never a success that deletes them."""
    failures = response.get("batchItemFailures") if isinstance(response, dict) else None
    if not failures:
        return set()
    in_batch = set(message_ids)
    if not isinstance(failures, list) or not all(
        isinstance(f, dict) and f.get("itemIdentifier") in in_batch for f in failures
    ):
        LOG.warning("invalid partial batch response %.300r: the whole batch failed", failures)
        return in_batch
    return {str(f["itemIdentifier"]) for f in failures}


def _load_aws_managed_policies(account: str) -> None:
    """AWS managed policies in the twin's IAM (moto loads them only when configured before its IAM starts)."""
    from moto.iam.models import iam_backends

    backend = iam_backends[account]["global"]
    if not backend.aws_managed_policies:
        backend.aws_managed_policies = backend._init_aws_policies()
        backend.managed_policies.update({p.arn: p for p in backend.aws_managed_policies})


def twin_error_response(error: TwinClientError) -> tuple[int, dict[str, str], str]:
    """An AWS JSON-protocol error response."""
    body = json.dumps({"__type": error.code, "message": error.message, "Message": error.message})
    return error.status, {"x-amzn-ErrorType": error.code, "Content-Type": "application/x-amz-json-1.0"}, body
