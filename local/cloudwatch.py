"""CloudWatch alarms for the twin: "CloudWatch Alarm State Change" events on the twin's EventBridge bus.

Initial states, evaluation (periods, TreatMissingData), reasons, what is not modelled: docs/twin/cloudwatch.md.
"""

from __future__ import annotations

import inspect
import json
import logging
import operator
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from moto.cloudwatch.exceptions import InvalidParameterValue, ValidationError
from moto.cloudwatch.models import CloudWatchBackend, cloudwatch_backends

LOG = logging.getLogger("twin.cloudwatch")

SOURCE = "aws.cloudwatch"
DETAIL_TYPE = "CloudWatch Alarm State Change"
STATES = ("ALARM", "INSUFFICIENT_DATA", "OK")
INITIAL_REASON = "Unchecked: Initial alarm creation"
STATISTICS = ("Average", "Maximum", "Minimum", "SampleCount", "Sum")
TREATMENTS = ("breaching", "notBreaching", "ignore", "missing")
# comparison operator -> (breaches(value, threshold), the words of a state reason)
THRESHOLD_OPERATORS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "GreaterThanOrEqualToThreshold": (operator.ge, "greater than or equal to"),
    "GreaterThanThreshold": (operator.gt, "greater than"),
    "LessThanThreshold": (operator.lt, "less than"),
    "LessThanOrEqualToThreshold": (operator.le, "less than or equal to"),
}
ANOMALY_OPERATORS = ("GreaterThanUpperThreshold", "LessThanLowerOrGreaterThanUpperThreshold", "LessThanLowerThreshold")
EXTRA_RANGE_PERIODS = 2  # evaluation range = EvaluationPeriods + this (the user guide's examples: 3 -> 5)
_ORIGINALS: dict[str, Any] = {}


def aws_timestamp(moment: datetime) -> str:
    """CloudWatch's event timestamp format: `2019-10-02T17:04:40.985+0000` (UTC, milliseconds)."""
    moment = naive_utc(moment)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}+0000"


def naive_utc(moment: datetime) -> datetime:
    """`moment` as the naive UTC datetime moto stores (aware datetimes are converted)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _was(count: int) -> str:
    return "was" if count == 1 else "were"


@dataclass(frozen=True)
class AlarmSpec:
    """What evaluating a single-metric threshold alarm needs (None from `spec_of` for other alarms)."""

    namespace: str
    metric_name: str
    dimensions: frozenset[tuple[str, str]]
    unit: str | None
    period: int
    evaluation_periods: int
    datapoints_to_alarm: int
    statistic: str
    comparison: str
    threshold: float
    treat_missing_data: str

    def breaches(self, value: float) -> bool:
        return THRESHOLD_OPERATORS[self.comparison][0](value, self.threshold)


def spec_of(alarm: Any) -> AlarmSpec | None:
    """The evaluation spec of a moto alarm, or None when the twin does not evaluate it (module docstring)."""
    if (
        alarm.rule is not None
        or alarm.metric_data_queries
        or alarm.extended_statistic
        or alarm.threshold_metric_id
        or alarm.statistic not in STATISTICS
        or alarm.comparison_operator not in THRESHOLD_OPERATORS
        or not alarm.namespace
        or not alarm.metric_name
        or not alarm.period
        or not alarm.evaluation_periods
        or alarm.threshold is None
    ):
        return None
    evaluation_periods = int(alarm.evaluation_periods)
    default_treatment = "ignore" if alarm.namespace == "AWS/DynamoDB" else "missing"
    return AlarmSpec(
        namespace=alarm.namespace,
        metric_name=alarm.metric_name,
        dimensions=frozenset((d.name, d.value) for d in alarm.dimensions),
        unit=alarm.unit,
        period=int(alarm.period),
        evaluation_periods=evaluation_periods,
        datapoints_to_alarm=int(alarm.datapoints_to_alarm or evaluation_periods),
        statistic=alarm.statistic,
        comparison=alarm.comparison_operator,
        threshold=float(alarm.threshold),
        treat_missing_data=alarm.treat_missing_data or default_treatment,
    )


@dataclass
class Period:
    """One period of an evaluation: (start, end], its datapoints folded into count / sum / min / max."""

    index: int  # 0 = the newest
    start: datetime
    count: float = 0.0
    total: float = 0.0
    low: float = 0.0
    high: float = 0.0

    def add(self, count: float, total: float, low: float, high: float) -> None:
        if count <= 0:
            return
        self.low = low if not self.count else min(self.low, low)
        self.high = high if not self.count else max(self.high, high)
        self.count += count
        self.total += total

    def value(self, statistic: str) -> float | None:
        """The period's statistic; None when it holds no datapoint (a missing datapoint)."""
        if not self.count:
            return None
        return {
            "SampleCount": self.count,
            "Sum": self.total,
            "Minimum": self.low,
            "Maximum": self.high,
            "Average": self.total / self.count,
        }[statistic]


