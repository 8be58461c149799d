"""EMR on EC2 clusters that behave like EMR, owned entirely by the twin (docs/twin/emr-on-ec2.md)."""

from local.emr_ec2.api import EmrEc2Twin
from local.emr_ec2.model import (
    ENDED_CLUSTER_STATES,
    ENDED_STEP_STATES,
    Cluster,
    Instance,
    InstanceFleet,
    InstanceGroup,
    Step,
    normalization_factor,
)
from local.emr_ec2.s3distcp import parse_dist_cp
from local.emr_ec2.steps import parse_spark_submit

__all__ = [
    "ENDED_CLUSTER_STATES",
    "ENDED_STEP_STATES",
    "Cluster",
    "EmrEc2Twin",
    "Instance",
    "InstanceFleet",
    "InstanceGroup",
    "Step",
    "normalization_factor",
    "parse_dist_cp",
    "parse_spark_submit",
]
