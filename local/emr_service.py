"""What the twin's EMR emulators (on EC2, on EKS, Serverless) share: how they are built and how they run Spark."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, TypedDict, Unpack

from local.faults import FaultInjector
from local.spark_runner import SparkJob, SparkResult


class JobRunner(Protocol):
    """Runs one Spark job to its end (`local.spark_runner.SparkRunner`); `cancel` set stops it."""

    def run(self, job: SparkJob, cancel: threading.Event | None = None) -> SparkResult: ...


class EmrServiceSettings(TypedDict):
    """What every EMR emulator of the twin is built with (keyword arguments of its constructor)."""

    account: str
    region: str
    runner: JobRunner | None  # None -> "instant" mode: jobs and spark-submit steps complete at once without Spark
    faults: FaultInjector
    emit: Callable[[dict[str, Any]], None]  # an EventBridge event {source, detail-type, resources, detail}


class EmrServiceModel:
    """One EMR service of the twin: its account and region, its Spark runner, its faults and where its events go."""

    def __init__(self, **settings: Unpack[EmrServiceSettings]) -> None:
        self.account = settings["account"]
        self.region = settings["region"]
        self.runner = settings["runner"]
        self.faults = settings["faults"]
        self.emit = settings["emit"]
