"""Prepare one run: validate the execution input, resolve its inputs into a manifest, and fill in
the pipeline's defaults. This is the only Lambda invocation of a run.

Two kinds of execution input reach a workflow:

* from the router (S3 trigger)::

    {"pipeline": "sales-daily", "manifest": "s3://<artifacts>/manifests/...json", "object_count": 3,
     "trigger": {"type": "s3", ...}}

* from the router for a pipeline with `trigger.after` (its upstreams' runs succeeded): the same, with
  `trigger: {"type": "upstream", "after": [...], "upstream_runs": [{pipeline, run_id, ledger_uri}, ...]}`; the
  upstream runs become the ledger's `upstream_runs` (lineage) and the run event's.

* from an operator (console / CLI)::

    {"pipeline": "sales-daily", "inputs": ["s3://<landing>/sales/2024-06-01.csv", "s3://<landing>/sales/2024-06/"],
     "overrides": {"arguments": [...], "spark_submit_parameters": "...", "execution_timeout_minutes": 30}}

Invalid input is not an exception: the result says `valid: false` with an error naming the field,
and the workflow fails at once without starting anything.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from autopilot_common.admission import arrival_of
from autopilot_common.causes import cap_cause, shown
from autopilot_common.keys import skip_reason
from autopilot_common.ledger import SCHEMA_VERSION, STARTED, RunLedgerEntry, ledger_key
from autopilot_common.manifest import InputManifest, ManifestObject, manifest_key
from autopilot_common.run_events import UpstreamRun, run_event
from autopilot_common.s3uri import parse_s3_uri, s3_uri
from autopilot_common.tags import run_tags

if TYPE_CHECKING:
    from mypy_boto3_emr.literals import ClusterStateType

    from autopilot_common.clients import EMRClient, S3Client

INVALID_INPUT = "InvalidExecutionInput"
CLUSTER_UNAVAILABLE = "ClusterNotAvailable"
USABLE_CLUSTER_STATES: set[ClusterStateType] = {"WAITING", "RUNNING"}
_TOKEN = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
MAX_CONSOLE_INPUTS = 1000
MAX_OBJECTS = 100_000
ROUTER_KEYS = {"pipeline", "manifest", "object_count", "trigger", "overrides"}
CONSOLE_KEYS = {"pipeline", "inputs", "overrides", "rerun_of", "logical_date"}
# A run id (= an execution name: 1-80 characters, no whitespace, brackets, wildcards or control characters).
_RUN_ID = re.compile(r"^[A-Za-z0-9_.:=+@-]{1,80}$")
# A partition's logical date as `autopilot_common.logical_dates.label` writes it: a date, or a date-hour.
_LOGICAL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2})?$")
# Set by the router only: the arrival's time orders the admission queue and the ledger says what started the run.
ROUTER_ONLY_KEYS = {"trigger", "object_count"}
# The Spark conf that names the run in its Spark application (Spark UI, event logs). It also keeps the job's
# sparkSubmitParameters non-blank: EMR Serverless and EMR on EKS both refuse an empty or blank value (botocore
# models emr-serverless / emr-containers, SparkSubmitParameters: min length 1, pattern `.*\S.*`), so a pipeline
# without `spark_submit_parameters` would have every StartJobRun refused.
RUN_ID_CONF = "spark.emr-autopilot.run-id"

OVERRIDE_KEYS = {"arguments", "spark_submit_parameters", "execution_timeout_minutes"}
MAX_EXECUTION_TIMEOUT_MINUTES = 10080
# The task waits this much longer than EMR's own job timeout, so EMR's timeout fires first.
TASK_TIMEOUT_MARGIN_SECONDS = 600
# Without admission settings (a definition from before the caps): reserve one run, wait at most a day.
DEFAULT_ADMISSION = {"reservation": {"runs": 1, "clusters": 0, "vcpus": 0}, "queue_timeout_seconds": 86400}


class InvalidInput(ValueError):
    """The execution input is wrong; the message names the field and what is expected."""


@dataclass(frozen=True)
class PipelineSettings:
    """Per-pipeline settings, substituted into the state machine definition at synth."""

    pipeline: str
    runtime: str
    landing_bucket: str
    input_prefix: str
    artifacts_bucket: str
    outputs_bucket: str
    output_prefix: str
    logs_bucket: str
    entry_point: str
    arguments: list[str]
    spark_submit_parameters: str
    execution_timeout_minutes: int
    application_id: str
    steps: list[dict[str, Any]]  # emr-ec2: {name, timeout_seconds, max_attempts, retry_when, hadoop_jar_step}
    cluster_tags: dict[str, str]  # emr-ec2: tags every cluster of the pipeline carries
    existing_cluster: dict[str, str] | None  # emr-ec2 on a long-running cluster: {cluster_id} or {tag_key, tag_value}
    launch: dict[str, Any]  # emr-ec2: the first cluster launch (stacks.emr_ec2_spec.launch_settings)
    admission: dict[str, Any]  # {reservation: {runs, clusters, vcpus}, queue_timeout_seconds}: fixed at synth
    max_attempts: int = 1  # job-run runtimes: runtime.retry.max_attempts (the service retries within one job run)
    deployment: str = ""  # `<project>-<env>`: named in the run's event
    # `trigger.after`: its upstreams' output prefixes in the outputs bucket, which console runs (and reruns) may read
    upstream_outputs: tuple[str, ...] = ()

    @property
    def input_locations(self) -> list[tuple[str, str]]:
        """(bucket, key prefix) where console inputs may be: the landing input prefix, and for a pipeline run after
        others its upstreams' output folders (a rerun of a downstream run reads them again)."""
        return [(self.landing_bucket, self.input_prefix)] + [
            (self.outputs_bucket, f"{p}/") for p in self.upstream_outputs
        ]

    @property
    def is_ec2(self) -> bool:
        return self.runtime == "emr-ec2"

    @classmethod
    def from_payload(cls, raw: dict[str, Any]) -> PipelineSettings:
        """Parse the `settings` block of the Prepare payload (all values arrive as strings)."""
        try:
            arguments = json.loads(raw.get("arguments_json", "[]"))
            existing = json.loads(raw["existing_cluster_json"]) if raw.get("existing_cluster_json") else None
            return cls(
                pipeline=raw["pipeline"],
                runtime=raw["runtime"],
                landing_bucket=raw["landing_bucket"],
                input_prefix=raw["input_prefix"],
                artifacts_bucket=raw["artifacts_bucket"],
                outputs_bucket=raw["outputs_bucket"],
                output_prefix=raw["output_prefix"].strip("/"),
                logs_bucket=raw["logs_bucket"],
                entry_point=raw.get("entry_point", ""),
                arguments=[str(a) for a in arguments],
                spark_submit_parameters=raw.get("spark_submit_parameters", ""),
                execution_timeout_minutes=int(raw.get("execution_timeout_minutes", 0)),
                application_id=raw.get("application_id", ""),
                steps=list(json.loads(raw.get("steps_json", "[]"))),
                cluster_tags=dict(json.loads(raw.get("cluster_tags_json", "{}"))),
                existing_cluster=existing,
                launch=dict(json.loads(raw["launch_json"])) if raw["runtime"] == "emr-ec2" else {},
                admission=dict(json.loads(raw["admission_json"])) if raw.get("admission_json") else DEFAULT_ADMISSION,
                max_attempts=int(raw.get("max_attempts", 1)),
                deployment=raw.get("deployment", ""),
                upstream_outputs=tuple(str(p) for p in json.loads(raw.get("upstream_outputs_json") or "[]")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            # A deployment defect, not a user error: fail loudly.
            raise RuntimeError(f"state machine settings are incomplete or malformed: {exc!r}") from exc


def prepare_run(payload: dict[str, Any], s3: S3Client, emr: EMRClient | None = None) -> dict[str, Any]:
    """Validate and expand one execution's input; see the module docstring for the shapes.

    `emr` (a boto3 EMR client) is needed only by pipelines that run on a long-running cluster.
    """
    settings = PipelineSettings.from_payload(payload["settings"])
    execution = payload["execution"]
    try:
        result = _prepare(payload.get("input"), execution, settings, s3)
    except InvalidInput as exc:
        return {"valid": False, "error": INVALID_INPUT, "cause": cap_cause(str(exc), where="the execution's input")}
    if settings.is_ec2:
        result["cluster"] = {"ClusterId": None}
        if settings.existing_cluster is not None:
            if emr is None:
                raise TypeError("prepare_run: a pipeline on a long-running cluster needs `emr` to resolve it")
            cluster_id, problem = resolve_cluster(emr, settings.existing_cluster)
            result["cluster"] = {"ClusterId": cluster_id}
            result["run"]["ledger"]["cluster_id"] = cluster_id
            if problem is not None:
                result["cluster_problem"] = {"Error": CLUSTER_UNAVAILABLE, "Cause": problem}
    return result


def resolve_cluster(emr: EMRClient, target: dict[str, str]) -> tuple[str | None, str | None]:
    """(cluster id, None) for a usable long-running cluster, else (None, why not)."""
    if "cluster_id" in target:
        cluster_id = target["cluster_id"]
        try:
            state = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
        except emr.exceptions.ClientError as exc:
            return None, f"cluster {cluster_id}: {exc.response.get('Error', {}).get('Message', exc)}"
        if state not in USABLE_CLUSTER_STATES:
            return None, f"cluster {cluster_id} is {state}; expected one of {sorted(USABLE_CLUSTER_STATES)}"
        return cluster_id, None
    key, value = target["tag_key"], target["tag_value"]
    matches: list[tuple[Any, str]] = []
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=sorted(USABLE_CLUSTER_STATES)):
        for summary in page.get("Clusters", []):
            try:
                cluster = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"]
            except emr.exceptions.ClientError as exc:
                # The role may describe only clusters carrying the target's tag: AWS refuses the others, which
                # is the answer (not ours). Anything else is a real failure.
                if exc.response.get("Error", {}).get("Code") in ("AccessDeniedException", "AccessDenied"):
                    continue
                raise
            if any(t.get("Key") == key and t.get("Value") == value for t in cluster.get("Tags", [])):
                created = cluster["Status"].get("Timeline", {}).get("CreationDateTime")
                matches.append((created, cluster["Id"]))
    if not matches:
        return None, (
            f"no cluster tagged {key}={value} is in state {' or '.join(sorted(USABLE_CLUSTER_STATES))} "
            "(start the long-running cluster, or fix existing_cluster in config)"
        )
    if len(matches) > 1:
        ids = ", ".join(sorted(cid for _, cid in matches))
        return None, f"several clusters are tagged {key}={value} ({ids}); expected exactly one"
    return matches[0][1], None


def _prepare(raw: Any, execution: dict[str, str], settings: PipelineSettings, s3: S3Client) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"input: got {type(raw).__name__}; expected a JSON object like {_example(settings)}")
    pipeline = raw.get("pipeline")
    if pipeline != settings.pipeline:
        raise InvalidInput(
            f"pipeline: got {shown(pipeline)}; expected {settings.pipeline!r} "
            "(this state machine runs only that pipeline)"
        )
    run_id = execution["name"]
    overrides = _overrides(raw.get("overrides", {}))  # validated before anything is written
    if settings.is_ec2 and "execution_timeout_minutes" in overrides:
        raise InvalidInput(
            "overrides.execution_timeout_minutes: applies to emr-serverless and emr-eks pipelines; an emr-ec2 "
            "pipeline's time is runtime.startup_timeout_minutes and each step's timeout_minutes in config"
        )
    if "manifest" in raw:
        _reject_unknown(raw, ROUTER_KEYS, "input")
        manifest_uri, object_count = _router_manifest(raw, settings, run_id)
        trigger = raw.get("trigger") or {"type": "s3"}
        trigger, upstream_runs = _lineage(trigger)
    else:
        forged = sorted(ROUTER_ONLY_KEYS & set(raw))
        if forged:
            raise InvalidInput(
                f"{', '.join(forged)}: set by the router only; console input may not carry it "
                f"(expected only {sorted(CONSOLE_KEYS)})"
            )
        _reject_unknown(raw, CONSOLE_KEYS, "input")
        if "inputs" not in raw:
            raise InvalidInput(f"inputs: required; expected a list of S3 URIs, e.g. {_example(settings)}")
        objects = _resolve_inputs(raw["inputs"], settings, s3)
        manifest = InputManifest(pipeline=settings.pipeline, run_id=run_id, objects=objects)
        manifest_uri = manifest.write(s3, settings.artifacts_bucket)
        object_count = manifest.object_count
        trigger, upstream_runs = {"type": "console"} | _rerun_of(raw) | _logical_date(raw), []
    return {
        "valid": True,
        "run": _run_record(run_id, execution, settings, manifest_uri, object_count, trigger, overrides, upstream_runs),
        "job": {"JobRunId": None},
    }


