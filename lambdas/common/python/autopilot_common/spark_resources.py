"""What a Spark job asks for: driver and executors (vCPU, memory, disk) from its spark-submit parameters.

One home for reading a job's sizing, used to price what EMR does not measure for us and by the twin to bill what
EMR Serverless would:

- EMR Serverless: a worker per driver and executor, sized by `spark.driver.cores|memory`,
  `spark.executor.cores|memory`, `spark.emr-serverless.driver|executor.disk`, plus the memory overhead; defaults
  (EMR Serverless User Guide, "Spark job properties", Default Spark properties table): cores 4, memory 14G,
  disk 20G, `spark.executor.instances` 3 (the initial executors under dynamic allocation, on by default),
  memory overhead 10% of the memory with a 384 MB floor (Spark's default). A worker's memory is whole GB (the
  worker sizes EMR Serverless accepts: 1 GB increments), so the default 14G + 1.4G is a 16 GB worker.
- EMR on EKS: a pod per driver and executor, billed on the vCPU and memory it requests (Amazon EMR pricing, EMR on
  Amazon EKS: "based on requested vCPU and memory resources for the Task or Pod"); Spark on Kubernetes requests
  `spark.kubernetes.driver|executor.request.cores` else `spark.driver|executor.cores`, and memory plus overhead
  (`spark.driver|executor.memoryOverhead`, else the factor `spark.driver|executor.memoryOverheadFactor` /
  `spark.kubernetes.memoryOverheadFactor`, 0.1, with a 384 MiB floor); Spark's own defaults apply when unset
  (Spark configuration reference: cores 1, memory 1g, `spark.executor.instances` 2), EMR on EKS sets none.

A value that cannot be read (`spark.executor.memory=lots`) raises ValueError naming the setting.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

# spark-submit's sizing flags and the property each sets (spark-submit --help)
SIZING_OPTIONS = {
    "--driver-cores": "spark.driver.cores",
    "--driver-memory": "spark.driver.memory",
    "--executor-cores": "spark.executor.cores",
    "--executor-memory": "spark.executor.memory",
    "--num-executors": "spark.executor.instances",
}
SERVERLESS_DEFAULTS = {
    "spark.driver.cores": "4",
    "spark.driver.memory": "14g",
    "spark.executor.cores": "4",
    "spark.executor.memory": "14g",
    "spark.executor.instances": "3",
    "spark.emr-serverless.driver.disk": "20g",
    "spark.emr-serverless.executor.disk": "20g",
}
SERVERLESS_VCPU_SIZES = (1, 2, 4, 8, 16)  # the worker vCPU counts EMR Serverless offers
SPARK_DEFAULTS = {
    "spark.driver.cores": "1",
    "spark.driver.memory": "1g",
    "spark.executor.cores": "1",
    "spark.executor.memory": "1g",
    "spark.executor.instances": "2",
}
OVERHEAD_FACTOR = 0.1
OVERHEAD_FLOOR_MIB = 384
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*$", re.IGNORECASE)
_MIB_PER = {"k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024}


@dataclass(frozen=True)
class Worker:
    """One driver or executor: `count` alike, each with `vcpu`, `memory_gb` (overhead included) and `disk_gb`."""

    role: str  # driver | executor
    count: int
    vcpu: float
    memory_gb: float
    disk_gb: float = 0.0


@dataclass(frozen=True)
class Requested:
    """The job's workers (or pods) and how they were read (`notes`: defaults used, assumptions)."""

    workers: tuple[Worker, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def vcpu(self) -> float:
        return sum(w.count * w.vcpu for w in self.workers)

    @property
    def memory_gb(self) -> float:
        return sum(w.count * w.memory_gb for w in self.workers)

    def describe(self) -> str:
        return ", ".join(
            f"{w.count} {w.role}{'s' if w.count != 1 else ''} x {w.vcpu:g} vCPU/{w.memory_gb:g} GB"
            + (f"/{w.disk_gb:g} GB disk" if w.disk_gb else "")
            for w in self.workers
        )


def spark_conf(parameters: str) -> dict[str, str]:
    """The `spark.*` settings of spark-submit parameters: `--conf k=v` (`--conf=k=v`, `-c k=v`) and the sizing flags
    (`--executor-memory 4g`, …); the last one of a key wins, as in spark-submit. Other options are not sizing."""
    try:
        tokens = shlex.split(parameters or "")
    except ValueError as exc:
        raise ValueError(f"spark_submit_parameters: cannot parse {parameters!r} ({exc})") from None
    conf: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token, value = tokens[i], None
        if token.startswith("--") and "=" in token:
            token, _, value = token.partition("=")
            i += 1
        elif token in ("--conf", "-c") or token in SIZING_OPTIONS:
            value = tokens[i + 1] if i + 1 < len(tokens) else None
            i += 2
        else:
            i += 1
            continue
        if value is None:
            raise ValueError(f"spark_submit_parameters: {token} needs a value")
        if token in ("--conf", "-c"):
            key, sep, setting = value.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"spark_submit_parameters: --conf {value!r} is not key=value")
            conf[key.strip()] = setting.strip()
        elif token in SIZING_OPTIONS:
            conf[SIZING_OPTIONS[token]] = value
    return conf