@dataclass(frozen=True)
class Point:
    """A real datapoint of an evaluation."""

    period: Period
    value: float
    breaching: bool


@dataclass(frozen=True)
class Outcome:
    """The state an evaluation sets: value, reason and reason data (a JSON string)."""

    value: str
    reason: str
    reason_data: str


def fold(spec: AlarmSpec, data: Iterable[Any], now: datetime) -> list[Period]:
    """The evaluation range at `now`, newest period first, with the alarm's metric datapoints folded in."""
    now = naive_utc(now)
    span = spec.evaluation_periods + EXTRA_RANGE_PERIODS
    width = timedelta(seconds=spec.period)
    periods = [Period(k, now - (k + 1) * width) for k in range(span)]
    for datum in data:
        if not _is_series(datum, spec):
            continue
        age = now - naive_utc(datum.timestamp)
        if age < timedelta(0):
            continue  # a future timestamp: not yet in any period
        index = 0 if not age else (age - timedelta(microseconds=1)) // width
        if index >= span:
            continue
        if hasattr(datum, "sample_count"):  # StatisticValues
            periods[index].add(float(datum.sample_count), float(datum.sum), float(datum.min), float(datum.max))
        else:
            value = float(datum.value)
            periods[index].add(1.0, value, value, value)
    return periods


def _is_series(datum: Any, spec: AlarmSpec) -> bool:
    if datum.namespace != spec.namespace or datum.name != spec.metric_name:
        return False
    if spec.unit is not None and (datum.unit or "None") != spec.unit:
        return False
    return frozenset((d.name, d.value) for d in datum.dimensions) == spec.dimensions


def decide(spec: AlarmSpec, periods: Sequence[Period], now: datetime) -> Outcome | None:
    """CloudWatch's decision over the evaluation range (module docstring); None keeps the current state."""
    n, m, treat = spec.evaluation_periods, spec.datapoints_to_alarm, spec.treat_missing_data
    points = [Point(p, v, spec.breaches(v)) for p in periods if (v := p.value(spec.statistic)) is not None]
    report = _Report(spec, now)
    if not points:
        if treat == "ignore":
            return None
        if treat == "missing":
            return report.insufficient(list(periods[:n]))
        return report.filled([], list(periods[:n]), breaching=treat == "breaching")
    if len(points) >= n:
        return report.threshold(points[:n])
    if treat in ("breaching", "notBreaching"):
        gaps = [p for p in periods if p.value(spec.statistic) is None][: n - len(points)]
        return report.filled(points, gaps, breaching=treat == "breaching")
    breaching = sum(1 for point in points if point.breaching)
    if breaching < m and breaching == len(points):  # every real datapoint breaches, too few of them
        if points[-1].period.index + 1 >= m and treat == "missing":
            return report.threshold(points, premature=True)
        return None  # `ignore`, or too recent to alarm yet: CloudWatch waits for the next datapoint
    return report.threshold(points)