def _lineage(trigger: Any) -> tuple[dict[str, Any], list[UpstreamRun]]:
    """(the trigger without `upstream_runs`, the upstream runs): a run the router started after its upstreams
    (`type: upstream`) keeps its lineage once, at the top of its ledger entry."""
    if not isinstance(trigger, dict):
        raise InvalidInput(f"trigger: got {shown(trigger)}; expected an object")
    if trigger.get("type") != "upstream":
        return trigger, []
    runs = trigger.get("upstream_runs")
    fields = set(UpstreamRun.__annotations__)

    def well_formed(run: Any) -> bool:
        return isinstance(run, dict) and set(run) == fields and all(isinstance(v, str) for v in run.values())

    if not isinstance(runs, list) or not runs or not all(well_formed(r) for r in runs):
        raise InvalidInput(
            f"trigger.upstream_runs: got {shown(runs)}; expected a non-empty list of {{{', '.join(sorted(fields))}}}"
        )
    upstream = [UpstreamRun(pipeline=r["pipeline"], run_id=r["run_id"], ledger_uri=r["ledger_uri"]) for r in runs]
    return {k: v for k, v in trigger.items() if k != "upstream_runs"}, upstream


def _rerun_of(raw: dict[str, Any]) -> dict[str, str]:
    """`rerun_of`: the run id a console run runs again (`emr-autopilot rerun`), kept in the trigger and the ledger."""
    if "rerun_of" not in raw:
        return {}
    value = raw["rerun_of"]
    if not isinstance(value, str) or not _RUN_ID.match(value):
        raise InvalidInput(f"rerun_of: got {shown(value)}; expected a run id (an execution name)")
    return {"rerun_of": value}


