"""What the shared functions (guardrail, admission, scaler) know of each pipeline: one SSM parameter per pipeline.

Lambda allows 4 KB of environment per function, so per-pipeline settings cannot ride in the shared functions'
environments (they grew ~150 bytes per pipeline). Each pipeline's stack owns a String parameter (Standard tier: at
most 4,096 characters) named `/<deployment>/pipelines/<pipeline>` whose value is compact JSON with a section per
function that needs the pipeline, only the sections that apply::

    {"guardrail": {"runtime": "emr-ec2", "transient": true, "max_cluster_lifetime_minutes": 75},
     "caps": {"runs": 2, "clusters": null, "vcpus": null, "usd": 5.0, "over_budget": "wait"},
     "scaling": {"collection": "fleets", "step_units": 2, ...}}

So deploying a pipeline stack changes that pipeline's parameter and nothing in the platform stack.

Reads are cached per execution environment for `max_age_seconds` (`PIPELINE_SETTINGS_MAX_AGE_SECONDS`, default
60): a pipeline-stack deploy reaches warm containers within that time (a cold start reads it at once). A missing
parameter means the pipeline is not (or no longer) deployed, and is cached as such for the same time; the caller
decides what that means. `PipelineSection` is a read-only mapping pipeline name -> one section, parsed, looked up
by name (ssm:GetParameter); iterating it lists every pipeline (ssm:GetParametersByPath), which only a
`PipelineSettingsCatalog` does (the guardrail's: its sweeper goes over every pipeline). The admission and scaler
functions read by name only, and their roles may not list.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, Self, TypeVar

from botocore.exceptions import ClientError

from autopilot_common.settings import Environment

PIPELINES_PATH = "pipelines"
MAX_AGE_ENV = "PIPELINE_SETTINGS_MAX_AGE_SECONDS"
DEPLOYMENT_ENV = "DEPLOYMENT"
DEFAULT_MAX_AGE_SECONDS = 60
# Standard-tier parameters hold at most 4,096 characters (SSM PutParameter: "Standard tier parameters support a
# maximum parameter value of 4096 characters"; Systems Manager endpoints and quotas, "Parameter value size").
STANDARD_TIER_MAX_CHARS = 4096
GUARDRAIL, CAPS, SCALING = "guardrail", "caps", "scaling"  # the sections
# What a pipeline may be called (config.model validates names with it; run ids start with one).
PIPELINE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")
_BY_PATH_PAGE = 10  # GetParametersByPath's MaxResults is at most 10 (botocore's ssm model)
# SSM refuses a parameter name prefixed with "aws" or "ssm", in any case, a leading "/" not counted: "awsTestParameter",
# "SSM-testparameter" and "/aws/testparam1" fail (Systems Manager user guide, "Requirements and constraints for
# parameter names"). So the deployment name, the first level of every pipeline's parameter, may not begin with them.
RESERVED_NAME_PREFIXES = ("aws", "ssm")

T = TypeVar("T")
Clock = Callable[[], float]


class PipelineSettingsError(RuntimeError):
    """A pipeline's parameter that does not read as its settings; the message names the parameter and the fault."""


def settings_path(deployment: str) -> str:
    """`/<deployment>/pipelines`: the hierarchy every pipeline's parameter lives under."""
    return f"/{deployment}/{PIPELINES_PATH}"


def settings_parameter_name(deployment: str, pipeline: str) -> str:
    """`/<deployment>/pipelines/<pipeline>`: the parameter holding what the shared functions know of `pipeline`."""
    return f"{settings_path(deployment)}/{pipeline}"


def reserved_name_prefix(name: str) -> str | None:
    """The prefix SSM reserves (`RESERVED_NAME_PREFIXES`) that parameter name `name` begins with, or None."""
    head = name.lstrip("/").lower()
    return next((prefix for prefix in RESERVED_NAME_PREFIXES if head.startswith(prefix)), None)


def settings_value(sections: Mapping[str, Any]) -> str:
    """The parameter's value: compact JSON of the sections that apply (empty ones left out), keys sorted."""
    return json.dumps({k: v for k, v in sections.items() if v is not None}, separators=(",", ":"), sort_keys=True)


