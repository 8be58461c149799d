"""CloudTrail for the twin: "AWS API Call via CloudTrail" events on the twin's EventBridge bus.

What is recorded, with whose identity, and which AWS samples each field was checked against: docs/twin/cloudtrail.md.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

LOG = logging.getLogger("twin.cloudtrail")

EVENT_VERSION = "1.11"
DETAIL_TYPE = "AWS API Call via CloudTrail"
STATES_SERVICE = "states.amazonaws.com"
DEFAULT_ACCESS_KEY = "twin"
DEFAULT_USER = "twin-operator"
# The mutating EMR-on-EC2 operations the twin serves (read-only calls are not delivered to EventBridge).
EMR_MUTATING = frozenset(
    {
        "RunJobFlow",
        "TerminateJobFlows",
        "AddJobFlowSteps",
        "CancelSteps",
        "SetTerminationProtection",
        "AddTags",
        "RemoveTags",
        "PutAutoTerminationPolicy",
        "RemoveAutoTerminationPolicy",
        "PutManagedScalingPolicy",
        "RemoveManagedScalingPolicy",
        "ModifyInstanceFleet",
        "ModifyInstanceGroups",
        "ModifyCluster",
        "CreateSecurityConfiguration",
        "DeleteSecurityConfiguration",
    }
)
S3_WRITES = ("PutObject", "CopyObject", "CompleteMultipartUpload")
_ECHOED_S3_HEADERS = (
    "x-amz-version-id",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled",
)
_USER_ARN = re.compile(r"^arn:aws:iam::(\d{12}):user/(?:.*/)?([\w+=,.@-]+)$")
_ROOT_ARN = re.compile(r"^arn:aws:iam::(\d{12}):root$")
_SESSION_ARN = re.compile(r"^arn:aws:sts::(\d{12}):assumed-role/([\w+=,.@-]+)/([\w+=,.@-]+)$")
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def iso_now() -> str:
    """CloudTrail's time format: ISO 8601, whole seconds, `Z`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(text: str, length: int, alphabet: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") -> str:
    raw = hashlib.sha256(text.encode("utf-8")).digest()
    return "".join(alphabet[b % len(alphabet)] for b in raw)[:length]


def access_key_id_from(headers: Mapping[str, Any], query: Mapping[str, Any] | None = None) -> tuple[str | None, str]:
    """(access key id, AuthenticationMethod) of a SigV4 request: Authorization header or presigned URL."""
    match = _CREDENTIAL.search(str(headers.get("Authorization") or ""))
    if match:
        return match.group(1), "AuthHeader"
    credential = (query or {}).get("X-Amz-Credential")
    if isinstance(credential, list):
        credential = credential[0] if credential else None
    if credential:
        return unquote(str(credential)).split("/", 1)[0], "QueryString"
    return None, "AuthHeader"


@dataclass(frozen=True)
class Principal:
    """Who signs with an access key: an IAM user, the root user or a role session."""

    arn: str
    role_arn: str | None = None  # assumed roles: the role's IAM ARN (its path included)
    invoked_by: str | None = None  # e.g. states.amazonaws.com: the service acting with the session


@functools.cache
def _emr_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("emr")