def _logical_date(raw: dict[str, Any]) -> dict[str, str]:
    """`logical_date`: the partition a console run covers (`emr-autopilot backfill` sets it), kept in the trigger and
    the ledger."""
    if "logical_date" not in raw:
        return {}
    value = raw["logical_date"]
    if not isinstance(value, str) or not _LOGICAL_DATE.match(value):
        raise InvalidInput(
            f"logical_date: got {shown(value)}; expected a date such as 2024-06-01 or a date-hour such as 2024-06-01T05"
        )
    return {"logical_date": value}


def _router_manifest(raw: dict[str, Any], settings: PipelineSettings, run_id: str) -> tuple[str, int]:
    """The router names a run's execution after its manifest (`manifests/<pipeline>/<run id>.json`): input that
    names another run's manifest is not the router's (a replay or a forgery) and is refused."""
    uri = raw["manifest"]
    try:
        bucket, key = parse_s3_uri(uri, field="manifest")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    expected_prefix = manifest_key(settings.pipeline, "").removesuffix(".json")
    if bucket != settings.artifacts_bucket or not key.startswith(expected_prefix):
        raise InvalidInput(
            f"manifest: got {shown(uri)}; "
            f"expected a manifest under {s3_uri(settings.artifacts_bucket, expected_prefix)}"
        )
    if key != manifest_key(settings.pipeline, run_id):
        raise InvalidInput(
            f"manifest: got {shown(uri)}; expected this run's own manifest "
            f"{s3_uri(settings.artifacts_bucket, manifest_key(settings.pipeline, run_id))} (the router names each "
            "execution after its manifest; to run objects again, start a console run with `inputs`)"
        )
    count = raw.get("object_count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InvalidInput(f"object_count: got {shown(count)}; expected a positive integer")
    return uri, count


def _resolve_inputs(inputs: Any, settings: PipelineSettings, s3: S3Client) -> list[ManifestObject]:
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(f"inputs: got {shown(inputs)}; expected a non-empty list of S3 URIs")
    if len(inputs) > MAX_CONSOLE_INPUTS:
        raise InvalidInput(
            f"inputs: got {len(inputs)} entries; expected at most {MAX_CONSOLE_INPUTS} (use a prefix ending in '/')"
        )
    locations = settings.input_locations
    allowed = " or ".join(s3_uri(b, k) for b, k in locations)
    seen: dict[str, ManifestObject] = {}
    for index, uri in enumerate(inputs):
        field = f"inputs[{index}]"
        try:
            bucket, key = parse_s3_uri(uri, field=field)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if not any(bucket == b and key.startswith(k) for b, k in locations):
            raise InvalidInput(
                f"{field}: got {shown(uri)}; expected an object or prefix under {allowed} "
                "(the job may read only its pipeline's inputs)"
            )
        found = _list_prefix(s3, bucket, key) if key.endswith("/") or key == "" else [_head(s3, bucket, key, field)]
        if not found:
            raise InvalidInput(
                f"{field}: no input objects under {shown(uri)} (hidden, temporary and empty files are skipped)"
            )
        for obj in found:
            seen.setdefault(obj.identity(), obj)
        if len(seen) > MAX_OBJECTS:
            raise InvalidInput(f"inputs: more than {MAX_OBJECTS} objects; split the run")
    return sorted(seen.values(), key=lambda o: (o.bucket, o.key))


def _head(s3: S3Client, bucket: str, key: str, field: str) -> ManifestObject:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"404", "NoSuchKey", "NotFound"}:
            raise InvalidInput(f"{field}: {s3_uri(bucket, key)!r} does not exist") from None
        raise
    return ManifestObject(
        bucket=bucket,
        key=key,
        size=int(head["ContentLength"]),
        etag=str(head.get("ETag", "")).strip('"'),
        version_id=head.get("VersionId"),
    )