class _Report:
    """State reasons and reason data in CloudWatch's wording."""

    def __init__(self, spec: AlarmSpec, now: datetime) -> None:
        self.spec = spec
        self.now = now

    def threshold(self, points: list[Point], *, premature: bool = False) -> Outcome:
        spec = self.spec
        alarm = premature or sum(1 for p in points if p.breaching) >= spec.datapoints_to_alarm
        crossing = [p for p in points if p.breaching == alarm]
        words = THRESHOLD_OPERATORS[spec.comparison][1] if alarm else "not " + THRESHOLD_OPERATORS[spec.comparison][1]
        listed = ", ".join(f"{p.value!r} ({p.period.start:%d/%m/%y %H:%M:%S})" for p in crossing)
        if alarm:
            minimum, transition = spec.datapoints_to_alarm, "OK -> ALARM"
        else:
            minimum, transition = spec.evaluation_periods - spec.datapoints_to_alarm + 1, "ALARM -> OK"
        reason = (
            f"Threshold Crossed: {len(crossing)} out of the last {len(points)} datapoints [{listed}] "
            f"{_was(len(crossing))} {words} the threshold ({spec.threshold!r}) "
            f"(minimum {_plural(minimum, 'datapoint')} for {transition} transition)."
        )
        return Outcome("ALARM" if alarm else "OK", reason, self._data(points, []))

    def filled(self, points: list[Point], gaps: list[Period], *, breaching: bool) -> Outcome:
        spec = self.spec
        count = sum(1 for p in points if p.breaching) + (len(gaps) if breaching else 0)
        if not points:
            received = "no datapoints were"
        else:
            received = f"{_plural(len(points), 'datapoint')} {_was(len(points))}"
        reason = (
            f"Threshold Crossed: {received} received for {_plural(spec.evaluation_periods, 'period')} and "
            f"{_plural(len(gaps), 'missing datapoint')} {_was(len(gaps))} treated as "
            f"[{'Breaching' if breaching else 'NonBreaching'}]."
        )
        value = "ALARM" if count >= spec.datapoints_to_alarm else "OK"
        return Outcome(value, reason, self._data(points, gaps))

    def insufficient(self, gaps: list[Period]) -> Outcome:
        reason = f"Insufficient Data: {_plural(len(gaps), 'datapoint')} {_was(len(gaps))} unknown."
        return Outcome("INSUFFICIENT_DATA", reason, self._data([], gaps))

    def _data(self, points: list[Point], gaps: list[Period]) -> str:
        """The reason data JSON: recentDatapoints oldest first, evaluatedDatapoints newest first."""
        spec = self.spec
        evaluated: list[tuple[Period, dict[str, Any]]] = [
            (p.period, {"timestamp": aws_timestamp(p.period.start), "sampleCount": p.period.count, "value": p.value})
            for p in points
        ]
        evaluated += [(gap, {"timestamp": aws_timestamp(gap.start)}) for gap in gaps]
        evaluated.sort(key=lambda item: item[0].index)
        data = {
            "version": "1.0",
            "queryDate": aws_timestamp(self.now),
            "startDate": aws_timestamp(evaluated[-1][0].start),
            "statistic": spec.statistic,
            "period": spec.period,
            "recentDatapoints": [p.value for p in reversed(points)],
            "threshold": spec.threshold,
            "evaluatedDatapoints": [entry for _, entry in evaluated],
        }
        return json.dumps(data, separators=(",", ":"))


@dataclass(frozen=True)
class _State:
    value: str
    reason: str | None
    reason_data: str | None
    timestamp: datetime

    @classmethod
    def of(cls, alarm: Any) -> _State:
        return cls(alarm.state_value, alarm.state_reason, alarm.state_reason_data, alarm.state_updated_timestamp)

    def to_event(self) -> dict[str, Any]:
        state: dict[str, Any] = {"value": self.value, "reason": self.reason}
        if self.reason_data is not None:
            state["reasonData"] = self.reason_data
        state["timestamp"] = aws_timestamp(self.timestamp)
        return state


