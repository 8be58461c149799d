"""The response shapes of the EMR API: clusters, steps, fleets, groups and instances (docs/twin/emr-on-ec2.md)."""

from __future__ import annotations

import copy
import math
import re
import time
from typing import Any

from local.emr_ec2.model import Cluster, Instance, InstanceFleet, InstanceGroup, Step, normalization_factor, timeline

_ECHOED_REQUEST_KEYS = (
    "SecurityConfiguration",
    "AutoScalingRole",
    "CustomAmiId",
    "EbsRootVolumeSize",
    "OSReleaseLabel",
    "EbsRootVolumeIops",
    "EbsRootVolumeThroughput",
    "LogEncryptionKmsKeyId",
    "PlacementGroupConfigs",
)


def cluster_status(c: Cluster) -> dict[str, Any]:
    return {
        "State": c.state,
        "StateChangeReason": dict(c.reason),
        "Timeline": timeline(CreationDateTime=c.created, ReadyDateTime=c.ready, EndDateTime=c.ended),
    }


def cluster_shape(c: Cluster, region: str) -> dict[str, Any]:
    request, instances = c.request, c.request["Instances"]
    shape: dict[str, Any] = {
        "Id": c.id,
        "Name": c.name,
        "Status": cluster_status(c),
        "Ec2InstanceAttributes": _ec2_attributes(c, region),
        "InstanceCollectionType": c.collection_type,
        "ReleaseLabel": c.release_label,
        "AutoTerminate": not c.keep_alive,
        "TerminationProtected": c.termination_protected,
        "VisibleToAllUsers": bool(request.get("VisibleToAllUsers", True)),
        "Applications": [{"Name": a["Name"]} for a in request.get("Applications") or []],
        "Tags": [{"Key": k, "Value": v} for k, v in c.tags.items()],
        "ServiceRole": request["ServiceRole"],
        "NormalizedInstanceHours": instance_hours(c),
        "Configurations": copy.deepcopy(request.get("Configurations") or []),
        "ScaleDownBehavior": request.get("ScaleDownBehavior", "TERMINATE_AT_TASK_COMPLETION"),
        "ClusterArn": c.arn,
        "StepConcurrencyLevel": c.step_concurrency,
    }
    if c.log_uri:
        # EMR reports an s3:// log URI with the s3n:// scheme in DescribeCluster.
        shape["LogUri"] = re.sub(r"^s3://", "s3n://", c.log_uri)
    if c.master_dns:
        shape["MasterPublicDnsName"] = c.master_dns
    if instances.get("UnhealthyNodeReplacement") is not None:
        shape["UnhealthyNodeReplacement"] = instances["UnhealthyNodeReplacement"]
    for key in _ECHOED_REQUEST_KEYS:
        if request.get(key) is not None:
            shape["PlacementGroups" if key == "PlacementGroupConfigs" else key] = copy.deepcopy(request[key])
    return shape


def _ec2_attributes(c: Cluster, region: str) -> dict[str, Any]:
    instances = c.request["Instances"]
    subnets = list(instances.get("Ec2SubnetIds") or [])
    if not subnets and instances.get("Ec2SubnetId"):
        subnets = [instances["Ec2SubnetId"]]
    zones = list((instances.get("Placement") or {}).get("AvailabilityZones") or [])
    zone = (instances.get("Placement") or {}).get("AvailabilityZone") or (zones[0] if zones else f"{region}a")
    attributes: dict[str, Any] = {
        "Ec2AvailabilityZone": zone,
        "RequestedEc2SubnetIds": subnets,
        "RequestedEc2AvailabilityZones": zones,
        "IamInstanceProfile": c.request["JobFlowRole"],
        "AdditionalMasterSecurityGroups": list(instances.get("AdditionalMasterSecurityGroups") or []),
        "AdditionalSlaveSecurityGroups": list(instances.get("AdditionalSlaveSecurityGroups") or []),
    }
    if subnets:
        attributes["Ec2SubnetId"] = subnets[0]
    for key in ("Ec2KeyName", "EmrManagedMasterSecurityGroup", "EmrManagedSlaveSecurityGroup",
                "ServiceAccessSecurityGroup"):  # fmt: skip
        if instances.get(key):
            attributes[key] = instances[key]
    return attributes


def instance_hours(c: Cluster) -> int:
    """EMR's NormalizedInstanceHours: per instance, normalization factor x hours rounded up to whole hours."""
    now = time.time()
    total = sum(
        normalization_factor(i.instance_type) * max(1, math.ceil(((i.ended or now) - i.created) / 3600))
        for i in c.instances
    )
    return math.ceil(total)


def step_shape(s: Step) -> dict[str, Any]:
    status: dict[str, Any] = {
        "State": s.state,
        "StateChangeReason": dict(s.reason),
        "Timeline": timeline(CreationDateTime=s.created, StartDateTime=s.started, EndDateTime=s.ended),
    }
    if s.failure:
        status["FailureDetails"] = dict(s.failure)
    shape: dict[str, Any] = {
        "Id": s.id,
        "Name": s.name,
        "Config": copy.deepcopy(s.config),
        "ActionOnFailure": s.action_on_failure,
        "Status": status,
    }
    if s.execution_role_arn:
        shape["ExecutionRoleArn"] = s.execution_role_arn
    if s.log_uri:
        shape["LogUri"] = s.log_uri
    return shape