def _list_prefix(s3: S3Client, bucket: str, prefix: str) -> list[ManifestObject]:
    objects: list[ManifestObject] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if skip_reason(item["Key"], int(item["Size"])) is None:
                objects.append(
                    ManifestObject(bucket=bucket, key=item["Key"], size=int(item["Size"]), etag=item["ETag"].strip('"'))
                )
    return objects


def _overrides(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"overrides: got {shown(raw)}; expected an object with keys {sorted(OVERRIDE_KEYS)}")
    _reject_unknown(raw, OVERRIDE_KEYS, "overrides")
    out: dict[str, Any] = {}
    if "arguments" in raw:
        args = raw["arguments"]
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise InvalidInput(f"overrides.arguments: got {shown(args)}; expected a list of strings")
        out["arguments"] = args
    if "spark_submit_parameters" in raw:
        params = raw["spark_submit_parameters"]
        if not isinstance(params, str) or len(params) > 10240:
            raise InvalidInput(
                f"overrides.spark_submit_parameters: got {shown(params)}; expected a string (<= 10240 chars)"
            )
        out["spark_submit_parameters"] = params
    if "execution_timeout_minutes" in raw:
        minutes = raw["execution_timeout_minutes"]
        if (
            not isinstance(minutes, int)
            or isinstance(minutes, bool)
            or not 1 <= minutes <= MAX_EXECUTION_TIMEOUT_MINUTES
        ):
            raise InvalidInput(
                f"overrides.execution_timeout_minutes: got {shown(minutes)}; "
                f"expected an integer from 1 to {MAX_EXECUTION_TIMEOUT_MINUTES}"
            )
        out["execution_timeout_minutes"] = minutes
    return out


