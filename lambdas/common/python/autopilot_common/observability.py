"""Logger, Tracer and Metrics of a function, made once from its environment, and the handler decorator.

The stack sets `POWERTOOLS_SERVICE_NAME` (`autopilot-<function>`) and `POWERTOOLS_METRICS_NAMESPACE`
(`EmrAutopilot`) on every function; Powertools reads both. `service` is the fallback for tests and tools that
import a handler without that environment. Every handler logs its context (never the event: it may carry
object keys and tags), traces the invocation and flushes its metrics, in that order.

The Tracer is made only when tracing is on (Powertools' own rule: in Lambda and `POWERTOOLS_TRACE_DISABLED` not
true): making one imports the X-Ray SDK (~100 ms, most of a cold start's import time), even a disabled one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from aws_lambda_powertools import Logger, Metrics

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

METRICS_NAMESPACE = "EmrAutopilot"

Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True)
class Observability:
    """A function's Logger and Metrics (and Tracer when tracing is on), and its handler decorator."""

    service: str
    logger: Logger
    metrics: Metrics

    @cached_property
    def tracer(self) -> Tracer | None:
        """The function's Tracer, or None when tracing is off."""
        from aws_lambda_powertools.tracing.tracer import Tracer  # deferred: see the module docstring

        return None if Tracer._is_tracer_disabled() else Tracer(service=self.service)

    def handler(self, function: Handler) -> Handler:
        """Context in every log line, an X-Ray subsegment per invocation (tracing on), metrics flushed at the end."""
        measured = self.metrics.log_metrics(function)
        traced = measured if self.tracer is None else self.tracer.capture_lambda_handler(measured)
        return self.logger.inject_lambda_context(log_event=False)(traced)  # type: ignore[return-value]


def observability(service: str) -> Observability:
    """The function's tools: service and namespace from the environment when set, else `service` and
    `EmrAutopilot`."""
    name = os.environ.get("POWERTOOLS_SERVICE_NAME", "").strip() or service
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "").strip() or METRICS_NAMESPACE
    return Observability(
        service=name,
        logger=Logger(service=name),
        metrics=Metrics(namespace=namespace, service=name),
    )
