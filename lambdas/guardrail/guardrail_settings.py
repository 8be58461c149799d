"""The guardrail function's settings (its environment, validated at cold start), its clients, and the error
for events it cannot act on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autopilot_common.admission import TABLE_ENV, Caps
from autopilot_common.pipeline_settings import GUARDRAIL, PipelineSection, PipelineSettingsCatalog
from autopilot_common.settings import Environment


class GuardrailEventError(ValueError):
    """An event the guardrail cannot act on; the message names the field and what was expected."""


@dataclass(frozen=True)
class PipelineRef:
    """What the guardrail needs to know of one pipeline: the `guardrail` section of its SSM parameter
    (autopilot_common.pipeline_settings), which holds only the fields that differ from these defaults."""

    name: str
    state_machine_arn: str
    runtime: str  # emr-serverless | emr-ec2 | emr-eks
    transient: bool = True
    application_id: str | None = None
    virtual_cluster_id: str | None = None
    architecture: str = "X86_64"  # EMR Serverless: the application's (X86_64 | ARM64), which prices its usage
    max_cluster_lifetime_minutes: int = 195


@dataclass(frozen=True)
class UnmanagedPolicy:
    """What to do with clusters launched by someone other than this app."""

    enforce_auto_termination: bool = True
    idle_timeout_minutes: int = 60
    exempt_tag_key: str = "autopilot:long-running"


@dataclass(frozen=True)
class GuardrailSettings:
    """The function's environment: `DEPLOYMENT`, `OUTPUTS_BUCKET`, `TOPIC_ARN`, `CLAIMS_TABLE`,
    `STATE_MACHINE_ARN_PREFIX` (a pipeline's state machine is this prefix + its name), `APP_ROLE_PREFIX` (the ARN
    prefix of the roles whose calls are this app's own: `arn:...:role/<deployment>-`, which every role of the
    deployment's stacks starts with) and/or `APP_ROLE_ARNS` (JSON list of such roles), `UNMANAGED_CLUSTERS` (JSON:
    UnmanagedPolicy fields), optional `SERVERLESS_IDLE_STOP_MINUTES` (default 60), `ADMISSION_TABLE` and
    `ADMISSION_CAPS` (the deployment's caps), `PIPELINE_SETTINGS_MAX_AGE_SECONDS`.

    `pipelines` maps a pipeline's name to its PipelineRef, read from the pipeline's SSM parameter when asked for
    (a pipeline without one is not deployed: not in the mapping); iterating it lists every pipeline (the sweeper).
    """

    deployment: str
    outputs_bucket: str
    topic_arn: str
    claims_table: str
    pipelines: Mapping[str, PipelineRef]
    app_role_arns: frozenset[str]
    app_role_prefix: str | None = None  # `APP_ROLE_PREFIX`: a role ARN starting with it is the app's own
    unmanaged: UnmanagedPolicy = field(default_factory=UnmanagedPolicy)
    serverless_idle_stop_minutes: int = 60
    admission_table: str | None = None  # `ADMISSION_TABLE`: run slots to release (see autopilot_common.admission)
    caps: Caps = field(default_factory=Caps)
    region: str | None = None  # `AWS_REGION` (Lambda sets it): prices an aborted run's compute
    state_machine_prefix: str | None = None  # `STATE_MACHINE_ARN_PREFIX`: + a pipeline's name = its state machine

    @classmethod
    def from_env(cls, env: Mapping[str, str], ssm: Callable[[], Any] | None = None) -> GuardrailSettings:
        """Read and validate the environment; RuntimeError names the first bad variable. `ssm` gives the SSM client
        that reads the pipelines' parameters on first use (default: one of its own)."""
        read = Environment(env)
        deployment = read.required("DEPLOYMENT", "the deployment name, e.g. autopilot-dev")
        outputs_bucket = read.required("OUTPUTS_BUCKET", "the outputs bucket that holds the run ledger")
        topic_arn = read.required("TOPIC_ARN", "the notifications topic ARN")
        claims_table = read.required("CLAIMS_TABLE", "the DynamoDB table that records cancellations")
        machine_prefix = read.required(
            "STATE_MACHINE_ARN_PREFIX",
            "the ARN prefix of the deployment's state machines, arn:...:stateMachine:<deployment>-",
        )
        store = PipelineSettingsCatalog.from_env(env, ssm)
        roles = read.json("APP_ROLE_ARNS", list, expected="a list") if read.optional("APP_ROLE_ARNS") else []
        unmanaged = (
            read.json("UNMANAGED_CLUSTERS", dict, expected="a dict") if read.optional("UNMANAGED_CLUSTERS") else {}
        )
        return cls(
            deployment=deployment,
            outputs_bucket=outputs_bucket,
            topic_arn=topic_arn,
            claims_table=claims_table,
            pipelines=PipelineSection(store, GUARDRAIL, pipeline_ref(machine_prefix)),
            app_role_arns=frozenset(str(r) for r in roles),
            app_role_prefix=read.optional("APP_ROLE_PREFIX"),
            unmanaged=UnmanagedPolicy(**unmanaged),
            serverless_idle_stop_minutes=read.positive_int("SERVERLESS_IDLE_STOP_MINUTES", 60, "minutes"),
            admission_table=read.optional(TABLE_ENV),
            caps=Caps.from_env(env, store),
            region=read.optional("AWS_REGION"),
            state_machine_prefix=machine_prefix,
        )

    def is_app_role(self, arn: str | None) -> bool:
        """True for a role (or assumed-role session) ARN of this app's own roles."""
        if not arn:
            return False
        return arn in self.app_role_arns or bool(self.app_role_prefix and arn.startswith(self.app_role_prefix))

    def pipeline_of_state_machine(self, arn: str) -> PipelineRef | None:
        """The pipeline whose state machine `arn` is (one parameter read), or None."""
        if self.state_machine_prefix is not None:
            name = arn.removeprefix(self.state_machine_prefix) if arn.startswith(self.state_machine_prefix) else ""
            pipeline = self.pipelines.get(name) if name else None
            return pipeline if pipeline is not None and pipeline.state_machine_arn == arn else None
        return next((p for p in self.pipelines.values() if p.state_machine_arn == arn), None)

    def pipeline_of_execution(self, execution_arn: str) -> PipelineRef | None:
        """`arn:...:execution:<state machine name>:<name>` -> the pipeline of that state machine."""
        machine = execution_arn.replace(":execution:", ":stateMachine:", 1).rpartition(":")[0]
        return self.pipeline_of_state_machine(machine) if ":execution:" in execution_arn else None

    def pipeline_of_run_id(self, run_id: str) -> PipelineRef | None:
        """Run ids are `<pipeline>-<...>` (router, backfill and schedule ids alike): the longest deployed pipeline name
        that prefixes the id, tried from the longest `-`-separated prefix down (each a cached parameter read)."""
        cuts = [i for i, char in enumerate(run_id) if char == "-"]
        for cut in reversed(cuts):
            pipeline = self.pipelines.get(run_id[:cut])
            if pipeline is not None:
                return pipeline
        return None


def pipeline_ref(state_machine_prefix: str) -> Callable[[str, Any], PipelineRef]:
    """Parses a pipeline's `guardrail` section (PipelineRef's fields; `state_machine_arn` is the prefix + name)."""

    def parse(name: str, raw: Any) -> PipelineRef:
        if not isinstance(raw, Mapping):
            raise TypeError(f"got {type(raw).__name__}; expected an object of PipelineRef fields")
        return PipelineRef(name=name, **{"state_machine_arn": state_machine_prefix + name, **raw})

    return parse