def _reject_unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {unknown}; expected only {sorted(allowed)}")


def _run_record(
    run_id: str,
    execution: dict[str, str],
    settings: PipelineSettings,
    manifest_uri: str,
    object_count: int,
    trigger: dict[str, Any],
    overrides: dict[str, Any],
    upstream_runs: list[UpstreamRun],
) -> dict[str, Any]:
    started = datetime.fromisoformat(execution["start_time"].replace("Z", "+00:00"))
    run_prefix = f"{settings.output_prefix}/run_id={run_id}"
    output_uri = s3_uri(settings.outputs_bucket, run_prefix + "/")
    log_uri = s3_uri(settings.logs_bucket, f"{settings.runtime}/{settings.pipeline}/{run_id}/")
    key = ledger_key(settings.pipeline, started, run_id)
    timeout = overrides.get("execution_timeout_minutes", settings.execution_timeout_minutes)
    arguments = [
        "--manifest",
        manifest_uri,
        "--output",
        output_uri.rstrip("/"),
        "--run-id",
        run_id,
        *settings.arguments,
        *overrides.get("arguments", []),
    ]
    entry: RunLedgerEntry = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "pipeline": settings.pipeline,
        "state": STARTED,
        "trigger": trigger,
        "execution_arn": execution["id"],
        "input_manifest": manifest_uri,
        "object_count": object_count,
        "runtime": settings.runtime,
        "application_id": settings.application_id,
        "job_run_id": None,
        "started_at": execution["start_time"],
        "ended_at": None,
        "output_uri": output_uri,
        "log_uri": log_uri,
        "overrides": overrides,
        "metrics": None,
        "error": None,
        "cause": None,
        "admission": None,  # {queued_at, admitted_at, queued_seconds, waited} once AcquireRunSlot admits the run
    }
    if "rerun_of" in trigger:
        entry["rerun_of"] = str(trigger["rerun_of"])
    if isinstance(trigger.get("logical_date"), str):  # scheduled runs, backfills, arrivals in one partition
        entry["logical_date"] = trigger["logical_date"]
    if upstream_runs:
        entry["upstream_runs"] = upstream_runs
    record: dict[str, Any] = {
        "run_id": run_id,
        "pipeline": settings.pipeline,
        "runtime": settings.runtime,
        # Admission (AcquireRunSlot): the run's place in line, what it holds against the caps, how long it may wait.
        "arrival": arrival_of(trigger, execution["start_time"]),
        "reservation": settings.admission["reservation"],
        "queue_timeout_seconds": int(settings.admission["queue_timeout_seconds"]),
        "manifest_uri": manifest_uri,
        "object_count": object_count,
        "output_uri": output_uri,
        "outputs_bucket": settings.outputs_bucket,
        "success_key": f"{run_prefix}/_SUCCESS",
        "metrics_key": f"{run_prefix}/_metrics.json",
        "ledger_key": key,
        "ledger_uri": s3_uri(settings.outputs_bucket, key),
        "log_uri": log_uri,
        "job": {
            "name": run_id,
            "entry_point": settings.entry_point,
            "arguments": arguments,
            "spark_submit_parameters": job_spark_parameters(
                overrides.get("spark_submit_parameters", settings.spark_submit_parameters), run_id
            ),
            "execution_timeout_minutes": timeout,
            # EMR on EKS has no job timeout of its own: the workflow's task timeout is the job's. The timeout is per
            # attempt: the workflow waits on the one job run through every attempt of its retry policy.
            "task_timeout_seconds": timeout * 60 * settings.max_attempts
            + (0 if settings.runtime == "emr-eks" else TASK_TIMEOUT_MARGIN_SECONDS),
        },
        "ledger": entry,
    }
    if settings.is_ec2:
        record |= _ec2_parts(run_id, execution, settings, manifest_uri, output_uri, log_uri, overrides)
        entry |= {"application_id": None, "cluster_id": None, "steps": []}
    elif settings.runtime == "emr-eks":  # its container is a virtual cluster (the ledger's field for it; links use it)
        entry |= {"application_id": None, "virtual_cluster_id": settings.application_id}
    # What the run's event says of its start; the workflow's last states add its end and publish it (run_events).
    record["event"] = run_event(
        deployment=settings.deployment, entry=entry, execution_arn=execution["id"], ledger_uri=record["ledger_uri"]
    )
    return record


