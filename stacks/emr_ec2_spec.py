"""Config -> EMR API shapes for the emr-ec2 workflows (pure functions, no CDK).

`cluster_request` is the part of the RunJobFlow request fixed per pipeline (the workflow adds the
run's Name, LogUri and Tags); `step_templates` are the pipeline's steps as HadoopJarStep configs
whose arguments still hold `{{tokens}}` that the prepare function fills per run. Values that are
CloudFormation tokens are written as `${Substitution}` names, filled by the state machine's
definition substitutions.
"""

from __future__ import annotations

import shlex
from typing import Any

from autopilot_common.step_failures import CLUSTER_FAILURE_CLASSES
from config.ec2 import (
    EbsVolumes,
    Ec2Runtime,
    EmrConfiguration,
    FleetInstanceType,
    HiveStep,
    InstanceFleets,
    InstanceGroups,
    JarStep,
    S3DistCpStep,
    SparkStep,
)
from config.scaling import ManagedScaling
from stacks.naming import BOOTSTRAP_PREFIX, JOBS_PREFIX

GLUE_FACTORY = "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
# Classifications that make Hive and Spark SQL use the Glue Data Catalog as their metastore.
GLUE_CLASSIFICATIONS = ("hive-site", "spark-hive-site")
# AmazonEMRServicePolicy_v2 only acts on resources carrying this tag (EMR propagates cluster tags to instances).
MANAGED_POLICY_TAG = ("for-use-with-amazon-emr-managed-policies", "true")
ARTIFACTS = "s3://${ArtifactsBucket}/"
FLEET_NAMES = {"MASTER": "primary", "CORE": "core", "TASK": "task"}


def cluster_request(runtime: Ec2Runtime) -> dict[str, Any]:
    """The RunJobFlow parameters fixed for every run of the pipeline (PascalCase, as the API takes them)."""
    request: dict[str, Any] = {
        "ReleaseLabel": runtime.release_label,
        "Applications": [{"Name": name} for name in runtime.applications],
        "Instances": _instances(runtime),
        "BootstrapActions": [
            {
                "Name": action.name,
                "ScriptBootstrapAction": {"Path": f"{ARTIFACTS}{BOOTSTRAP_PREFIX}{action.script}", "Args": action.args},
            }
            for action in runtime.bootstrap_actions
        ],
        "Configurations": configurations(runtime),
        "ServiceRole": "${ServiceRole}",
        "JobFlowRole": "${InstanceProfile}",
        "SecurityConfiguration": "${SecurityConfiguration}",
        "AutoTerminationPolicy": {"IdleTimeout": runtime.auto_termination_idle_minutes * 60},
        "StepConcurrencyLevel": runtime.step_concurrency,
        "VisibleToAllUsers": True,
    }
    if isinstance(runtime.scaling, ManagedScaling):
        scaling = runtime.scaling
        limits: dict[str, Any] = {
            "UnitType": "InstanceFleetUnits" if isinstance(runtime.instances, InstanceFleets) else "Instances",
            "MinimumCapacityUnits": scaling.minimum_units,
            "MaximumCapacityUnits": scaling.maximum_units,
        }
        if scaling.maximum_on_demand_units is not None:
            limits["MaximumOnDemandCapacityUnits"] = scaling.maximum_on_demand_units
        if scaling.maximum_core_units is not None:
            limits["MaximumCoreCapacityUnits"] = scaling.maximum_core_units
        request["ManagedScalingPolicy"] = {"ComputeLimits": limits}
    if runtime.custom_ami_id is not None:
        request["CustomAmiId"] = runtime.custom_ami_id
    if runtime.ebs_root_volume_gb is not None:
        request["EbsRootVolumeSize"] = runtime.ebs_root_volume_gb
    return request


def configurations(runtime: Ec2Runtime) -> list[dict[str, Any]]:
    """The user's configurations, with the Glue metastore settings merged in (the user's properties win)."""
    merged: dict[str, dict[str, Any]] = {}
    if runtime.glue_catalog:
        for classification in GLUE_CLASSIFICATIONS:
            merged[classification] = {
                "Classification": classification,
                "Properties": {"hive.metastore.client.factory.class": GLUE_FACTORY},
            }
    for config in runtime.configurations:
        rendered = _configuration(config)
        if config.classification in merged:
            base = merged[config.classification]
            base["Properties"] = {**base["Properties"], **rendered["Properties"]}
            if rendered.get("Configurations"):
                base["Configurations"] = rendered["Configurations"]
        else:
            merged[config.classification] = rendered
    return list(merged.values())


