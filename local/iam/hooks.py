"""Where the twin asks its IAM: the HTTP front door (moto's responses), S3 requests, and the twin's own models.

- `TwinLookups`: names -> ARNs from the twin's IAM (roles, instance profiles), for the operation table.
- `resource_tags(twin, arn)`: the tags of a resource the twin knows (EMR clusters, EMR Serverless applications and
  job runs, EMR on EKS virtual clusters and job runs, CloudWatch alarms, state machines).
- `caller_for_key(twin, key)`: the app principal behind an access key id (None: not an app principal).
- `authorize_http(twin, response, action)`: a JSON/query/REST call served by moto; an error response when refused.
- `authorize_s3(twin, request, full_url)`: an S3 REST request; an S3 XML error response when refused, including
  S3's 403 for a missing object when the caller may not list it.
"""

from __future__ import annotations

import json
import logging
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

from local.cloudtrail import access_key_id_from
from local.iam.enforcer import AccessDenied, IamEnforcer
from local.iam.operations import Authorization, UnmappedOperation
from local.iam.policy import Caller
from local.validation import validation_errors, validation_message

if TYPE_CHECKING:
    from local.twin import Twin

LOG = logging.getLogger("twin.iam")

# moto's response service names -> botocore's (the operation table's keys).
_BOTOCORE_NAMES = {"awslambda": "lambda"}


