"""Load and validate `config/<env>.yaml` into an `AppConfig`, or fail with one clear message.

Every message names the file, the pipeline (when there is one), the field, the bad value and what
is allowed, e.g.::

    config/dev.yaml: pipeline 'sales-daily': trigger.batching.window_seconds: got 900; expected a number <= 300
"""

from __future__ import annotations

import types
import typing
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from autopilot_common.pipeline_settings import RESERVED_NAME_PREFIXES, reserved_name_prefix
from config.base import RELEASE_LABEL_PATTERN
from config.capacity import cap_problems
from config.ec2 import Ec2Runtime, HiveStep, JarStep, SparkStep
from config.eks import EKS_RELEASE_LABEL_PATTERN, EksRuntime
from config.model import (
    BUCKET_NAME_PATTERN,
    PIPELINE_NAME_PATTERN,
    RESOURCE_NAME_PATTERN,
    S3_PREFIX_PATTERN,
    AppConfig,
    Pipeline,
    ServerlessRuntime,
)
from config.scaling import AlarmScaling
from stacks import naming

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"
JOBS_DIR = REPO_ROOT / "jobs"
BOOTSTRAP_DIRNAME = "bootstrap"  # next to jobs/: bootstrap scripts of emr-ec2 clusters
RESERVED_OUTPUT_PREFIXES = ("_runs",)