class CloudWatchAlarms:
    """The twin's alarm state changes (see the module docstring); `install(alarms)` hooks it into moto."""

    def __init__(self, *, account: str, region: str, emit: Callable[[dict[str, Any]], None]) -> None:
        self.account = account
        self.region = region
        self.emit = emit
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # "now" of evaluations and state changes
        self.events: list[dict[str, Any]] = []  # every state change event put on the bus, in order
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ twin-facing helpers

    def backend(self) -> CloudWatchBackend:
        """moto's CloudWatch backend of the twin's account and region."""
        backend: CloudWatchBackend = cloudwatch_backends[self.account][self.region]
        return backend

    def set_alarm_state(self, name: str, value: str, reason: str, reason_data: str | None = None) -> None:
        """SetAlarmState in-process (the same as `twin.client("cloudwatch").set_alarm_state(...)`)."""
        if value not in STATES:
            raise ValueError(f"value: got {value!r}; expected one of {', '.join(STATES)}")
        if not isinstance(reason, str):
            raise ValueError(f"reason: expected a string, got {type(reason).__name__}")
        if reason_data is not None:
            try:
                json.loads(reason_data)
            except (TypeError, ValueError):
                raise ValueError(f"reason_data: expected a JSON string, got {reason_data!r}") from None
        backend = self.backend()
        if name not in backend.alarms:
            raise LookupError(f"name: no alarm named {name!r} in {self.account}/{self.region}")
        backend.set_alarm_state(name, reason, reason_data, value)  # type: ignore[arg-type]

    def evaluate(self, name: str | None = None) -> list[dict[str, Any]]:
        """One CloudWatch evaluation tick at `clock()` for every evaluated alarm (or alarm `name`).

        Returns the state change events it emitted. A named alarm the twin does not evaluate (metric math,
        anomaly detection, percentile, composite) is a ValueError naming it.
        """
        backend = self.backend()
        with self._lock:
            if name is not None:
                alarm = backend.alarms.get(name)
                if alarm is None:
                    raise LookupError(f"name: no alarm named {name!r} in {self.account}/{self.region}")
                if spec_of(alarm) is None:
                    raise ValueError(f"name: alarm {name!r} is not a single-metric threshold alarm the twin evaluates")
                alarms = [alarm]
            else:
                alarms = list(backend.alarms.values())
            now = naive_utc(self.clock())
            emitted = [self._evaluate(backend, alarm, now) for alarm in alarms]
        return [event for event in emitted if event is not None]

    # ------------------------------------------------------------------ hooks (called through moto)

    def put_metric_alarm(self, original: Callable[..., Any], backend: Any, *args: Any, **kwargs: Any) -> Any:
        arguments = inspect.signature(original).bind(backend, *args, **kwargs).arguments
        if arguments.get("rule") is None:
            _validate_metric_alarm(arguments)
        with self._lock:
            previous = backend.alarms.get(arguments["name"])
            alarm = original(backend, *args, **kwargs)
            if previous is None:
                alarm.state_value, alarm.state_reason = "INSUFFICIENT_DATA", INITIAL_REASON
                alarm.state_reason_data, alarm.state_updated_timestamp = None, naive_utc(self.clock())
            else:  # an update leaves the state as it was
                alarm.state_value, alarm.state_reason = previous.state_value, previous.state_reason
                alarm.state_reason_data = previous.state_reason_data
                alarm.state_updated_timestamp = previous.state_updated_timestamp
                alarm.history = previous.history
        return alarm

    def set_alarm_state_hook(self, original: Callable[..., Any], backend: Any, *args: Any, **kwargs: Any) -> Any:
        arguments = inspect.signature(original).bind(backend, *args, **kwargs).arguments
        with self._lock:
            alarm = backend.alarms.get(arguments["alarm_name"])
            before = _State.of(alarm) if alarm is not None else None
            result = original(backend, *args, **kwargs)  # moto validates (ResourceNotFound, stateValue, JSON)
            alarm = backend.alarms[arguments["alarm_name"]]
            alarm.state_updated_timestamp = naive_utc(self.clock())
            if before is not None and before.value != alarm.state_value:
                self._emit(backend, alarm, before)
        return result

    def put_metric_data(self, original: Callable[..., Any], backend: Any, namespace: str, metric_data: Any) -> Any:
        metric_data = _checked_metric_data(metric_data)
        result = original(backend, namespace, metric_data)
        series = {(namespace, m.get("MetricName"), _dimensions(m.get("Dimensions"))) for m in metric_data}
        with self._lock:
            now = naive_utc(self.clock())
            for alarm in list(backend.alarms.values()):
                spec = spec_of(alarm)
                if spec is not None and (spec.namespace, spec.metric_name, spec.dimensions) in series:
                    self._evaluate(backend, alarm, now)
        return result

    # ------------------------------------------------------------------ internals

    def _evaluate(self, backend: Any, alarm: Any, now: datetime) -> dict[str, Any] | None:
        spec = spec_of(alarm)
        if spec is None:
            return None
        outcome = decide(spec, fold(spec, list(backend.metric_data), now), now)
        if outcome is None or outcome.value == alarm.state_value:
            return None
        before = _State.of(alarm)
        alarm.update_state(outcome.reason, outcome.reason_data, outcome.value)
        alarm.state_updated_timestamp = now
        return self._emit(backend, alarm, before)

    def _emit(self, backend: Any, alarm: Any, before: _State) -> dict[str, Any] | None:
        if (backend.account_id, backend.region_name) != (self.account, self.region):
            return None  # the twin has one bus: its own account and region
        after = _State.of(alarm)
        event: dict[str, Any] = {
            "source": SOURCE,
            "detail-type": DETAIL_TYPE,
            "account": self.account,
            "region": self.region,
            "time": f"{naive_utc(after.timestamp):%Y-%m-%dT%H:%M:%SZ}",
            "resources": [alarm.alarm_arn],
            "detail": {
                "alarmName": alarm.name,
                "state": after.to_event(),
                "previousState": before.to_event(),
                "configuration": _configuration(alarm),
            },
        }
        event = json.loads(json.dumps(event))  # nothing shared with moto's objects
        self.events.append(event)
        self.emit(event)
        return event