def job_spark_parameters(configured: str, run_id: str) -> str:
    """The job run's sparkSubmitParameters: the configured (or overridden) ones, then the run id's conf."""
    return f"{configured.strip()} --conf {RUN_ID_CONF}={run_id}".strip()


def _ec2_parts(
    run_id: str,
    execution: dict[str, str],
    settings: PipelineSettings,
    manifest_uri: str,
    output_uri: str,
    log_uri: str,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """The run's cluster name, log URI and tags, and its steps with every `{{token}}` filled in."""
    tokens = {
        "manifest": manifest_uri,
        "output": output_uri.rstrip("/"),
        "run_id": run_id,
        "input": s3_uri(settings.landing_bucket, settings.input_prefix),
        "logs": log_uri,
    }
    steps = []
    for template in settings.steps:
        jar_step = dict(template["hadoop_jar_step"])
        args = [_fill(str(a), tokens) for a in jar_step.get("Args", [])]
        if args[:1] == ["spark-submit"]:
            args = _spark_overrides(args, overrides)
        jar_step["Args"] = args
        steps.append(
            {
                "name": step_name(run_id, template["name"]),
                "timeout_seconds": int(template["timeout_seconds"]),
                "max_attempts": int(template.get("max_attempts", 1)),  # runtime.retry: RunSteps re-submits on these
                "retry_when": [str(c) for c in template.get("retry_when") or []],
                "hadoop_jar_step": jar_step,
            }
        )
    tags = run_tags(settings.cluster_tags, run_id=run_id, execution=execution["id"])
    return {
        "cluster": {
            "name": f"autopilot {settings.pipeline} {run_id}"[:256],
            "log_uri": log_uri,
            "tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())],
        },
        "steps": steps,
        "step_names": [s["name"] for s in steps],
        # RunSteps skips steps before resume_from and gives the first step on a cluster startup_seconds more;
        # ClassifyClusterFailure replaces it when a failed cluster is relaunched (runtime.retry).
        "launch": settings.launch,
    }


def step_name(run_id: str, name: str) -> str:
    """A step's name on the cluster: the run id first, so a shared cluster's step list says whose it is."""
    return f"{run_id}: {name}"


def _fill(text: str, tokens: dict[str, str]) -> str:
    """Replace each `{{token}}` by its value (values are literal: no regex escapes are interpreted)."""

    def value_of(match: re.Match[str]) -> str:
        return tokens.get(match.group(1), match.group(0))

    return _TOKEN.sub(value_of, text)


def _spark_overrides(args: list[str], overrides: dict[str, Any]) -> list[str]:
    """Console overrides for a spark-submit step: parameters before the entry point, arguments at the end."""
    params = shlex.split(overrides.get("spark_submit_parameters", ""))
    if params:
        args = [args[0], *params, *args[1:]]
    return [*args, *overrides.get("arguments", [])]


def _example(settings: PipelineSettings) -> str:
    uri = s3_uri(settings.landing_bucket, settings.input_prefix + "...")
    return json.dumps({"pipeline": settings.pipeline, "inputs": [uri]})