class TwinLookups:
    """Names -> ARNs from the twin's IAM, for the operation table."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin
        self.account = twin.account
        self.region = twin.region

    def _iam(self) -> Any:
        from moto.iam.models import iam_backends

        return iam_backends[self.account]["global"]

    def role_arn(self, name_or_arn: str) -> str:
        if name_or_arn.startswith("arn:"):
            return name_or_arn
        try:
            return str(self._iam().get_role(name_or_arn).arn)
        except Exception:
            return f"arn:aws:iam::{self.account}:role/{name_or_arn}"

    def role_exists(self, name: str) -> bool:
        try:
            self._iam().get_role(name)
        except Exception:  # moto's NoSuchEntity
            return False
        return True

    def instance_profile_roles(self, name_or_arn: str) -> list[str]:
        name = name_or_arn.rsplit("/", 1)[-1]
        try:
            profile = self._iam().get_instance_profile(name)
        except Exception:
            return []
        return [str(role.arn) for role in profile.roles]


def iam_backend(twin: Twin) -> Any:
    from moto.iam.models import iam_backends

    return iam_backends[twin.account]["global"]


def make_enforcer(twin: Twin, enabled: bool) -> IamEnforcer:
    return IamEnforcer(
        account=twin.account,
        region=twin.region,
        iam_backend=lambda: iam_backend(twin),
        resource_tags=lambda arn: resource_tags(twin, arn),
        live_policy=lambda arn: live_policy(twin, arn),
        enabled=enabled,
    )


def live_policy(twin: Twin, arn: str) -> str | None:
    """A resource's policy as its service holds it now: a queue's `Policy` attribute (set at deploy, or later
    with SetQueueAttributes). Bucket and topic policies and Lambda permissions are registered with the enforcer."""
    if not arn.startswith("arn:aws:sqs:"):
        return None
    from moto.sqs.models import sqs_backends

    try:
        queue = sqs_backends[twin.account][twin.region].get_queue(arn.rsplit(":", 1)[-1])
    except Exception:  # no such queue: no policy
        return None
    policy = getattr(queue, "policy", None)
    return str(policy) if policy else None


def resource_tags(twin: Twin, arn: str) -> Mapping[str, str] | None:
    """The tags of the resource `arn` names, for `aws:ResourceTag/*` (None: the twin does not know it)."""
    parts = arn.split(":", 5)
    if len(parts) != 6:
        return None
    service, resource = parts[2], parts[5]
    try:
        if service == "elasticmapreduce" and resource.startswith("cluster/"):
            cluster = twin.emr_ec2.clusters.get(resource.split("/")[1])
            return dict(cluster.tags) if cluster is not None else None
        if service == "emr-serverless":
            pieces = resource.strip("/").split("/")  # applications/<id>[/jobruns/<id>]
            if len(pieces) >= 4:
                tracked = twin.emr_serverless.runs.get((pieces[1], pieces[3]))
                return dict(tracked.moto_run.tags or {}) if tracked is not None else None
            return dict(twin.emr_serverless.backend.get_application(pieces[1]).tags or {})
        if service == "emr-containers":
            pieces = resource.strip("/").split("/")  # virtualclusters/<id>[/jobruns/<id>]
            if len(pieces) >= 4:
                run = twin.emr_containers.runs.get(pieces[3])
                return dict(run.tags) if run is not None else None
            virtual_cluster = twin.emr_containers.clusters.get(pieces[1])
            return dict(virtual_cluster.tags) if virtual_cluster is not None else None
        if service == "cloudwatch":
            from moto.cloudwatch.models import cloudwatch_backends

            return dict(cloudwatch_backends[twin.account][twin.region].list_tags_for_resource(arn))
        if service == "states":
            from moto.stepfunctions.models import stepfunctions_backends

            backend = stepfunctions_backends[twin.account][twin.region]
            return {t["key"]: t["value"] for t in backend.get_tags_list_for_state_machine(arn)}
    except Exception:  # an unknown or deleted resource has no tags
        return None
    return None


def caller_for_key(twin: Twin, access_key: str | None) -> Caller | None:
    """The app principal that signs with `access_key` (a session of a role the twin's IAM holds), else None."""
    principal = twin.cloudtrail.principal_of(access_key)
    if principal is None or not principal.role_arn or not twin.iam.is_app_role(principal.role_arn):
        return None
    return twin.iam.caller_for_session(principal.arn, principal.role_arn)


def botocore_name(response: Any) -> str:
    name = str(getattr(response, "service_name", "") or "")
    return _BOTOCORE_NAMES.get(name, name)


def request_params(response: Any, action: str) -> dict[str, Any]:
    """The API parameters (botocore member names) of the request behind a moto response object, parsed with
    botocore's model as moto parses them, but into plain dicts (moto's own parse snake-cases some services' keys)."""
    from moto.core.parse import PROTOCOL_PARSERS
    from moto.core.request import determine_request_protocol
    from moto.core.utils import get_service_model

    request = response.normalized_request
    service_model = get_service_model(response.boto3_service_name)
    operation_model = service_model.operation_model(action)
    parser = PROTOCOL_PARSERS[determine_request_protocol(service_model, request.content_type)]
    parsed = parser(operation_model, map_type=dict).parse(
        {
            "method": request.method,
            "values": request.values,
            "headers": request.headers,
            "body": request.data,
            "url_path": request.path,
            "url_params": getattr(response, "uri_match", None) or {},
        }
    )
    return dict(parsed)


def denial_response(response: Any, error: AccessDenied | UnmappedOperation) -> tuple[int, dict[str, str], str]:
    """The service's error response (its protocol, its code and status) for a refused or unmapped call."""
    from moto.core.exceptions import ServiceException
    from moto.core.responses import ActionResult

    if isinstance(error, AccessDenied):
        exception = ServiceException(error.code, error.message)
        status = error.status
    else:
        exception = ServiceException("InternalFailure", f"twin: {error}")
        status = 500
    try:
        _, headers, body = response.serialized(ActionResult(exception))
    except Exception:  # a protocol moto cannot serialize an error for: AWS's JSON error shape
        headers = {"Content-Type": "application/x-amz-json-1.1"}
        body = json.dumps({"__type": exception.code, "message": exception.message})
    headers["x-amzn-ErrorType"] = str(exception.code)
    headers.setdefault("x-amzn-RequestId", error.request_id if isinstance(error, AccessDenied) else str(uuid.uuid4()))
    return status, headers, body


def authorize_http(twin: Twin, response: Any, action: str) -> tuple[int, dict[str, str], str] | None:
    """Authorize and validate a moto-served call of an app principal: None when it may go on (or the caller is not
    an app principal), else the error response AWS would give (AccessDenied, or ValidationException for a request
    breaking its model's constraints, which AWS checks on the server and the SDK does not)."""
    key, _ = access_key_id_from(response.headers or {})
    caller = caller_for_key(twin, key)
    service = botocore_name(response)
    if service == "iam" and action.startswith(("Put", "Delete", "Attach", "Detach", "Update", "Create")):
        twin.iam.invalidate()  # an IAM write changes what later calls may do
    if caller is None:
        return None
    params = request_params(response, action)
    try:
        twin.iam.check(caller, service, action, params, TwinLookups(twin))
    except (AccessDenied, UnmappedOperation) as error:
        return denial_response(response, error)
    errors = validation_errors(service, action, params)
    if errors:
        return invalid_response(response, validation_message(errors))
    return None


def invalid_response(response: Any, message: str) -> tuple[int, dict[str, str], str]:
    """AWS's ValidationException (ValidationError for query-protocol services), in the service's protocol."""
    from moto.core.exceptions import ServiceException
    from moto.core.responses import ActionResult

    code = (
        "ValidationError" if botocore_name(response) in ("sns", "cloudwatch", "iam", "sts") else "ValidationException"
    )
    exception = ServiceException(code, message)
    try:
        _, headers, body = response.serialized(ActionResult(exception))
    except Exception:
        headers = {"Content-Type": "application/x-amz-json-1.1"}
        body = json.dumps({"__type": code, "message": message})
    headers["x-amzn-ErrorType"] = code
    headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))
    return 400, headers, body


# ------------------------------------------------------------------------------------------------------------- S3


