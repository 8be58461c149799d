"""The twin's IAM: every call an app principal makes is authorized as AWS would, or refused with AWS's error.

Who is evaluated, the request context, `enabled = False`: docs/twin/iam.md ("Who is evaluated").
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from local.iam.operations import Authorization, UnmappedOperation, authorizations
from local.iam.policy import Caller, Context, ContextValue, Decision, Policy, Request, evaluate

LOG = logging.getLogger("twin.iam")

# How each service refuses (error code, HTTP status), as its API reference documents AccessDenied.
DENIAL_SHAPES: dict[str, tuple[str, int]] = {
    "s3": ("AccessDenied", 403),
    "sqs": ("AccessDenied", 403),
    "sns": ("AuthorizationError", 403),
    "cloudwatch": ("AccessDenied", 403),
    "iam": ("AccessDenied", 403),
    "sts": ("AccessDenied", 403),
    "lambda": ("AccessDeniedException", 403),
    "emr-serverless": ("AccessDeniedException", 403),
    "emr-containers": ("AccessDeniedException", 403),
}
DEFAULT_DENIAL = ("AccessDeniedException", 400)  # DynamoDB, Step Functions, EMR, EventBridge, CloudWatch Logs
# The SDK's service name in an integration's cause: "(Service: <name>; Status Code: ...)".
SDK_SERVICE_NAMES = {
    "emr": "AmazonElasticMapReduce",
    "emr-serverless": "EmrServerless",
    "emr-containers": "EMRContainers",
    "lambda": "AWSLambda",
}


class AccessDenied(Exception):
    """A call AWS would refuse: `code` and `status` as the service says it, `message` in AWS's wording."""

    def __init__(self, service: str, decision: Decision) -> None:
        self.service = service
        self.decision = decision
        self.code, self.status = DENIAL_SHAPES.get(service, DEFAULT_DENIAL)
        self.message = decision.message()
        self.request_id = str(uuid.uuid4())
        super().__init__(self.message)

    def integration_cause(self) -> str:
        """The cause a Step Functions optimized integration reports for this refusal."""
        sdk = SDK_SERVICE_NAMES.get(self.service, self.service)
        return (
            f"{self.message} (Service: {sdk}; Status Code: {self.status}; Error Code: {self.code}; "
            f"Request ID: {self.request_id}; Proxy: null)"
        )


@dataclass
class Denial:
    """One refused (or, with enforcement off, one let-through) authorization."""

    caller: str
    action: str
    resource: str
    message: str
    enforced: bool
    at: float = field(default_factory=time.time)


@dataclass
class Stats:
    """What the enforcer did: calls and authorizations checked, statements evaluated, refusals."""

    calls: int = 0
    authorizations: int = 0
    statements_evaluated: int = 0
    denials: list[Denial] = field(default_factory=list)
    by_operation: Counter[str] = field(default_factory=Counter)
    unmapped: list[str] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "authorizations": self.authorizations,
            "statements_evaluated": self.statements_evaluated,
            "denials": len(self.denials),
            "operations": len(self.by_operation),
            "unmapped": list(self.unmapped),
        }


