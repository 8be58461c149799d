"""Names and constants shared by the constructs (one place, so the handlers and the twin agree with the
infrastructure); tag keys, the ledger layout and the metrics namespace come from the kernel (autopilot_common)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# The kernel's names, re-exported for the constructs: one home each (autopilot_common).
from autopilot_common.observability import METRICS_NAMESPACE as METRICS_NAMESPACE
from autopilot_common.pipeline_settings import settings_parameter_name as settings_parameter_name
from autopilot_common.pipeline_settings import settings_path as settings_path
from autopilot_common.tags import TAG_DEPLOYMENT as TAG_DEPLOYMENT
from autopilot_common.tags import TAG_PIPELINE as TAG_PIPELINE

if TYPE_CHECKING:
    from config.model import AppConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
LAMBDAS_DIR = REPO_ROOT / "lambdas"
STATEMACHINES_DIR = REPO_ROOT / "statemachines"
JOBS_DIR = REPO_ROOT / "jobs"
BOOTSTRAP_DIR = REPO_ROOT / "bootstrap"

JOBS_PREFIX = "jobs/"
BOOTSTRAP_PREFIX = "bootstrap/"
MANIFESTS_PREFIX = "manifests/"

POWERTOOLS_LAYER_ACCOUNT = "017000801446"
POWERTOOLS_LAYER_NAME = "AWSLambdaPowertoolsPythonV3-python314-x86_64"


def deployment_name(project: str, env: str) -> str:
    """`autopilot-dev`: prefix of every physical name and the stack name."""
    return f"{project}-{env}"


# Pipeline stacks: `<deployment>-pipelines-<n>`, n in 1..`pipeline_stacks` (config), each a bounded share of the
# pipelines.
PIPELINE_STACK_INFIX = "pipelines"
# Measured (tests/infra/test_stack_limits.py): a pipeline adds at most ~28 KB of template and ~14 resources; 25 per
# stack keeps the largest pipeline stack under 80 % of CloudFormation's 1 MB template and 500 resources.
MAX_PIPELINES_PER_STACK = 25


def pipeline_stack_name(deployment: str, index: int) -> str:
    """`autopilot-dev-pipelines-3`: the stack holding the pipelines hashed to bucket `index` (1-based)."""
    return f"{deployment}-{PIPELINE_STACK_INFIX}-{index}"


def pipeline_stack_index(pipeline: str, stacks: int) -> int:
    """Which pipeline stack (1..`stacks`) holds `pipeline`: a stable hash of its name alone, so adding or removing
    another pipeline never moves it (changing `stacks` does: that is a migration)."""
    digest = hashlib.sha256(pipeline.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % stacks + 1


def pipeline_stacks(config: AppConfig) -> dict[int, list[str]]:
    """The pipeline stacks that hold pipelines: stack index -> its pipelines' names (config order)."""
    stacks: dict[int, list[str]] = {}
    for name in config.pipelines:
        stacks.setdefault(pipeline_stack_index(name, config.pipeline_stacks), []).append(name)
    return stacks


def input_prefix(pipeline_name: str, trigger_prefix: str | None) -> str:
    """What a pipeline's job may read in the landing bucket: its trigger prefix, else `<pipeline>/`."""
    return trigger_prefix if trigger_prefix is not None else f"{pipeline_name}/"


# --------------------------------------------------------------------------- generated physical names
#
# Every physical name the app derives from the project, the environment and a pipeline's name is built here, and
# config validation (`config.loader`) checks each against its service's limit before CDK sees it: a name that
# overflows fails `cdk synth` with one line naming the pipeline, the generated name and the limit (issue 13.5).


@dataclass(frozen=True)
class NameLimit:
    """A service's limit on one kind of name, and where it is stated."""

    what: str
    max_length: int
    reference: str


# Limits from botocore's service models (min/max of the API member) where the model states them, else the service's
# quota page; tests/unit/test_names.py checks the model-backed ones against the pinned botocore.
LIMITS: dict[str, NameLimit] = {
    "stack": NameLimit("CloudFormation stack name", 128, "CloudFormation CreateStack StackName (quotas page)"),
    "function": NameLimit("Lambda function name", 64, "Lambda CreateFunction FunctionName: 64 for a bare name"),
    "queue": NameLimit("SQS queue name", 80, "SQS CreateQueue QueueName (up to 80 characters)"),
    "rule": NameLimit("EventBridge rule name", 64, "events PutRule Name"),
    "state_machine": NameLimit("Step Functions state machine name", 80, "states CreateStateMachine name"),
    "execution": NameLimit("Step Functions execution name (run id)", 80, "states StartExecution name"),
    "log_group": NameLimit("CloudWatch Logs log group name", 512, "logs CreateLogGroup logGroupName"),
    "role": NameLimit("IAM role name", 64, "iam CreateRole RoleName"),
    "instance_profile": NameLimit("IAM instance profile name", 128, "iam CreateInstanceProfile InstanceProfileName"),
    "alarm": NameLimit("CloudWatch alarm name", 255, "cloudwatch PutMetricAlarm AlarmName"),
    "serverless_application": NameLimit("EMR Serverless application name", 64, "emr-serverless CreateApplication name"),
    "virtual_cluster": NameLimit("EMR on EKS virtual cluster name", 64, "emr-containers CreateVirtualCluster name"),
    "topic": NameLimit("SNS topic name", 256, "SNS CreateTopic Name (quotas page)"),
    "table": NameLimit("DynamoDB table name", 255, "DynamoDB naming rules (3-255 characters)"),
    "dashboard": NameLimit("CloudWatch dashboard name", 255, "cloudwatch PutDashboard DashboardName (user guide)"),
    "trail": NameLimit("CloudTrail trail name", 128, "CloudTrail CreateTrail Name (3-128 characters)"),
    "schedule": NameLimit("EventBridge Scheduler schedule name", 64, "scheduler CreateSchedule Name"),
    "parameter": NameLimit("SSM parameter name", 1011, "ssm PutParameter Name: 1011 for the fully qualified name"),
}