def _ebs_devices(ebs: dict[str, Any] | None) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = []
    for block in (ebs or {}).get("EbsBlockDeviceConfigs") or []:
        for _ in range(int(block.get("VolumesPerInstance") or 1)):
            device = f"/dev/sd{'fghijklmnop'[len(devices) % 11]}"
            devices.append({"VolumeSpecification": dict(block["VolumeSpecification"]), "Device": device})
    return devices


def fleet_shape(fleet: InstanceFleet) -> dict[str, Any]:
    specs = []
    for config in fleet.type_configs:
        spec: dict[str, Any] = {
            "InstanceType": config["InstanceType"],
            "WeightedCapacity": int(config.get("WeightedCapacity") or 1),
            "EbsBlockDevices": _ebs_devices(config.get("EbsConfiguration")),
        }
        if fleet.target_spot and not config.get("BidPrice"):
            percentage = config.get("BidPriceAsPercentageOfOnDemandPrice", 100.0)
            spec["BidPriceAsPercentageOfOnDemandPrice"] = float(percentage)
        for key in ("BidPrice", "Configurations", "CustomAmiId", "Priority"):
            if config.get(key) is not None:
                spec[key] = copy.deepcopy(config[key])
        if (config.get("EbsConfiguration") or {}).get("EbsOptimized") is not None:
            spec["EbsOptimized"] = config["EbsConfiguration"]["EbsOptimized"]
        specs.append(spec)
    shape: dict[str, Any] = {
        "Id": fleet.id,
        "Name": fleet.name,
        "Status": {
            "State": fleet.state,
            "StateChangeReason": dict(fleet.reason),
            "Timeline": timeline(CreationDateTime=fleet.created, ReadyDateTime=fleet.ready, EndDateTime=fleet.ended),
        },
        "InstanceFleetType": fleet.fleet_type,
        "TargetOnDemandCapacity": fleet.target_on_demand,
        "TargetSpotCapacity": fleet.target_spot,
        "ProvisionedOnDemandCapacity": fleet.provisioned_on_demand,
        "ProvisionedSpotCapacity": fleet.provisioned_spot,
        "InstanceTypeSpecifications": specs,
    }
    for key, value in (("LaunchSpecifications", fleet.launch_specifications),
                       ("ResizeSpecifications", fleet.resize_specifications), ("Context", fleet.context)):  # fmt: skip
        if value is not None:
            shape[key] = copy.deepcopy(value)
    return shape


def group_shape(group: InstanceGroup) -> dict[str, Any]:
    config = group.config
    shape: dict[str, Any] = {
        "Id": group.id,
        "Name": group.name,
        "Market": group.market,
        "InstanceGroupType": group.group_type,
        "InstanceType": group.instance_type,
        "RequestedInstanceCount": group.requested,
        "RunningInstanceCount": group.running,
        "Status": {
            "State": group.state,
            "StateChangeReason": dict(group.reason),
            "Timeline": timeline(CreationDateTime=group.created, ReadyDateTime=group.ready, EndDateTime=group.ended),
        },
        "Configurations": copy.deepcopy(config.get("Configurations") or []),
        "ConfigurationsVersion": 0,
        "LastSuccessfullyAppliedConfigurations": copy.deepcopy(config.get("Configurations") or []),
        "LastSuccessfullyAppliedConfigurationsVersion": 0,
        "EbsBlockDevices": _ebs_devices(config.get("EbsConfiguration")),
        "ShrinkPolicy": {},
    }
    for key in ("BidPrice", "CustomAmiId"):
        if config.get(key) is not None:
            shape[key] = config[key]
    if (config.get("EbsConfiguration") or {}).get("EbsOptimized") is not None:
        shape["EbsOptimized"] = config["EbsConfiguration"]["EbsOptimized"]
    return shape


def instance_shape(i: Instance) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "Id": i.id,
        "Ec2InstanceId": i.ec2_id,
        "PublicDnsName": "",
        "PrivateDnsName": i.private_dns,
        "PrivateIpAddress": i.private_ip,
        "Status": {
            "State": i.state,
            "StateChangeReason": (dict(i.reason) or {"Code": "CLUSTER_TERMINATED"}) if i.state == "TERMINATED" else {},
            "Timeline": timeline(CreationDateTime=i.created, ReadyDateTime=i.ready, EndDateTime=i.ended),
        },
        "Market": i.market,
        "InstanceType": i.instance_type,
        "EbsVolumes": [],
    }
    if i.fleet_id:
        shape["InstanceFleetId"] = i.fleet_id
    if i.group_id:
        shape["InstanceGroupId"] = i.group_id
    return shape