def _configuration(config: EmrConfiguration) -> dict[str, Any]:
    out: dict[str, Any] = {"Classification": config.classification, "Properties": dict(config.properties)}
    if config.configurations:
        out["Configurations"] = [_configuration(c) for c in config.configurations]
    return out


def _instances(runtime: Ec2Runtime) -> dict[str, Any]:
    inst = runtime.instances
    out: dict[str, Any] = {"KeepJobFlowAliveWhenNoSteps": True, "TerminationProtected": False}
    if isinstance(inst, InstanceFleets):
        out["InstanceFleets"] = _fleets(runtime, inst)
        if runtime.subnet_ids:
            out["Ec2SubnetIds"] = list(runtime.subnet_ids)
    else:
        out["InstanceGroups"] = _groups(runtime, inst)
        if runtime.subnet_ids:
            out["Ec2SubnetId"] = runtime.subnet_ids[0]
    return out


def _fleets(runtime: Ec2Runtime, inst: InstanceFleets) -> list[dict[str, Any]]:
    primary_types = inst.primary.instance_types or [FleetInstanceType(type=runtime.primary_instance_type())]
    primary_spot = inst.primary.market == "spot"
    fleets = [
        _fleet(
            "MASTER",
            primary_types,
            on_demand=0 if primary_spot else 1,
            spot=1 if primary_spot else 0,
            inst=inst,
            weights=False,
        ),
        _fleet("CORE", inst.core.instance_types, inst.core.on_demand_units, inst.core.spot_units, inst, weights=True),
    ]
    if inst.task is not None and inst.task.on_demand_units + inst.task.spot_units > 0:
        fleets.append(
            _fleet(
                "TASK", inst.task.instance_types, inst.task.on_demand_units, inst.task.spot_units, inst, weights=True
            )
        )
    return fleets


def _fleet(
    kind: str, types: list[FleetInstanceType], on_demand: int, spot: int, inst: InstanceFleets, *, weights: bool
) -> dict[str, Any]:
    configs = []
    for spec in types:
        config: dict[str, Any] = {"InstanceType": spec.type, "WeightedCapacity": spec.weight if weights else 1}
        if spot:
            config["BidPriceAsPercentageOfOnDemandPrice"] = spec.bid_percent_of_on_demand
        if spec.ebs is not None:
            config["EbsConfiguration"] = ebs_configuration(spec.ebs)
        configs.append(config)
    launch: dict[str, Any] = {"OnDemandSpecification": {"AllocationStrategy": inst.on_demand_allocation_strategy}}
    if spot:
        launch["SpotSpecification"] = {
            "TimeoutDurationMinutes": inst.spot.timeout_minutes,
            "TimeoutAction": inst.spot.timeout_action,
            "AllocationStrategy": inst.spot.allocation_strategy,
        }
    return {
        "Name": FLEET_NAMES[kind],
        "InstanceFleetType": kind,
        "TargetOnDemandCapacity": on_demand,
        "TargetSpotCapacity": spot,
        "InstanceTypeConfigs": configs,
        "LaunchSpecifications": launch,
    }


def _groups(runtime: Ec2Runtime, inst: InstanceGroups) -> list[dict[str, Any]]:
    groups = [
        _group("MASTER", inst.primary.instance_type or runtime.primary_instance_type(), 1, inst.primary.market, None),
        _group("CORE", inst.core.instance_type, inst.core.count, inst.core.market, None, inst.core.ebs),
    ]
    groups[0] |= {"EbsConfiguration": ebs_configuration(inst.primary.ebs)} if inst.primary.ebs else {}
    if inst.task is not None and inst.task.count > 0:
        groups.append(
            _group(
                "TASK",
                inst.task.instance_type,
                inst.task.count,
                inst.task.market,
                inst.task.bid_price_usd,
                inst.task.ebs,
            )
        )
    return groups


def _group(
    role: str, instance_type: str, count: int, market: str, bid: str | None, ebs: EbsVolumes | None = None
) -> dict[str, Any]:
    group: dict[str, Any] = {
        "Name": FLEET_NAMES[role],
        "InstanceRole": role,
        "Market": market.upper(),
        "InstanceType": instance_type,
        "InstanceCount": count,
    }
    if bid is not None:
        group["BidPrice"] = bid
    if ebs is not None:
        group["EbsConfiguration"] = ebs_configuration(ebs)
    return group