_PATTERN_MEANINGS = {
    PIPELINE_NAME_PATTERN: "2-40 characters: lowercase letters, digits and '-', starting with a letter, "
    "not ending with '-'",
    RESOURCE_NAME_PATTERN: "2-32 characters: lowercase letters, digits and '-', starting with a letter, "
    "not ending with '-'",
    BUCKET_NAME_PATTERN: "a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')",
    RELEASE_LABEL_PATTERN: "an EMR release label like 'emr-7.5.0'",
    EKS_RELEASE_LABEL_PATTERN: "an EMR on EKS release label like 'emr-7.5.0-latest'",
    r"^\d+ vCPU$": "a size like '4 vCPU'",
    r"^\d+ GB$": "a size like '16 GB'",
    r"^\d{12}$": "a 12-digit AWS account id",
    S3_PREFIX_PATTERN: "an S3 key prefix without a leading '/' or control characters",
}
# Union members are tagged in pydantic error locations; these are the union fields and their tags.
_UNION_FIELDS = {"batching", "runtime", "application", "instances", "scaling"}
_LIST_UNION_FIELDS = {"steps"}  # lists of tagged unions: the tag follows the index
_UNION_TAGS = {
    "per_object", "window", "marker", "emr-serverless", "emr-ec2", "emr-eks", "name", "inline",
    "fleets", "groups", "spark", "s3distcp", "hive", "jar", "none", "managed", "alarms",
}  # fmt: skip


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and how to fix it."""


class _UniqueKeyLoader(yaml.CSafeLoader):
    """A safe YAML loader that refuses duplicate keys (PyYAML would silently keep the last one). It parses with
    libyaml (PyYAML's wheels bundle it), several times faster than the pure-Python parser on a deployment of hundreds
    of pipelines."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def config_path(env: str) -> Path:
    """The file for an environment name (`dev` -> `config/dev.yaml`)."""
    if not env or not all(c.isalnum() or c in "-_" for c in env):
        raise ConfigError(f"environment name {env!r} is invalid; expected letters, digits, '-' or '_' (e.g. 'dev')")
    return CONFIG_DIR / f"{env}.yaml"


def load_config(env: str = "dev", path: Path | None = None, jobs_dir: Path = JOBS_DIR) -> AppConfig:
    """Read, validate and cross-check one environment's configuration."""
    path = path or config_path(env)
    shown = _display(path)
    if not path.is_file():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"{shown}: file not found; available environments: {', '.join(available) or 'none'}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader subclass
    except ConfigError as exc:
        raise ConfigError(f"{shown}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: not valid YAML: {exc}") from None
    return validate_config(raw, shown, jobs_dir, env)


def validate_config(raw: Any, source: str = "<config>", jobs_dir: Path = JOBS_DIR, env: str = "dev") -> AppConfig:
    """Validate already-parsed YAML; `source` names the file in messages, `env` the environment (its name is part
    of every physical name the app generates)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        config = AppConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(source, err) for err in exc.errors(include_url=False)]
        raise ConfigError("\n".join(lines)) from None
    _cross_check(config, source, jobs_dir, env)
    return config


# --------------------------------------------------------------------------- cross checks


def _cross_check(config: AppConfig, source: str, jobs_dir: Path, env: str) -> None:
    problems: list[str] = _name_problems(config, source, env)
    names = sorted(config.serverless_applications)
    for name, pipeline in config.pipelines.items():
        where = f"{source}: pipeline {name!r}"
        runtime = pipeline.runtime
        if isinstance(runtime, Ec2Runtime):
            problems.extend(_ec2_files(where, runtime, jobs_dir))
        elif isinstance(runtime, EksRuntime):
            problems.extend(_eks_files(where, runtime, jobs_dir))
        else:
            app = runtime.application
            if isinstance(app, str) and app not in config.serverless_applications:
                allowed = f"one of {', '.join(repr(n) for n in names)}" if names else "an inline application"
                problems.append(
                    f"{where}: runtime.application: got {app!r}; expected {allowed} "
                    "(names are defined under serverless_applications)"
                )
            problems.extend(_missing_file(where, "runtime.entry_point", runtime.entry_point, jobs_dir))
        out = output_prefix(name, pipeline)
        if out.split("/", 1)[0] in RESERVED_OUTPUT_PREFIXES:
            problems.append(
                f"{where}: output_prefix: got {out!r}; "
                f"expected a prefix not under {', '.join(RESERVED_OUTPUT_PREFIXES)}"
            )

    items = sorted(config.pipelines.items())
    for i, (a_name, a) in enumerate(items):
        for b_name, b in items[i + 1 :]:
            if a.trigger and b.trigger and a.trigger.overlaps(b.trigger):
                problems.append(
                    f"{source}: pipelines {a_name!r} and {b_name!r}: trigger: overlapping triggers "
                    f"(prefix {a.trigger.prefix!r} suffixes {a.trigger.suffixes or 'any'} vs prefix "
                    f"{b.trigger.prefix!r} suffixes {b.trigger.suffixes or 'any'}); expected each landing object "
                    "to match at most one pipeline"
                )
            oa, ob = output_prefix(a_name, a).rstrip("/") + "/", output_prefix(b_name, b).rstrip("/") + "/"
            if oa.startswith(ob) or ob.startswith(oa):
                problems.append(
                    f"{source}: pipelines {a_name!r} and {b_name!r}: output_prefix: {oa!r} and {ob!r} overlap; "
                    "expected separate output prefixes"
                )
    problems.extend(dependency_problems(config, source))
    problems.extend(cap_problems(config, source))
    problems.extend(stack_problems(config, source))
    if problems:
        raise ConfigError("\n".join(problems))


def stack_problems(config: AppConfig, source: str) -> list[str]:
    """A pipeline stack holding more than `stacks.naming.MAX_PIPELINES_PER_STACK` pipelines (CloudFormation's
    template and resource limits), with the `pipeline_stacks` that would fit."""
    full = {i: n for i, n in naming.pipeline_stacks(config).items() if len(n) > naming.MAX_PIPELINES_PER_STACK}
    if not full:
        return []
    needed = config.pipeline_stacks
    while any(
        n > naming.MAX_PIPELINES_PER_STACK
        for n in Counter(naming.pipeline_stack_index(p, needed) for p in config.pipelines).values()
    ):
        needed += 1
    return [
        f"{source}: pipeline_stacks: got {config.pipeline_stacks}; pipeline stack {i} would hold {len(names)} "
        f"pipelines; expected at most {naming.MAX_PIPELINES_PER_STACK} per stack (CloudFormation's template and "
        f"resource limits): set pipeline_stacks to {needed} or more (changing it moves pipelines between stacks)"
        for i, names in sorted(full.items())
    ]


def dependency_problems(config: AppConfig, source: str) -> list[str]:
    """`trigger.after`: every upstream is another pipeline of this config, and no pipeline runs after itself,
    directly or through others (a cycle would never start, or start forever)."""
    problems: list[str] = []
    names = sorted(config.pipelines)
    for name, pipeline in config.pipelines.items():
        where = f"{source}: pipeline {name!r}: trigger.after"
        for upstream in pipeline.upstreams:
            if upstream == name:
                problems.append(f"{where}: names the pipeline itself; expected other pipelines")
            elif upstream not in config.pipelines:
                others = ", ".join(repr(n) for n in names if n != name) or "none"
                problems.append(f"{where}: got {upstream!r}; expected a pipeline of this config (one of {others})")
    if problems:
        return problems
    reported: set[frozenset[str]] = set()
    for start in names:
        cycle = _cycle_from(config, start)
        if cycle and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            path = " -> ".join(cycle + [cycle[0]])
            problems.append(
                f"{source}: pipeline {cycle[0]!r}: trigger.after: a cycle ({path}, each running after the next); "
                "expected dependencies without a loop"
            )
    if problems:
        return problems
    for name, pipeline in sorted(config.pipelines.items()):
        dated = {upstream: _dated(config, upstream) for upstream in pipeline.upstreams}
        if len(set(dated.values())) > 1:
            with_dates = ", ".join(repr(u) for u, d in dated.items() if d)
            without = ", ".join(repr(u) for u, d in dated.items() if not d)
            problems.append(
                f"{source}: pipeline {name!r}: trigger.after: {with_dates} run(s) carry a logical date (their "
                f"partition_template) and {without} run(s) do not, so no date group and no undated group would ever "
                "hold a run of each and the pipeline would never start; expected upstreams that all have a "
                "partition_template (one run per date) or none of them (the newest run of each)"
            )
    return problems


def _dated(config: AppConfig, name: str) -> bool:
    """True when a pipeline's runs normally carry a logical date: an arrival or scheduled trigger with a
    `partition_template`, or upstreams whose runs all do (a fan-in run takes its group's date). Console runs of a
    pipeline without a trigger carry none (a backfill's may: that is the operator's choice, not the pipeline's)."""
    pipeline = config.pipelines[name]
    if pipeline.trigger is None:
        return False
    if pipeline.upstreams:
        return all(_dated(config, upstream) for upstream in pipeline.upstreams)
    return pipeline.trigger.partition_template is not None


def _cycle_from(config: AppConfig, start: str) -> list[str] | None:
    """A cycle of `after` edges through `start` (as the pipelines in order), or None."""
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return path[path.index(name) :] if name == start else None
        path.append(name)
        for upstream in config.pipelines[name].upstreams:
            found = visit(upstream)
            if found:
                return found
        path.pop()
        return None

    return visit(start)


def _name_problems(config: AppConfig, source: str, env: str) -> list[str]:
    """Every physical name generated from the project, the environment and each pipeline's (or shared
    application's) name, checked against its service's limit (stacks.naming.LIMITS)."""
    deployment = naming.deployment_name(config.project, env)
    problems = [
        f"{source}: project {config.project!r} (environment {env!r}): {problem}; expected a shorter project or "
        "environment name"
        for kind, name in naming.DeploymentNames(deployment).all()
        if (problem := naming.name_problems(kind, name))
    ]
    settings = naming.settings_path(deployment)
    if reserved := reserved_name_prefix(settings):
        problems.append(
            f"{source}: project: got {config.project!r}; the pipelines' settings parameters would be "
            f"named {settings}/<pipeline>, and SSM refuses parameter names that begin with {reserved!r} in any case "
            '(Systems Manager user guide, "Requirements and constraints for parameter names"); expected a project '
            f"name that does not begin with {' or '.join(map(repr, RESERVED_NAME_PREFIXES))}"
        )
    for app in sorted(config.serverless_applications):
        name = naming.serverless_application_name(deployment, app)
        if problem := naming.name_problems("serverless_application", name):
            problems.append(f"{source}: serverless application {app!r}: {problem}; expected a shorter name")
    for pipeline_name, pipeline in config.pipelines.items():
        for kind, name in pipeline_generated_names(deployment, pipeline_name, pipeline):
            if problem := naming.name_problems(kind, name):
                excess = len(name) - naming.LIMITS[kind].max_length
                problems.append(
                    f"{source}: pipeline {pipeline_name!r}: name: {problem}; expected a pipeline name at most "
                    f"{len(pipeline_name) - excess} characters long here"
                )
    return problems


def pipeline_generated_names(deployment: str, name: str, pipeline: Pipeline) -> list[tuple[str, str]]:
    names = [
        ("state_machine", naming.state_machine_name(deployment, name)),
        ("log_group", naming.state_machine_log_group(deployment, name)),
        ("execution", f"{name}-{'0' * (naming.RUN_ID_SUFFIX_LENGTH - 1)}"),
        ("role", naming.workflow_role_name(deployment, name)),
        ("parameter", naming.settings_parameter_name(deployment, name)),
    ]
    if pipeline.trigger:
        names.append(("queue", naming.arrivals_queue_name(deployment, name)))
        trigger = pipeline.trigger
        if pipeline.arrivals is not None and trigger.schedule is None:
            names += [("rule", naming.arrival_rule_name(deployment, name, s)) for s in trigger.sources]
        elif pipeline.upstreams:
            names.append(("rule", naming.arrival_rule_name(deployment, name, "upstream")))
        clocks = [("scheduled", trigger.schedule), ("deadline", trigger.expect)]
        names += [("schedule", naming.schedule_name(deployment, name, kind)) for kind, on in clocks if on is not None]
    runtime = pipeline.runtime
    if isinstance(runtime, Ec2Runtime):
        names.append(("instance_profile", naming.instance_profile_name(deployment, name)))
        if isinstance(runtime.scaling, AlarmScaling):
            cluster = "j-" + "X" * (naming.CLUSTER_ID_LENGTH - 2)
            names += [
                ("alarm", naming.scaling_alarm_name(deployment, name, cluster, direction, rule.name))
                for direction, rule in runtime.scaling.rules()
            ]
    elif isinstance(runtime, EksRuntime):
        names.append(("role", naming.eks_job_role_name(deployment, name)))
        names.append(("virtual_cluster", naming.virtual_cluster_name(deployment, name)))
    elif isinstance(runtime, ServerlessRuntime) and not isinstance(runtime.application, str):
        names.append(("serverless_application", naming.serverless_application_name(deployment, name)))
    return names


def _missing_file(where: str, field: str, relative: str, folder: Path) -> list[str]:
    """A problem line when `relative` is not a file under `folder` (no `..` escapes)."""
    if ".." not in Path(relative).parts and (folder / relative).is_file():
        return []
    found = ", ".join(_job_files(folder)) or "none"
    return [f"{where}: {field}: got {relative!r}; expected a file under {_display(folder)}/ (found: {found})"]


def _ec2_files(where: str, runtime: Ec2Runtime, jobs_dir: Path) -> list[str]:
    """Every step's job file must exist under jobs/, every bootstrap script under bootstrap/."""
    problems: list[str] = []
    for index, step in enumerate(runtime.steps):
        field = f"runtime.steps[{index}]"
        if isinstance(step, SparkStep):
            problems += _missing_file(where, f"{field}.entry_point", step.entry_point, jobs_dir)
        elif isinstance(step, HiveStep):
            problems += _missing_file(where, f"{field}.script", step.script, jobs_dir)
        elif isinstance(step, JarStep) and step.jar != "command-runner.jar":
            problems += _missing_file(where, f"{field}.jar", step.jar, jobs_dir)
    bootstrap_dir = jobs_dir.parent / BOOTSTRAP_DIRNAME
    for index, action in enumerate(runtime.bootstrap_actions):
        problems += _missing_file(where, f"runtime.bootstrap_actions[{index}].script", action.script, bootstrap_dir)
    return problems


def _eks_files(where: str, runtime: EksRuntime, jobs_dir: Path) -> list[str]:
    """The job file and pod templates must exist under jobs/."""
    problems = _missing_file(where, "runtime.entry_point", runtime.entry_point, jobs_dir)
    for field in ("driver_pod_template", "executor_pod_template"):
        template = getattr(runtime, field)
        if template is not None:
            problems += _missing_file(where, f"runtime.{field}", template, jobs_dir)
    return problems


def output_prefix(name: str, pipeline: Pipeline) -> str:
    """The pipeline's prefix in the outputs bucket, without a trailing slash."""
    return (pipeline.output_prefix or name).strip("/")


def _job_files(jobs_dir: Path) -> list[str]:
    if not jobs_dir.is_dir():
        return []
    suffixes = {".py", ".jar", ".q", ".hql", ".sql", ".sh"}
    return sorted(str(p.relative_to(jobs_dir)) for p in jobs_dir.rglob("*") if p.suffix in suffixes)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- error formatting


def _format_error(source: str, err: Any) -> str:
    loc = [str(part) for part in err["loc"]]
    loc = [p for i, p in enumerate(loc) if not (p in _UNION_TAGS and _after_union(loc, i))]
    if loc and loc[-1] == "[key]":
        where = ".".join(loc[:-2]) or "(top level)"
        return f"{source}: {where}: name {err['input']!r} is invalid; expected {_expected(err)}"
    prefix = source
    if len(loc) >= 2 and loc[0] == "pipelines":
        prefix = f"{source}: pipeline {loc[1]!r}"
        loc = loc[2:]
    elif len(loc) >= 2 and loc[0] == "serverless_applications":
        prefix = f"{source}: serverless application {loc[1]!r}"
        loc = loc[2:]
    field = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        return f"{prefix}: {field}: unknown key; expected one of: {', '.join(allowed) or '(no keys)'}"
    if kind == "missing":
        return f"{prefix}: {field}: required but missing"
    if kind == "value_error":
        message = err["msg"].removeprefix("Value error, ")
        return f"{prefix}: {'.'.join(loc) + ': ' if loc else ''}{message}"
    if kind == "union_tag_invalid":
        key = err["ctx"]["discriminator"].strip("'")
        return f"{prefix}: {field}.{key}: got {err['ctx']['tag']!r}; expected {_expected(err)}"
    return f"{prefix}: {field}: got {_short(err.get('input'))}; expected {_expected(err)}"


def _after_union(loc: list[str], i: int) -> bool:
    """True when loc[i] is the tag pydantic inserts after a tagged-union field (or list item)."""
    if i > 0 and loc[i - 1] in _UNION_FIELDS:
        return True
    return i > 1 and loc[i - 1].isdigit() and loc[i - 2] in _LIST_UNION_FIELDS


def _expected(err: Any) -> str:
    kind, ctx = err["type"], err.get("ctx", {})
    if kind == "literal_error":
        return f"one of {ctx['expected']}"
    if kind == "union_tag_invalid":
        return f"one of {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        return f"a mapping with a '{ctx['discriminator'].strip(chr(39))}' key"
    if kind == "string_pattern_mismatch":
        return _PATTERN_MEANINGS.get(ctx["pattern"], f"a string matching {ctx['pattern']}")
    if kind in {"greater_than_equal", "greater_than"}:
        return f"a number {'>=' if kind.endswith('equal') else '>'} {ctx.get('ge', ctx.get('gt'))}"
    if kind in {"less_than_equal", "less_than"}:
        return f"a number {'<=' if kind.endswith('equal') else '<'} {ctx.get('le', ctx.get('lt'))}"
    if kind in {"too_short", "too_long"}:
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return f"{'at least' if kind == 'too_short' else 'at most'} {bound} item(s)/character(s)"
    simple = {
        "int_type": "an integer",
        "string_type": "a string",
        "bool_type": "true or false",
        "dict_type": "a mapping",
        "list_type": "a list",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "string_too_short": "a longer string",
        "string_too_long": "a shorter string",
    }
    return simple.get(kind, str(err["msg"]))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model at `loc`, following dicts, lists, optionals and tagged unions."""
    current: Any = AppConfig
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    models = [m for m in (_model_of(member) for member in _members(current)) if m is not None]
    return sorted(models[0].model_fields) if len(models) == 1 else []


def _model_of(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return None


def _members(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin in {typing.Union, types.UnionType}:
        out: list[Any] = []
        for arg in typing.get_args(tp):
            out.extend(_members(arg))
        return out
    return [tp]


def _step(tp: Any, part: Any) -> Any:
    for member in _members(tp):
        model = _model_of(member)
        if model is not None:
            if isinstance(part, str) and part in model.model_fields:
                return model.model_fields[part].annotation
            continue
        origin = typing.get_origin(member)
        if origin is dict:
            return typing.get_args(member)[1]
        if origin is list and isinstance(part, int):
            return typing.get_args(member)[0]
    # A union tag (e.g. 'window'): pick the member whose discriminator literal matches.
    for member in _members(tp):
        model = _model_of(member)
        if model is None:
            continue
        for field in model.model_fields.values():
            if typing.get_origin(field.annotation) is typing.Literal and part in typing.get_args(field.annotation):
                return model
    return None