def s3_operation(method: str, full_url: str, headers: Mapping[str, Any], body: bytes) -> tuple[str, dict[str, Any]]:
    """(API operation, parameters) of an S3 REST request (path-style, as the twin's clients send them)."""
    parsed = urlparse(full_url)
    query = parse_qs(parsed.query, keep_blank_values=True)
    bucket, _, raw_key = parsed.path.lstrip("/").partition("/")
    params: dict[str, Any] = {}
    if not bucket:
        if method == "GET":
            return "ListBuckets", params
        raise UnmappedOperation(f"s3 {method} / is not an operation the twin's IAM table knows")
    params["Bucket"] = unquote(bucket)

    def first(name: str) -> str | None:
        return query[name][0] if name in query else None

    if raw_key:
        params["Key"] = unquote(raw_key)
        if first("versionId"):
            params["VersionId"] = first("versionId")
        copy_source = headers.get("x-amz-copy-source")
        if copy_source:
            params["CopySource"] = unquote(str(copy_source))
        operation = _s3_object_operation(method, set(query), bool(copy_source))
    else:
        operation = _s3_bucket_operation(method, set(query))
        for api, name in (("Prefix", "prefix"), ("Delimiter", "delimiter"), ("MaxKeys", "max-keys")):
            if first(name) is not None:
                params[api] = first(name)
        if operation == "DeleteObjects":
            params["Delete"] = {"Objects": _deleted_keys(body)}
    return operation, params


def _s3_object_operation(method: str, query: set[str], copy: bool) -> str:
    subresources = query & {"tagging", "acl", "retention", "legal-hold", "attributes", "restore", "torrent"}
    if subresources:
        raise UnmappedOperation(f"s3 {method} object ?{sorted(subresources)[0]} is not in the twin's IAM table")
    if method == "GET":
        return "ListParts" if "uploadId" in query else "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    raise UnmappedOperation(f"s3 {method} object ?{sorted(query)} is not in the twin's IAM table")


def _s3_bucket_operation(method: str, query: set[str]) -> str:
    if method == "GET":
        if "versions" in query:
            return "ListObjectVersions"
        if "location" in query:
            return "GetBucketLocation"
        if query - {"list-type", "prefix", "delimiter", "max-keys", "continuation-token", "start-after", "marker",
                    "encoding-type", "fetch-owner"}:  # fmt: skip
            raise UnmappedOperation(f"s3 GET bucket ?{sorted(query)} is not in the twin's IAM table")
        return "ListObjectsV2" if "list-type" in query else "ListObjects"
    if method == "HEAD":
        return "HeadBucket"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    raise UnmappedOperation(f"s3 {method} bucket ?{sorted(query)} is not in the twin's IAM table")


def _deleted_keys(body: bytes) -> list[dict[str, str]]:
    if not body:
        return []
    root = ElementTree.fromstring(body)
    objects = []
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Object":
            continue
        entry = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in element}
        objects.append({k: v for k, v in entry.items() if k in ("Key", "VersionId")})
    return objects


def s3_error(code: str, message: str, status: int, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    request_id = uuid.uuid4().hex[:16].upper()
    headers = {"x-amz-request-id": request_id, "Content-Type": "application/xml"}
    if head:
        return status, headers, b""  # HEAD responses carry no body
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{_xml_escape(message)}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>{request_id}</HostId></Error>"
    )
    return status, headers, xml.encode()


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def authorize_s3(twin: Twin, request: Any, full_url: str) -> tuple[int, dict[str, str], bytes] | None:
    """Authorize an S3 request; None when allowed (or not an app principal), else S3's error response."""
    query = parse_qs(urlparse(full_url).query, keep_blank_values=True)
    key, _ = access_key_id_from(request.headers, query)
    caller = caller_for_key(twin, key)
    if caller is None:
        return None
    method = str(request.method)
    head = method == "HEAD"
    try:
        body = request.get_data(cache=True) if method == "POST" and "delete" in query else b""
        operation, params = s3_operation(method, full_url, request.headers, body)
        twin.iam.check(caller, "s3", operation, params, TwinLookups(twin))
    except AccessDenied as denied:
        return s3_error("AccessDenied", denied.message, 403, head=head)
    except UnmappedOperation as unmapped:
        return s3_error("InternalError", f"twin: {unmapped}", 500, head=head)
    if operation in ("GetObject", "HeadObject") and not _object_exists(twin, params):
        # S3 answers 404 for a missing key only to a caller who may list it; anyone else gets 403 (S3 user guide,
        # GetObject "Permissions"). The twin asks ListBucket with the key as `s3:prefix` (an approximation).
        listing = Authorization("s3:ListBucket", f"arn:aws:s3:::{params['Bucket']}", {"s3:prefix": params["Key"]})
        if not twin.iam.allows(caller, listing):
            return s3_error("AccessDenied", "Access Denied", 403, head=head)
    return None


def _object_exists(twin: Twin, params: Mapping[str, Any]) -> bool:
    from moto.s3.models import s3_backends

    try:
        bucket = s3_backends[twin.account]["aws"].buckets[params["Bucket"]]
    except KeyError:
        return True  # no bucket: let S3 say NoSuchBucket
    return params["Key"] in bucket.keys