def cloudtrail_members(value: Any, shape: Any = None) -> Any:
    """An API structure as CloudTrail writes it: member names in lower camel case, map keys kept as they are."""
    kind = getattr(shape, "type_name", None)
    if isinstance(value, dict):
        if kind == "map":
            return {k: cloudtrail_members(v, shape.value) for k, v in value.items()}
        members = getattr(shape, "members", {}) if kind == "structure" else {}
        return {k[:1].lower() + k[1:]: cloudtrail_members(v, members.get(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [cloudtrail_members(v, shape.member if kind == "list" else None) for v in value]
    return value


class CloudTrail:
    """The twin's trail: identities, EMR management events, S3 data events (see the module docstring)."""

    def __init__(self, *, account: str, region: str, emit: Callable[[dict[str, Any]], None]) -> None:
        self.account = account
        self.region = region
        self.emit = emit
        self.delay_seconds = 0.0  # CloudTrail -> EventBridge lag (AWS: typically seconds to minutes)
        self.events: list[dict[str, Any]] = []  # every record put on the bus, in order
        self._logged_buckets: set[str] = set()
        self._keys: dict[str, Principal] = {}
        self._created: dict[str, str] = {}  # principal ARN -> session creationDate
        self._lock = threading.Lock()
        self._pending: set[threading.Timer] = set()

    # ------------------------------------------------------------------ configuration

    def log_data_events(self, bucket: str, enabled: bool = True) -> None:
        """Record S3 data events (object writes) for `bucket`, as a trail's data event selector would."""
        with self._lock:
            if enabled:
                self._logged_buckets.add(bucket)
            else:
                self._logged_buckets.discard(bucket)

    def logs_data_events(self, bucket: str) -> bool:
        with self._lock:
            return bucket in self._logged_buckets

    def pending(self) -> bool:
        """Records held back by `delay_seconds` and not yet on the bus."""
        with self._lock:
            return bool(self._pending)

    def cancel_pending(self) -> None:
        with self._lock:
            timers, self._pending = list(self._pending), set()
        for timer in timers:
            timer.cancel()

    # ------------------------------------------------------------------ identities

    def access_key_for(self, principal: str, *, role_arn: str | None = None, invoked_by: str | None = None) -> str:
        """The access key id a client signs with to act as `principal` (an IAM user, root or role session ARN).

        Stable per principal. `role_arn` names the role of a session when its path is not "/".
        """
        user, root, session = _USER_ARN.match(principal), _ROOT_ARN.match(principal), _SESSION_ARN.match(principal)
        if not (user or root or session):
            raise ValueError(
                f"principal {principal!r} is not an IAM user (arn:aws:iam::<acct>:user/<name>), the root user "
                "or a role session (arn:aws:sts::<acct>:assumed-role/<role>/<session>)"
            )
        if session and role_arn is None:
            role_arn = f"arn:aws:iam::{session.group(1)}:role/{session.group(2)}"
        key = ("ASIA" if session else "AKIA") + _digest(f"{principal}|{invoked_by}", 16)
        with self._lock:
            self._keys[key] = Principal(principal, role_arn, invoked_by)
            self._created.setdefault(principal, iso_now())
        return key

    def state_machine_identity(self, role_arn: str, execution_arn: str) -> dict[str, Any]:
        """userIdentity of a call a Step Functions integration makes for an execution (the state machine's role)."""
        return self.identity(self.state_machine_access_key(role_arn, execution_arn))

    def state_machine_access_key(self, role_arn: str, execution_arn: str) -> str:
        """The access key an execution's SDK integrations sign with (recorded as the state machine's role)."""
        account = role_arn.split(":")[4] or self.account
        session = _digest(execution_arn, 32, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        principal = f"arn:aws:sts::{account}:assumed-role/{role_arn.rsplit('/', 1)[-1]}/{session}"
        return self.access_key_for(principal, role_arn=role_arn, invoked_by=STATES_SERVICE)

    def principal_of(self, access_key_id: str | None) -> Principal | None:
        with self._lock:
            return self._keys.get(access_key_id or "")

    def identity(self, access_key_id: str | None) -> dict[str, Any]:
        """The userIdentity element for a request signed with `access_key_id`."""
        key = access_key_id or DEFAULT_ACCESS_KEY
        principal = self.principal_of(key) or Principal(f"arn:aws:iam::{self.account}:user/{DEFAULT_USER}")
        arn = principal.arn
        if match := _USER_ARN.match(arn):
            return {"type": "IAMUser", "principalId": "AIDA" + _digest(arn, 17), "arn": arn,
                    "accountId": match.group(1), "accessKeyId": key, "userName": match.group(2)}  # fmt: skip
        if match := _ROOT_ARN.match(arn):
            return {"type": "Root", "principalId": match.group(1), "arn": arn, "accountId": match.group(1),
                    "accessKeyId": key}  # fmt: skip
        match = _SESSION_ARN.match(arn)
        assert match is not None and principal.role_arn is not None
        account, role_name, session = match.groups()
        role_id = self._role_id(account, role_name, principal.role_arn)
        with self._lock:
            created = self._created.get(arn) or iso_now()
        identity: dict[str, Any] = {
            "type": "AssumedRole",
            "principalId": f"{role_id}:{session}",
            "arn": arn,
            "accountId": account,
            "accessKeyId": key,
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "principalId": role_id,
                    "arn": principal.role_arn,
                    "accountId": account,
                    "userName": role_name,
                },  # fmt: skip
                "attributes": {"creationDate": created, "mfaAuthenticated": "false"},
            },
        }
        if principal.invoked_by:
            identity["invokedBy"] = principal.invoked_by
        return identity

    def _role_id(self, account: str, role_name: str, role_arn: str) -> str:
        try:
            from moto.iam.models import iam_backends

            return str(iam_backends[account]["global"].get_role(role_name).id)
        except Exception:  # the role is not in (twin) IAM: a stable made-up id
            return "AROA" + _digest(role_arn, 17)

    def caller(self, access_key_id: str | None, source_ip: str, user_agent: str) -> tuple[dict[str, Any], str, str]:
        """(userIdentity, sourceIPAddress, userAgent) of a request; a service acting for a role shows its name."""
        principal = self.principal_of(access_key_id)
        if principal is not None and principal.invoked_by:
            return self.identity(access_key_id), principal.invoked_by, principal.invoked_by
        return self.identity(access_key_id), source_ip, user_agent

    # ------------------------------------------------------------------ records

    def emr_call(
        self,
        operation: str,
        request: dict[str, Any],
        response: dict[str, Any] | None,
        *,
        caller: tuple[dict[str, Any], str, str],
        error: Any = None,
    ) -> dict[str, Any] | None:
        """Record one EMR API call (mutating operations only); `error` is a TwinClientError for a failed call."""
        if operation not in EMR_MUTATING:
            return None
        operation_model = _emr_model().operation_model(operation)
        output_shape = operation_model.output_shape
        record = self._record(
            "elasticmapreduce.amazonaws.com",
            operation,
            caller,
            request_parameters=cloudtrail_members(request, operation_model.input_shape) or None,
            response_elements=None if error is not None or not response else cloudtrail_members(response, output_shape),
            request_id=str(uuid.uuid4()),
        )
        if error is not None:
            record["errorCode"], record["errorMessage"] = error.code, error.message
        record.update({"readOnly": False, "eventType": "AwsApiCall", "managementEvent": True,
                       "recipientAccountId": self.account, "eventCategory": "Management"})  # fmt: skip
        self._publish("aws.elasticmapreduce", record)
        return record

    def states_call(
        self,
        operation: str,
        request: dict[str, Any],
        response: dict[str, Any] | None,
        *,
        caller: tuple[dict[str, Any], str, str],
    ) -> dict[str, Any] | None:
        """Record a successful Step Functions StopExecution (the call that ends a run by hand) as a management
        event of source `aws.states`. Other Step Functions calls are not recorded (nothing reads them)."""
        if operation != "StopExecution":
            return None
        # `error` and `cause` are sensitive members: CloudTrail omits them (an assumption; see module docstring).
        record = self._record(
            "states.amazonaws.com",
            operation,
            caller,
            request_parameters={"executionArn": request.get("executionArn")},
            response_elements=response or None,
            request_id=str(uuid.uuid4()),
        )
        record.update({"readOnly": False, "eventType": "AwsApiCall", "managementEvent": True,
                       "recipientAccountId": self.account, "eventCategory": "Management"})  # fmt: skip
        self._publish("aws.states", record)
        return record

    def s3_write(
        self,
        operation: str,
        bucket: str,
        key: str,
        *,
        caller: tuple[dict[str, Any], str, str],
        host: str,
        auth_method: str,
        extra_parameters: dict[str, Any] | None = None,
        response_headers: Mapping[str, Any] | None = None,
        bytes_in: int = 0,
        bytes_out: int = 0,
        request_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Record a successful object write as an S3 data event, if the bucket's data events are logged."""
        if operation not in S3_WRITES or not self.logs_data_events(bucket):
            return None
        headers = {k.lower(): v for k, v in (response_headers or {}).items()}
        echoed = {name: str(headers[name]) for name in _ECHOED_S3_HEADERS if headers.get(name)}
        record = self._record(
            "s3.amazonaws.com",
            operation,
            caller,
            request_parameters={"bucketName": bucket, "Host": host, "key": key, **(extra_parameters or {})},
            response_elements=echoed or None,
            request_id=request_id or uuid.uuid4().hex[:16].upper(),
        )
        record["additionalEventData"] = {
            "SignatureVersion": "SigV4",
            "bytesTransferredIn": bytes_in,
            "AuthenticationMethod": auth_method,
            "x-amz-id-2": base64.b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode("ascii"),
            "bytesTransferredOut": bytes_out,
        }
        record.update(
            {
                "readOnly": False,
                "resources": [
                    {"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{bucket}/{key}"},
                    {"accountId": self.account, "type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{bucket}"},
                ],
                "eventType": "AwsApiCall",
                "managementEvent": False,
                "recipientAccountId": self.account,
                "eventCategory": "Data",
            }
        )
        self._publish("aws.s3", record)
        return record

    def _record(
        self,
        event_source: str,
        event_name: str,
        caller: tuple[dict[str, Any], str, str],
        *,
        request_parameters: Any,
        response_elements: Any,
        request_id: str,
    ) -> dict[str, Any]:
        identity, source_ip, user_agent = caller
        return {
            "eventVersion": EVENT_VERSION,
            "userIdentity": identity,
            "eventTime": iso_now(),
            "eventSource": event_source,
            "eventName": event_name,
            "awsRegion": self.region,
            "sourceIPAddress": source_ip,
            "userAgent": user_agent,
            "requestParameters": request_parameters,
            "responseElements": response_elements,
            "requestID": request_id,
            "eventID": str(uuid.uuid4()),
        }

    def _publish(self, source: str, record: dict[str, Any]) -> None:
        # Events cross a JSON boundary in AWS: nothing shared with the caller's objects.
        record = json.loads(json.dumps(record, default=str))

        def deliver(timer: threading.Timer | None = None) -> None:
            with self._lock:
                if timer is not None and timer not in self._pending:
                    return  # cancelled
                self.events.append(record)
            self.emit({"source": source, "detail-type": DETAIL_TYPE, "time": record["eventTime"], "detail": record})
            if timer is not None:  # only now: the bus counts the event as in flight from emit() on
                with self._lock:
                    self._pending.discard(timer)

        if self.delay_seconds <= 0:
            deliver()
            return
        timer = threading.Timer(self.delay_seconds, lambda: deliver(timer))
        timer.daemon = True
        with self._lock:
            self._pending.add(timer)
        timer.start()