def ebs_configuration(ebs: EbsVolumes) -> dict[str, Any]:
    volume: dict[str, Any] = {"VolumeType": ebs.volume_type, "SizeInGB": ebs.size_gb}
    if ebs.iops is not None:
        volume["Iops"] = ebs.iops
    if ebs.throughput_mibps is not None:
        volume["Throughput"] = ebs.throughput_mibps
    return {
        "EbsBlockDeviceConfigs": [{"VolumeSpecification": volume, "VolumesPerInstance": ebs.volumes_per_instance}],
        "EbsOptimized": True,
    }


# --------------------------------------------------------------------------- steps


def step_templates(runtime: Ec2Runtime, artifacts_bucket: str) -> list[dict[str, Any]]:
    """Each step as {name, timeout_seconds, max_attempts, retry_when, hadoop_jar_step}; arguments keep their
    `{{tokens}}`. `timeout_seconds` is the step's own: the first step run on a cluster also waits for the cluster to
    start (`launch_settings`' `startup_seconds`, added by RunSteps). `max_attempts` and `retry_when` are
    `runtime.retry` (the workflow's RunSteps re-submits on them)."""
    jobs = f"s3://{artifacts_bucket}/{JOBS_PREFIX}"
    return [
        {
            "name": step.name,
            "timeout_seconds": step.timeout_minutes * 60,
            "max_attempts": runtime.retry.max_attempts,
            "retry_when": list(runtime.retry.when),
            "hadoop_jar_step": _jar_step(step, jobs),
        }
        for step in runtime.steps
    ]


def launch_settings(runtime: Ec2Runtime) -> dict[str, Any]:
    """The run's first cluster launch (Prepare's `run.launch`; ClassifyClusterFailure returns the next):
    `startup_seconds` is what the first step run on a cluster adds to its timeout (EMR holds it PENDING until the
    cluster is ready: `runtime.startup_timeout_minutes`, 0 on an existing cluster); `max_attempts` the clusters a
    run may launch (`runtime.retry` with a cluster class, else 1); `retry_when` the classes that relaunch."""
    return {
        "attempt": 1,
        "max_attempts": runtime.retry.cluster_attempts,
        "resume_from": 0,
        "startup_seconds": runtime.startup_minutes * 60,
        "retry_when": [c for c in runtime.retry.when if c in CLUSTER_FAILURE_CLASSES],
        "earlier": [],
    }


def _jar_step(step: SparkStep | S3DistCpStep | HiveStep | JarStep, jobs: str) -> dict[str, Any]:
    if isinstance(step, SparkStep):
        args = [
            "spark-submit",
            "--deploy-mode",
            "cluster",
            *shlex.split(step.spark_submit_parameters),
            jobs + step.entry_point,
            "--manifest",
            "{{manifest}}",
            "--output",
            "{{output}}",
            "--run-id",
            "{{run_id}}",
            *step.arguments,
        ]
        return {"Jar": "command-runner.jar", "Args": args}
    if isinstance(step, S3DistCpStep):
        return {
            "Jar": "command-runner.jar",
            "Args": ["s3-dist-cp", f"--src={step.src}", f"--dest={step.dest}", *step.arguments],
        }
    if isinstance(step, HiveStep):
        variables = {"OUTPUT": "{{output}}", "RUN_ID": "{{run_id}}", "MANIFEST": "{{manifest}}", **step.variables}
        defines = [part for key, value in variables.items() for part in ("-d", f"{key}={value}")]
        return {
            "Jar": "command-runner.jar",
            "Args": ["hive-script", "--run-hive-script", "--args", "-f", jobs + step.script, *defines],
        }
    jar = step.jar if step.jar == "command-runner.jar" else jobs + step.jar
    out: dict[str, Any] = {"Jar": jar, "Args": list(step.arguments)}
    if step.main_class is not None:
        out["MainClass"] = step.main_class
    return out


def managed_tags() -> dict[str, str]:
    """Tags every cluster carries besides the deployment's and the run's."""
    return {MANAGED_POLICY_TAG[0]: MANAGED_POLICY_TAG[1]}