# The app's functions (FunctionFactory refuses another name, so this list and the template agree).
FUNCTION_NAMES = ("router", "prepare", "admission", "finalize", "guardrail", "scaler")
# `upstream`: the rule on the run events of a pipeline's upstreams (`trigger.after`).
ARRIVAL_RULE_SUFFIXES = {"eventbridge": "object-created", "cloudtrail": "data-event", "upstream": "upstream-runs"}
# A pipeline's EventBridge Scheduler schedules: `trigger.schedule` and `trigger.expect`.
SCHEDULE_SUFFIXES = {"scheduled": "schedule", "deadline": "deadline"}
# EMR cluster ids are `j-` and 13 characters; run ids end in `-` and 24 hex characters (autopilot_common.names).
CLUSTER_ID_LENGTH = 15
RUN_ID_SUFFIX_LENGTH = 25


def function_name(deployment: str, function: str) -> str:
    if function not in FUNCTION_NAMES:
        raise ValueError(f"function {function!r} is not one of the app's functions {FUNCTION_NAMES}")
    return f"{deployment}-{function}"


def arrivals_queue_name(deployment: str, pipeline: str) -> str:
    return f"{deployment}-{pipeline}-arrivals"


def arrival_rule_name(deployment: str, pipeline: str, source: str) -> str:
    """The rule that routes a pipeline's landing objects seen by `source` (`eventbridge` or `cloudtrail`), or its
    upstreams' run events (`upstream`)."""
    return f"{deployment}-{pipeline}-{ARRIVAL_RULE_SUFFIXES[source]}"


def schedule_name(deployment: str, pipeline: str, kind: str) -> str:
    """The Scheduler schedule of a pipeline's `kind` of firing (`scheduled` runs or arrival `deadline`s)."""
    return f"{deployment}-{pipeline}-{SCHEDULE_SUFFIXES[kind]}"


def state_machine_name(deployment: str, pipeline: str) -> str:
    return f"{deployment}-{pipeline}"


def state_machine_log_group(deployment: str, pipeline: str) -> str:
    return f"/aws/vendedlogs/states/{state_machine_name(deployment, pipeline)}"


def workflow_role_name(deployment: str, pipeline: str) -> str:
    """The workflow's role: named, so the platform stack knows its ARN without a reference to the pipeline stack."""
    return f"{deployment}-{pipeline}-workflow"


def instance_profile_name(deployment: str, pipeline: str) -> str:
    return f"{deployment}-{pipeline}-ec2"


def eks_job_role_name(deployment: str, pipeline: str) -> str:
    return f"{deployment}-{pipeline}-eks-job"


def serverless_application_name(deployment: str, application: str) -> str:
    """A shared application (by its config name) or a pipeline's inline one (by the pipeline's name)."""
    return f"{deployment}-{application}"


def virtual_cluster_name(deployment: str, pipeline: str) -> str:
    return f"{deployment}-{pipeline}"


def scaling_alarm_name(deployment: str, pipeline: str, cluster_id: str, direction: str, rule: str) -> str:
    """`<deployment>-scaling-<pipeline>-<cluster id>-<out|in>-<rule>` (the workflow formats it the same way)."""
    return f"{deployment}-scaling-{pipeline}-{cluster_id}-{direction}-{rule}"


@dataclass(frozen=True)
class DeploymentNames:
    """The names a deployment (`<project>-<env>`) gives its own resources, one per resource."""

    deployment: str

    @property
    def dead_letters(self) -> str:
        return f"{self.deployment}-trigger-dlq"

    @property
    def dead_letters_alarm(self) -> str:
        return f"{self.deployment}-dead-letters"

    @property
    def topic(self) -> str:
        return f"{self.deployment}-notifications"

    @property
    def idempotency_table(self) -> str:
        return f"{self.deployment}-idempotency"

    @property
    def admission_table(self) -> str:
        return f"{self.deployment}-admission"

    @property
    def dashboard(self) -> str:
        return f"{self.deployment}-operations"

    @property
    def trail(self) -> str:
        return f"{self.deployment}-guardrails"

    def all(self) -> list[tuple[str, str]]:
        """(kind, name) of every one of them, the stack and the functions included."""
        return [
            ("stack", self.deployment),
            *(("function", function_name(self.deployment, f)) for f in FUNCTION_NAMES),
            ("queue", self.dead_letters),
            ("alarm", self.dead_letters_alarm),
            ("topic", self.topic),
            ("table", self.idempotency_table),
            ("table", self.admission_table),
            ("dashboard", self.dashboard),
            ("trail", self.trail),
        ]


def name_problems(kind: str, name: str) -> str | None:
    """Why `name` cannot be a `kind` name, or None."""
    limit = LIMITS[kind]
    if len(name) > limit.max_length:
        return (
            f"generates the {limit.what} {name!r} ({len(name)} characters); expected at most {limit.max_length} "
            f"({limit.reference})"
        )
    return None