def _configuration(alarm: Any) -> dict[str, Any]:
    """The event's `configuration`: description and metrics (composite alarms: alarmRule)."""
    configuration: dict[str, Any] = {}
    if alarm.description is not None:
        configuration["description"] = alarm.description
    if alarm.rule is not None:
        configuration["alarmRule"] = alarm.rule
        return configuration
    if alarm.metric_data_queries:
        configuration["metrics"] = [_query(query) for query in alarm.metric_data_queries]
        return configuration
    stat: dict[str, Any] = {
        "metric": {
            "namespace": alarm.namespace,
            "name": alarm.metric_name,
            "dimensions": {d.name: d.value for d in alarm.dimensions},
        },
        "period": int(alarm.period) if alarm.period is not None else None,
        "stat": alarm.statistic or alarm.extended_statistic,
    }
    if alarm.unit:
        stat["unit"] = alarm.unit
    metric_id = str(uuid.uuid5(uuid.NAMESPACE_URL, alarm.alarm_arn))
    configuration["metrics"] = [{"id": metric_id, "metricStat": stat, "returnData": True}]
    return configuration


def _query(query: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": query.id}
    if query.expression:
        entry["expression"] = query.expression
    if query.label:
        entry["label"] = query.label
    if query.metric_stat is not None:
        metric = query.metric_stat.metric
        stat: dict[str, Any] = {
            "metric": {
                "namespace": metric.namespace,
                "name": metric.metric_name,
                "dimensions": {d.name: d.value for d in metric.dimensions},
            },
            "period": int(query.metric_stat.period) if query.metric_stat.period is not None else None,
            "stat": query.metric_stat.stat,
        }
        if query.metric_stat.unit:
            stat["unit"] = query.metric_stat.unit
        entry["metricStat"] = stat
    return_data = query.return_data
    entry["returnData"] = True if return_data is None else str(return_data).lower() == "true"
    return entry


def _dimensions(dimensions: Any) -> frozenset[tuple[Any, Any]]:
    return frozenset((d.get("Name"), d.get("Value")) for d in dimensions or [])


def _enum_error(field: str, value: Any, allowed: Iterable[str]) -> ValidationError:
    return ValidationError(
        f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: "
        f"Member must satisfy enum value set: [{', '.join(sorted(allowed))}]"
    )


def _validate_metric_alarm(arguments: dict[str, Any]) -> None:
    """What PutMetricAlarm rejects and moto accepts, among the fields the evaluation reads."""
    comparison = arguments.get("comparison_operator")
    if comparison is not None and comparison not in THRESHOLD_OPERATORS and comparison not in ANOMALY_OPERATORS:
        raise _enum_error("comparisonOperator", comparison, [*THRESHOLD_OPERATORS, *ANOMALY_OPERATORS])
    statistic = arguments.get("statistic")
    if statistic is not None and statistic not in STATISTICS:
        raise _enum_error("statistic", statistic, STATISTICS)
    treatment = arguments.get("treat_missing_data")
    if treatment is not None and treatment not in TREATMENTS:
        raise ValidationError(
            f"Option {treatment} is not supported. Supported options for parameter TreatMissingData are "
            "breaching, notBreaching, ignore and missing."
        )
    periods, datapoints = arguments.get("evaluation_periods"), arguments.get("datapoints_to_alarm")
    if periods is not None and datapoints is not None and int(datapoints) > int(periods):
        raise ValidationError("DatapointsToAlarm must be less than or equal to EvaluationPeriods")


def _checked_metric_data(metric_data: Any) -> list[dict[str, Any]]:
    """PutMetricData members with datetime timestamps (ISO strings parsed); a bad one names its member."""
    checked: list[dict[str, Any]] = []
    for number, member in enumerate(metric_data or [], start=1):
        timestamp = member.get("Timestamp")
        if timestamp is None or isinstance(timestamp, datetime):
            checked.append(member)
            continue
        try:
            parsed = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidParameterValue(
                f"The value {timestamp} for parameter MetricData.member.{number}.Timestamp is invalid."
            ) from None
        checked.append({**member, "Timestamp": naive_utc(parsed)})
    return checked


def install(alarms: CloudWatchAlarms) -> None:
    """Hook `alarms` into moto's CloudWatch backend; reinstalling (a new twin) rebinds the hooks."""
    _ORIGINALS.setdefault("put_metric_alarm", CloudWatchBackend.put_metric_alarm)
    _ORIGINALS.setdefault("set_alarm_state", CloudWatchBackend.set_alarm_state)
    _ORIGINALS.setdefault("put_metric_data", CloudWatchBackend.put_metric_data)

    def put_metric_alarm(backend: Any, *args: Any, **kwargs: Any) -> Any:
        return alarms.put_metric_alarm(_ORIGINALS["put_metric_alarm"], backend, *args, **kwargs)

    def set_alarm_state(backend: Any, *args: Any, **kwargs: Any) -> Any:
        return alarms.set_alarm_state_hook(_ORIGINALS["set_alarm_state"], backend, *args, **kwargs)

    def put_metric_data(backend: Any, namespace: str, metric_data: Any) -> Any:
        return alarms.put_metric_data(_ORIGINALS["put_metric_data"], backend, namespace, metric_data)

    setattr(CloudWatchBackend, "put_metric_alarm", put_metric_alarm)  # noqa: B010 - monkeypatch
    setattr(CloudWatchBackend, "set_alarm_state", set_alarm_state)  # noqa: B010 - monkeypatch
    setattr(CloudWatchBackend, "put_metric_data", put_metric_data)  # noqa: B010 - monkeypatch


def uninstall() -> None:
    """Put moto's CloudWatch backend back as it was."""
    for name, original in _ORIGINALS.items():
        setattr(CloudWatchBackend, name, original)
