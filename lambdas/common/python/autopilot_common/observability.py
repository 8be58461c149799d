"""Logger, Tracer and Metrics of a function, made once from its environment, and the handler decorator.

The stack sets `POWERTOOLS_SERVICE_NAME` (`autopilot-<function>`) and `POWERTOOLS_METRICS_NAMESPACE`
(`EmrAutopilot`) on every function; Powertools reads both. `service` is the fallback for tests and tools that
import a handler without that environment. Every handler logs its context (never the event: it may carry
object keys and tags), traces the invocation and flushes its metrics, in that order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer

METRICS_NAMESPACE = "EmrAutopilot"

Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True)
class Observability:
    service: str
    logger: Logger
    tracer: Tracer
    metrics: Metrics

    def handler(self, function: Handler) -> Handler:
        """Context in every log line, an X-Ray subsegment per invocation, metrics flushed at the end."""
        traced = self.tracer.capture_lambda_handler(self.metrics.log_metrics(function))
        return self.logger.inject_lambda_context(log_event=False)(traced)  # type: ignore[return-value]


def observability(service: str) -> Observability:
    """The function's tools: service and namespace from the environment when set, else `service` and
    `EmrAutopilot`."""
    name = os.environ.get("POWERTOOLS_SERVICE_NAME", "").strip() or service
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "").strip() or METRICS_NAMESPACE
    return Observability(
        service=name,
        logger=Logger(service=name),
        tracer=Tracer(service=name),
        metrics=Metrics(namespace=namespace, service=name),
    )