def size_mib(key: str, value: str) -> float:
    """A JVM memory string (`14g`, `512m`, `2048` = MiB, as Spark reads `spark.*.memory`) in MiB."""
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"{key}: got {value!r}; expected a size such as 4g or 512m")
    return float(match.group(1)) * _MIB_PER[(match.group(2) or "m").lower()]


def _number(conf: dict[str, str], key: str) -> float:
    try:
        number = float(conf[key])
    except ValueError:
        raise ValueError(f"{key}: got {conf[key]!r}; expected a number") from None
    if number < 0:
        raise ValueError(f"{key}: got {conf[key]!r}; expected a number >= 0")
    return number


def _memory_with_overhead_mib(conf: dict[str, str], role: str, factor_keys: tuple[str, ...]) -> float:
    memory = size_mib(f"spark.{role}.memory", conf[f"spark.{role}.memory"])
    if (overhead := conf.get(f"spark.{role}.memoryOverhead")) is not None:
        return memory + size_mib(f"spark.{role}.memoryOverhead", overhead)
    factor = next((_number(conf, k) for k in factor_keys if k in conf), OVERHEAD_FACTOR)
    return memory + max(memory * factor, OVERHEAD_FLOOR_MIB)


def serverless_workers(parameters: str) -> Requested:
    """The EMR Serverless workers a job asks for (driver, executors) with EMR Serverless' defaults."""
    given = spark_conf(parameters)
    conf = SERVERLESS_DEFAULTS | given
    notes = [f"EMR Serverless default {k}={v}" for k, v in SERVERLESS_DEFAULTS.items() if k not in given]
    workers = []
    for role, count in (("driver", 1), ("executor", int(_number(conf, "spark.executor.instances")))):
        cores = _number(conf, f"spark.{role}.cores")
        vcpu = next((size for size in SERVERLESS_VCPU_SIZES if size >= cores), SERVERLESS_VCPU_SIZES[-1])
        memory = _memory_with_overhead_mib(conf, role, (f"spark.{role}.memoryOverheadFactor",))
        disk = size_mib(f"spark.emr-serverless.{role}.disk", conf[f"spark.emr-serverless.{role}.disk"]) / 1024
        workers.append(Worker(role, count, vcpu, math.ceil(memory / 1024), disk))
    return Requested(tuple(w for w in workers if w.count > 0), notes)


def eks_pods(parameters: str, spark_defaults: Mapping[str, str] | None = None) -> Requested:
    """The EMR on EKS pods a job requests (driver, executors), with Spark's defaults; `spark_defaults` are the job's
    `spark-defaults` classification properties (configurationOverrides), which spark-submit parameters override."""
    given = dict(spark_defaults or {}) | spark_conf(parameters)
    conf = SPARK_DEFAULTS | given
    notes = [f"Spark default {k}={v}" for k, v in SPARK_DEFAULTS.items() if k not in given]
    workers = []
    for role, count in (("driver", 1), ("executor", int(_number(conf, "spark.executor.instances")))):
        request = f"spark.kubernetes.{role}.request.cores"
        vcpu = _number(conf, request if request in conf else f"spark.{role}.cores")
        factors = (f"spark.{role}.memoryOverheadFactor", "spark.kubernetes.memoryOverheadFactor")
        memory = _memory_with_overhead_mib(conf, role, factors)
        workers.append(Worker(role, count, vcpu, round(memory / 1024, 3)))
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        notes.append("dynamic allocation is on: executors counted at spark.executor.instances, not their actual count")
    return Requested(tuple(w for w in workers if w.count > 0), notes)