class PipelineSettingsStore:
    """Cached reads of the pipelines' parameters of one deployment.

    `ssm` is called for the client on first use (`lambda: clients.ssm`), so building the store needs no credentials.
    """

    def __init__(
        self,
        ssm: Callable[[], Any],
        deployment: str,
        *,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        self._ssm = ssm
        self.deployment = deployment
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}  # name -> (read at, sections or missing)
        self._listed: tuple[float, list[str]] | None = None  # (read at, every pipeline's name)

    @classmethod
    def from_env(cls, env: Mapping[str, str], ssm: Callable[[], Any] | None = None) -> Self:
        """`DEPLOYMENT` (required) and `PIPELINE_SETTINGS_MAX_AGE_SECONDS` (optional, default 60); `ssm` gives the
        client on first use (default: the SSM client of a `Clients()` of its own)."""
        read = Environment(env)
        if ssm is None:
            from autopilot_common.clients import Clients

            clients = Clients()
            ssm = lambda: clients.ssm  # noqa: E731 - the client is made on first use, not at cold start
        return cls(
            ssm,
            read.required(DEPLOYMENT_ENV, "the deployment name, e.g. autopilot-dev"),
            max_age_seconds=read.positive_int(MAX_AGE_ENV, DEFAULT_MAX_AGE_SECONDS, "seconds"),
        )

    def _fresh(self, read_at: float) -> bool:
        return self._clock() - read_at < self.max_age_seconds

    def get(self, pipeline: str) -> dict[str, Any] | None:
        """The pipeline's sections, or None when it has no parameter (not deployed)."""
        cached = self._cache.get(pipeline)
        if cached is not None and self._fresh(cached[0]):
            return cached[1]
        name = settings_parameter_name(self.deployment, pipeline)
        try:
            value = self._ssm().get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ParameterNotFound":
                raise
            sections = None
        else:
            sections = _parse(name, value)
        self._cache[pipeline] = (self._clock(), sections)
        return sections

    def names(self) -> list[str]:
        """Every deployed pipeline's name: only a `PipelineSettingsCatalog` lists them."""
        raise PipelineSettingsError(
            f"this store reads {settings_path(self.deployment)}/<pipeline> by name only; listing the pipelines is "
            "a PipelineSettingsCatalog's (granted ssm:GetParametersByPath)"
        )


class PipelineSettingsCatalog(PipelineSettingsStore):
    """A store that can also list every pipeline (the guardrail's sweeper; its role may GetParametersByPath)."""

    def names(self) -> list[str]:
        """Every deployed pipeline's name (one listing of the hierarchy, which also refreshes each one's cache)."""
        if self._listed is not None and self._fresh(self._listed[0]):
            return self._listed[1]
        path = settings_path(self.deployment)
        now, found = self._clock(), {}
        kwargs: dict[str, Any] = {}
        while True:
            page = self._ssm().get_parameters_by_path(Path=path, Recursive=False, MaxResults=_BY_PATH_PAGE, **kwargs)
            for parameter in page.get("Parameters", []):
                name = str(parameter["Name"])
                found[name.rpartition("/")[2]] = _parse(name, parameter["Value"])
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
        for pipeline in set(self._cache) - set(found):
            self._cache[pipeline] = (now, None)
        self._cache.update({pipeline: (now, sections) for pipeline, sections in found.items()})
        self._listed = (now, sorted(found))
        return self._listed[1]


class PipelineSection(Mapping[str, T], Generic[T]):
    """Pipeline name -> one section of its settings, parsed by `parse(pipeline, raw section)`.

    A pipeline without a parameter, or whose parameter lacks the section, is not in the mapping. `m[name]`,
    `m.get(name)` and `name in m` read one parameter; iterating (`len`, `values()`, `dict(m)`) lists them all.
    """

    def __init__(self, store: PipelineSettingsStore, section: str, parse: Callable[[str, Any], T]) -> None:
        self.store = store
        self.section = section
        self._parse = parse

    def __getitem__(self, pipeline: str) -> T:
        if not PIPELINE_NAME.match(pipeline):  # no such pipeline can exist: SSM is not asked (a name it would refuse)
            raise KeyError(pipeline)
        sections = self.store.get(pipeline)
        if sections is None or sections.get(self.section) is None:
            raise KeyError(pipeline)
        try:
            return self._parse(pipeline, sections[self.section])
        except (TypeError, ValueError) as exc:
            name = settings_parameter_name(self.store.deployment, pipeline)
            raise PipelineSettingsError(f"SSM parameter {name}: section {self.section!r}: {exc}") from None

    def __iter__(self) -> Iterator[str]:
        return iter([p for p in self.store.names() if (self.store.get(p) or {}).get(self.section) is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"PipelineSection({self.store.deployment!r}, {self.section!r})"


def _parse(name: str, value: str) -> dict[str, Any]:
    try:
        sections = json.loads(value)
    except ValueError:
        raise PipelineSettingsError(f"SSM parameter {name} is not valid JSON; expected an object of sections") from None
    if not isinstance(sections, dict):
        raise PipelineSettingsError(f"SSM parameter {name} is a {type(sections).__name__}; expected an object")
    return sections
