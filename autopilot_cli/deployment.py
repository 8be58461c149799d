"""Finding a deployment: `config/<env>.yaml` names the stack (and maybe its region), CloudFormation's stack outputs
name its buckets, state machines and topic.

Credentials and region come from the standard AWS chain (environment, `~/.aws/config` profiles, instance roles);
`--profile`, `--region` and `--endpoint-url` override it. A region in the config file wins over the chain's (the
stack lives there), `--region` over both. The twin is just another endpoint: `local up` registers the deployed
stack in the twin's CloudFormation, so `AWS_ENDPOINT_URL=<twin>` (or `--endpoint-url`) is all it takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from config.loader import ConfigError, load_config
from config.model import Pipeline
from stacks.naming import deployment_name, pipeline_stack_name, pipeline_stacks

STATE_MACHINE_OUTPUT = "StateMachine"  # + the pipeline's name without '-' (CDK drops it from output ids)


class DeploymentError(Exception):
    """The deployment cannot be found or read; the message says which and how to fix it."""


@dataclass(frozen=True)
class Target:
    """Where to look: the environment's name and the AWS chain's overrides (None: the chain decides)."""

    env: str = "dev"
    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None


@dataclass(kw_only=True)
class Deployment:
    """One deployed stack: its outputs, and clients in its account and region."""

    stack_name: str
    session: Any = field(repr=False)  # boto3's, from the standard chain
    region: str
    partition: str  # aws, aws-cn, aws-us-gov: the console's domain
    endpoint_url: str | None = None
    outputs: dict[str, str]
    pipelines: list[str]  # config/<env>.yaml's
    pipeline_configs: dict[str, Pipeline] = field(default_factory=dict)  # config/<env>.yaml's, by name
    applications: list[str] = field(default_factory=list)  # its shared EMR Serverless applications (by config name)

    def client(self, service: str) -> Any:
        return self.session.client(service, region_name=self.region, endpoint_url=self.endpoint_url)

    def output(self, key: str) -> str:
        value = self.outputs.get(key)
        if not value:
            raise DeploymentError(f"stack {self.stack_name} has no {key} output (outputs: {', '.join(self.outputs)})")
        return value

    @property
    def outputs_bucket(self) -> str:
        return self.output("OutputsBucket")

    @property
    def logs_bucket(self) -> str | None:
        return self.outputs.get("LogsBucket")

    def state_machines(self) -> dict[str, str]:
        """Pipeline name -> state machine ARN, for the pipelines the stack has a state machine for."""
        keys = {name: STATE_MACHINE_OUTPUT + name.replace("-", "") for name in self.pipelines}
        return {name: self.outputs[key] for name, key in keys.items() if self.outputs.get(key)}

    def pipeline_config(self, pipeline: str) -> Pipeline:
        """The pipeline's configuration (config/<env>.yaml), else DeploymentError naming the pipelines there are."""
        self.state_machine(pipeline)  # the same error for a pipeline the stack does not run
        return self.pipeline_configs[pipeline]

    def state_machine(self, pipeline: str) -> str:
        """The pipeline's state machine (exact names only), else DeploymentError naming the pipelines there are."""
        machines = self.state_machines()
        if pipeline not in machines:
            known = ", ".join(sorted(machines)) or "none"
            raise DeploymentError(f"pipeline {pipeline!r} not found; pipelines of {self.stack_name}: {known}")
        return machines[pipeline]


def execution_arn(state_machine_arn: str, name: str) -> str:
    """`arn:<partition>:states:<region>:<account>:execution:<state machine>:<name>`."""
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + ":" + name


def session_for(target: Target) -> Any:
    """A boto3 session from the standard chain, with `--profile` when given."""
    try:
        return boto3.Session(profile_name=target.profile) if target.profile else boto3.Session()
    except Exception as exc:  # botocore's ProfileNotFound and friends
        raise DeploymentError(str(exc)) from None


def _described(cloudformation: Any, stack_name: str) -> dict[str, Any] | None:
    """DescribeStacks of one stack, None when it does not exist."""
    try:
        (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return dict(stack)


def _outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])}


def find_deployment(target: Target) -> Deployment:
    """Read `config/<env>.yaml`, then DescribeStacks of the deployment's platform stack (buckets, topic) and of its
    pipeline stacks (the pipelines' state machines): one place that finds a deployment, on AWS or the twin."""
    try:
        config = load_config(target.env)
    except (ConfigError, FileNotFoundError) as exc:
        raise DeploymentError(f"--env {target.env}: {exc}") from None
    session = session_for(target)
    region = target.region or config.region or session.region_name
    if not region:
        raise DeploymentError(
            f"no AWS region: pass --region, set AWS_REGION (or AWS_DEFAULT_REGION), or set region in "
            f"config/{target.env}.yaml"
        )
    stack_name = deployment_name(config.project, target.env)
    cloudformation = session.client("cloudformation", region_name=region, endpoint_url=target.endpoint_url)
    stack = _described(cloudformation, stack_name)
    if stack is None:
        raise DeploymentError(
            f"stack {stack_name} (--env {target.env}) not found in {region}; deploy it (`make deploy`) or "
            "start a twin (`emr-autopilot local up`, then export the endpoint it prints)"
        )
    outputs = _outputs(stack)
    # The pipelines' state machines are the outputs of their pipeline stacks (one not deployed yet adds none).
    for index in sorted(pipeline_stacks(config)):
        pipelines_stack = _described(cloudformation, pipeline_stack_name(stack_name, index))
        if pipelines_stack is not None:
            outputs.update(_outputs(pipelines_stack))
    return Deployment(
        stack_name=stack_name,
        region=region,
        partition=str(stack.get("StackId", "arn:aws:")).split(":")[1] or "aws",
        outputs=outputs,
        pipelines=sorted(config.pipelines),
        pipeline_configs=dict(config.pipelines),
        applications=sorted(config.serverless_applications),
        session=session,
        endpoint_url=target.endpoint_url,
    )