class IamEnforcer:
    """Authorizes app principals' calls in the twin (see the module docstring)."""

    def __init__(
        self,
        *,
        account: str,
        region: str,
        iam_backend: Callable[[], Any],
        resource_tags: Callable[[str], Mapping[str, str] | None],
        live_policy: Callable[[str], str | None] | None = None,
        enabled: bool = True,
    ) -> None:
        self.account = account
        self.region = region
        self.enabled = enabled
        self.stats = Stats()
        self._iam_backend = iam_backend
        self._resource_tags = resource_tags
        self._live_policy = live_policy  # a resource's policy as its service holds it now (e.g. a queue's Policy)
        self._identity: dict[str, list[Policy]] = {}
        self._resource_policies: dict[str, list[Policy]] = {}  # resource ARN (or ARN prefix) -> its policies
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ principals

    def is_app_role(self, role_arn: str | None) -> bool:
        """A role the twin's IAM holds (one the deployed templates created)."""
        return bool(role_arn) and self._role(str(role_arn)) is not None

    def caller_for_session(self, session_arn: str, role_arn: str) -> Caller:
        return Caller(arn=session_arn, account=self.account, role_arn=role_arn)

    def service_caller(self, service: str) -> Caller:
        return Caller(arn=service, account=self.account, service=service)

    # ------------------------------------------------------------------ policies

    def invalidate(self) -> None:
        """Forget cached identity policies (after an IAM write)."""
        with self._lock:
            self._identity.clear()

    def add_resource_policy(self, resource_arn: str, name: str, document: Mapping[str, Any] | str) -> None:
        """Register a resource-based policy: a bucket policy (`arn:aws:s3:::<bucket>`, covering its objects), a
        queue or topic policy (the queue / topic ARN), a Lambda permission (the function ARN)."""
        policy = Policy.parse(f"resource:{name}", document, resource_based=True)
        with self._lock:
            self._resource_policies.setdefault(resource_arn, []).append(policy)

    def _role(self, role_arn: str) -> Any:
        name = role_arn.rsplit("/", 1)[-1]
        try:
            return self._iam_backend().get_role(name)
        except Exception:  # moto raises its NoSuchEntity
            return None

    def identity_policies(self, role_arn: str) -> list[Policy]:
        """The role's inline and attached managed policies, as the twin's IAM holds them now."""
        with self._lock:
            cached = self._identity.get(role_arn)
        if cached is not None:
            return cached
        role = self._role(role_arn)
        policies: list[Policy] = []
        if role is not None:
            for name, document in sorted(role.policies.items()):
                policies.append(Policy.parse(f"{role.name}/{name}", document))
            for arn, managed in sorted(role.managed_policies.items()):
                document = next((v.document for v in managed.versions if v.is_default), None)
                if document:
                    policies.append(Policy.parse(f"{role.name}/{arn.rsplit('/', 1)[-1]}", document))
        with self._lock:
            self._identity[role_arn] = policies
        return policies

    def resource_policy(self, resource: str) -> Policy | None:
        """The resource-based policy that governs `resource` (an S3 object falls under its bucket's policy)."""
        candidates = [resource]
        if resource.startswith("arn:aws:s3:::"):
            candidates.append("arn:aws:s3:::" + resource[len("arn:aws:s3:::") :].split("/", 1)[0])
        elif resource.startswith("arn:aws:lambda:"):
            candidates.append(":".join(resource.split(":")[:7]))  # a qualified ARN falls under the function's policy
        with self._lock:
            found = [p for c in candidates for p in self._resource_policies.get(c, [])]
        live = self._live_policy(resource) if self._live_policy is not None else None
        if live:
            found.append(Policy.parse(f"resource:policy of {resource}", live, resource_based=True))
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        statements = tuple(s for p in found for s in p.statements)
        return Policy(name=found[0].name, statements=statements, resource_based=True)

    # ------------------------------------------------------------------ decisions

    def check(self, caller: Caller, service: str, operation: str, params: Mapping[str, Any], lookups: Any) -> None:
        """Authorize one API call of an app principal; AccessDenied when AWS would refuse it.

        UnmappedOperation (recorded in `stats.unmapped`) when the operation table does not know the call.
        """
        try:
            needed = authorizations(service, operation, params, lookups)
        except UnmappedOperation:
            self.stats.unmapped.append(f"{service}:{operation}")
            raise
        self.stats.calls += 1
        self.stats.by_operation[f"{service}:{operation}"] += 1
        for authorization in needed:
            self.authorize(caller, authorization, service=service)

    def authorize(self, caller: Caller, authorization: Authorization, *, service: str) -> Decision:
        """One action on one resource: the decision, or AccessDenied (unless enforcement is off)."""
        decision = self.decide(caller, authorization)
        if decision.allowed:
            return decision
        denial = Denial(caller.arn, authorization.action, authorization.resource, decision.message(), self.enabled)
        self.stats.denials.append(denial)
        if not self.enabled:
            LOG.warning("IAM ENFORCEMENT IS OFF: AWS would refuse this call: %s", denial.message)
            return decision
        LOG.info("AccessDenied: %s", denial.message)
        raise AccessDenied(service, decision)

    def decide(self, caller: Caller, authorization: Authorization) -> Decision:
        """The decision alone (no exception, no denial recorded)."""
        request = Request(
            caller=caller,
            action=authorization.action,
            resource=authorization.resource,
            context=Context({**self._base_context(caller), **authorization.context}, self._resolver(authorization)),
        )
        identity = [] if caller.service or not caller.role_arn else self.identity_policies(caller.role_arn)
        decision = evaluate(request, identity, self.resource_policy(authorization.resource))
        self.stats.authorizations += 1
        self.stats.statements_evaluated += decision.statements_evaluated
        return decision

    def allows(self, caller: Caller, authorization: Authorization) -> bool:
        return self.decide(caller, authorization).allowed

    def _base_context(self, caller: Caller) -> dict[str, ContextValue]:
        now = datetime.now(UTC)
        context: dict[str, ContextValue] = {
            "aws:PrincipalAccount": self.account,
            "aws:RequestedRegion": self.region,
            "aws:CurrentTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "aws:EpochTime": str(int(now.timestamp())),
            "aws:SecureTransport": "true",
        }
        if caller.service:
            context |= {
                "aws:PrincipalServiceName": caller.service,
                "aws:PrincipalIsAWSService": "true",
                "aws:SourceAccount": self.account,
            }
        elif caller.role_arn:
            role_name = caller.role_arn.rsplit("/", 1)[-1]
            session = caller.arn.rsplit("/", 1)[-1]
            context |= {
                "aws:PrincipalArn": caller.role_arn,
                "aws:PrincipalType": "AssumedRole",
                "aws:userid": f"{self._role_id(role_name)}:{session}",
                "aws:PrincipalIsAWSService": "false",
            }
        return context

    def _role_id(self, role_name: str) -> str:
        role = self._role(role_name)
        return str(getattr(role, "id", role_name))

    def _resolver(self, authorization: Authorization) -> Callable[[str], ContextValue]:
        def resolve(key: str) -> ContextValue:
            lowered = key.lower()
            if "resourcetag/" not in lowered:
                return None
            tags = self._resource_tags(authorization.resource) if authorization.resource != "*" else None
            if tags is None:
                return None
            tag_key = key.split("/", 1)[1]
            if tag_key in tags:
                return tags[tag_key]
            return next((v for k, v in tags.items() if k.lower() == tag_key.lower()), None)

        return resolve


def policy_json(document: Any) -> dict[str, Any]:
    """A policy document given as a JSON string or a dict."""
    return dict(json.loads(document) if isinstance(document, str) else document)
