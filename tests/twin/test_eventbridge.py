"""Local twin EventBridge: event-pattern matching and target-input rendering with AWS semantics.

Pure Python, no moto. Expected values come from AWS: the EventBridge user guide, aws/event-ruler (the
matcher EventBridge uses) and LocalStack's AWS-validated fixtures; see local/eventbridge.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from local.eventbridge import PatternError, matches, render_target_input, validate_pattern
from tests.conftest import load_event

# The product's rule: S3 "Object Created" in the landing bucket under sales/, any depth, .csv only.
PRODUCT_PATTERN: dict[str, Any] = {
    "source": ["aws.s3"],
    "detail-type": ["Object Created"],
    "detail": {"bucket": {"name": ["landing-bkt"]}, "object": {"key": [{"wildcard": "sales/*.csv"}]}},
}
PRODUCT_TEMPLATE = (
    '{"pipeline": "sales-daily", "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:x", '
    '"trigger": {"mode": "window"}, "event": <aws.events.event.json>}'
)
RULE_ARN = "arn:aws:events:us-east-1:123456789012:rule/landing-rule"

# Keys that must survive every rendering byte-exact (S3 keys arrive URL-decoded in EventBridge events).
TRICKY_KEYS = [
    "sales/Q1 report+final %20ü.csv",
    "sales/a%2Bb+c.csv",
    'sales/say "hi".csv',
    "sales/back\\slash\\\\.csv",
    "sales/日本語/データ.csv",
    "sales/tab\tnew\nline.csv",
    "sales/<not-a-placeholder>.csv",
]


def s3_event(key: str, bucket: str = "landing-bkt") -> dict[str, Any]:
    """A real-shaped S3 "Object Created" EventBridge event (tests/events fixture) for ``bucket``/``key``."""
    event = copy.deepcopy(load_event("s3_object_created_eventbridge.json"))
    event["resources"] = [f"arn:aws:s3:::{bucket}"]
    event["detail"]["bucket"]["name"] = bucket
    event["detail"]["object"]["key"] = key
    return event


# --------------------------------------------------------------------------- matching: table

EC2 = {"source": "aws.ec2", "detail": {"state": "running", "c-count": 5, "x-limit": 301.8}}

MATCH_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    # exact values, AND across fields, OR within a list
    ("exact string", {"source": ["aws.ec2"]}, EC2, True),
    ("exact string other", {"source": ["aws.s3"]}, EC2, False),
    ("or within list", {"source": ["aws.s3", "aws.ec2"]}, EC2, True),
    ("and across fields", {"source": ["aws.ec2"], "detail": {"state": ["stopped"]}}, EC2, False),
    ("nested field", {"detail": {"state": ["running"]}}, EC2, True),
    ("nested field other", {"detail": {"state": ["pending"]}}, EC2, False),
    ("field missing", {"detail": {"nope": ["x"]}}, EC2, False),
    ("parent missing", {"other": {"state": ["running"]}}, EC2, False),
    ("nested pattern over scalar", {"source": {"x": ["aws.ec2"]}}, EC2, False),
    ("number equals float", {"n": [5]}, {"n": 5.0}, True),
    ("float equals number", {"n": [301.8]}, {"n": 3.018e2}, True),
    ("number other", {"n": [5]}, {"n": 6}, False),
    ("string never matches number", {"n": ["5"]}, {"n": 5}, False),
    ("number never matches string", {"n": [5]}, {"n": "5"}, False),
    ("true matches true", {"b": [True]}, {"b": True}, True),
    ("true never matches 1", {"b": [True]}, {"b": 1}, False),
    ("1 never matches true", {"b": [1]}, {"b": True}, False),
    ("false never matches 0", {"b": [False]}, {"b": 0}, False),
    ("null matches null", {"v": [None]}, {"v": None}, True),
    ("null not missing", {"v": [None]}, {}, False),
    ("null not empty string", {"v": [None]}, {"v": ""}, False),
    ("empty string matches empty", {"v": [""]}, {"v": ""}, True),
    ("empty string not null", {"v": [""]}, {"v": None}, False),
    ("case sensitive", {"v": ["Running"]}, {"v": "running"}, False),
    # arrays in the event
    ("array any element", {"resources": ["b"]}, {"resources": ["a", "b"]}, True),
    ("array no element", {"resources": ["c"]}, {"resources": ["a", "b"]}, False),
    ("array of arrays", {"r": ["b"]}, {"r": [["a"], ["b"]]}, True),
    ("empty array not null", {"resources": [None]}, {"resources": []}, False),
    ("array of objects", {"e": {"n": ["Anna"]}}, {"e": [{"n": "John"}, {"n": "Anna"}]}, True),
    ("array of objects none", {"e": {"n": ["Zoe"]}}, {"e": [{"n": "John"}, {"n": "Anna"}]}, False),
    (
        "array consistency same element",
        {"e": {"f": ["Anna"], "l": ["Smith"]}},
        {"e": [{"f": "John", "l": "Doe"}, {"f": "Anna", "l": "Smith"}]},
        True,
    ),
    (
        "array consistency across elements",
        {"e": {"f": ["Anna"], "l": ["Doe"]}},
        {"e": [{"f": "John", "l": "Doe"}, {"f": "Anna", "l": "Smith"}]},
        False,
    ),
    # prefix / suffix, with and without equals-ignore-case
    ("prefix", {"t": [{"prefix": "2017-10-02"}]}, {"t": "2017-10-02T18:43:48Z"}, True),
    ("prefix other", {"t": [{"prefix": "2017-10-03"}]}, {"t": "2017-10-02T18:43:48Z"}, False),
    ("prefix case sensitive", {"s": [{"prefix": "eventb"}]}, {"s": "EventBridge"}, False),
    ("prefix ignore case", {"s": [{"prefix": {"equals-ignore-case": "eventb"}}]}, {"s": "EVENTBRIDGE"}, True),
    ("prefix ignore case other", {"s": [{"prefix": {"equals-ignore-case": "eventc"}}]}, {"s": "EVENTBRIDGE"}, False),
    ("prefix never matches number", {"n": [{"prefix": "1"}]}, {"n": 12}, False),
    ("suffix", {"f": [{"suffix": ".png"}]}, {"f": "a.png"}, True),
    ("suffix other", {"f": [{"suffix": ".png"}]}, {"f": "a.jpg"}, False),
    ("suffix case sensitive", {"f": [{"suffix": ".png"}]}, {"f": "a.PNG"}, False),
    ("suffix ignore case", {"f": [{"suffix": {"equals-ignore-case": ".png"}}]}, {"f": "a.PNG"}, True),
    ("suffix ignore case other", {"f": [{"suffix": {"equals-ignore-case": ".png"}}]}, {"f": "a.PNGX"}, False),
    # equals-ignore-case
    ("equals-ignore-case", {"n": [{"equals-ignore-case": "alice"}]}, {"n": "ALICE"}, True),
    ("equals-ignore-case other", {"n": [{"equals-ignore-case": "alice"}]}, {"n": "alicia"}, False),
    ("equals-ignore-case empty", {"n": [{"equals-ignore-case": ""}]}, {"n": ""}, True),
    ("equals-ignore-case not number", {"n": [{"equals-ignore-case": "5"}]}, {"n": 5}, False),
    # wildcard
    ("wildcard spans slash", {"k": [{"wildcard": "sales/*.csv"}]}, {"k": "sales/x/y.csv"}, True),
    ("wildcard anchored at end", {"k": [{"wildcard": "sales/*.csv"}]}, {"k": "sales/a.csv.tmp"}, False),
    ("wildcard anchored at start", {"k": [{"wildcard": "sales/*.csv"}]}, {"k": "x/sales/a.csv"}, False),
    ("wildcard matches zero chars", {"k": [{"wildcard": "sales/*.csv"}]}, {"k": "sales/.csv"}, True),
    ("wildcard spans newline", {"k": [{"wildcard": "a*b"}]}, {"k": "a\nb"}, True),
    ("wildcard escaped star literal", {"k": [{"wildcard": "a\\*b"}]}, {"k": "a*b"}, True),
    ("wildcard escaped star not any", {"k": [{"wildcard": "a\\*b"}]}, {"k": "axb"}, False),
    ("wildcard escaped backslash", {"k": [{"wildcard": "a\\\\*"}]}, {"k": "a\\bc"}, True),
    ("wildcard escaped backslash required", {"k": [{"wildcard": "a\\\\*"}]}, {"k": "abc"}, False),
    ("wildcard dot is literal", {"k": [{"wildcard": "a.c"}]}, {"k": "abc"}, False),
    ("wildcard never matches number", {"k": [{"wildcard": "1*"}]}, {"k": 12}, False),
    # anything-but
    ("anything-but string", {"s": [{"anything-but": "initializing"}]}, {"s": "running"}, True),
    ("anything-but string same", {"s": [{"anything-but": "initializing"}]}, {"s": "initializing"}, False),
    ("anything-but matches null", {"s": [{"anything-but": "initializing"}]}, {"s": None}, True),
    ("anything-but missing field", {"s": [{"anything-but": "initializing"}]}, {}, False),
    ("anything-but missing under detail", {"detail": {"s": [{"anything-but": "x"}]}}, {"detail": {}}, False),
    ("anything-but string vs number", {"s": [{"anything-but": "123"}]}, {"s": 123}, True),
    ("anything-but number", {"x": [{"anything-but": 123}]}, {"x": 124}, True),
    ("anything-but number same", {"x": [{"anything-but": 123}]}, {"x": 123.0}, False),
    ("anything-but list", {"s": [{"anything-but": ["stopped", "overloaded"]}]}, {"s": "running"}, True),
    ("anything-but list member", {"s": [{"anything-but": ["stopped", "overloaded"]}]}, {"s": "stopped"}, False),
    ("anything-but number list member", {"x": [{"anything-but": [100, 200]}]}, {"x": 200.0}, False),
    ("anything-but array any element", {"s": [{"anything-but": "stopped"}]}, {"s": ["stopped", "running"]}, True),
    ("anything-but array all excluded", {"s": [{"anything-but": "stopped"}]}, {"s": ["stopped"]}, False),
    ("anything-but prefix", {"r": [{"anything-but": {"prefix": "us-"}}]}, {"r": "eu-west-1"}, True),
    ("anything-but prefix excluded", {"r": [{"anything-but": {"prefix": "us-"}}]}, {"r": "us-east-1"}, False),
    ("anything-but prefix on number", {"r": [{"anything-but": {"prefix": "init"}}]}, {"r": 12}, True),
    ("anything-but prefix missing", {"r": [{"anything-but": {"prefix": "us-"}}]}, {}, False),
    ("anything-but prefix list", {"r": [{"anything-but": {"prefix": ["us-", "eu-"]}}]}, {"r": "eu-west-1"}, False),
    ("anything-but suffix", {"f": [{"anything-but": {"suffix": ".png"}}]}, {"f": "a.jpg"}, True),
    ("anything-but suffix excluded", {"f": [{"anything-but": {"suffix": ".png"}}]}, {"f": "a.png"}, False),
    ("anything-but ignore case", {"s": [{"anything-but": {"equals-ignore-case": "init"}}]}, {"s": "run"}, True),
    (
        "anything-but ignore case excluded",
        {"s": [{"anything-but": {"equals-ignore-case": "init"}}]},
        {"s": "INIT"},
        False,
    ),
    (
        "anything-but ignore case list",
        {"s": [{"anything-but": {"equals-ignore-case": ["a", "b"]}}]},
        {"s": "B"},
        False,
    ),
    ("anything-but wildcard", {"p": [{"anything-but": {"wildcard": "*/lib/*"}}]}, {"p": "src/main.py"}, True),
    ("anything-but wildcard excluded", {"p": [{"anything-but": {"wildcard": "*/lib/*"}}]}, {"p": "a/lib/b.py"}, False),
    ("anything-but empty wildcard", {"p": [{"anything-but": {"wildcard": ""}}]}, {"p": "dir/init/file"}, True),
    # numeric
    ("numeric range inside", {"c": [{"numeric": [">", 0, "<=", 5]}]}, {"c": 3}, True),
    ("numeric range top inclusive", {"c": [{"numeric": [">", 0, "<=", 5]}]}, {"c": 5}, True),
    ("numeric range bottom exclusive", {"c": [{"numeric": [">", 0, "<=", 5]}]}, {"c": 0}, False),
    ("numeric range above", {"c": [{"numeric": [">", 0, "<=", 5]}]}, {"c": 5.5}, False),
    ("numeric >= inclusive", {"c": [{"numeric": [">=", 1, "<", 2]}]}, {"c": 1}, True),
    ("numeric < exclusive", {"c": [{"numeric": [">=", 1, "<", 2]}]}, {"c": 2}, False),
    ("numeric less than", {"d": [{"numeric": ["<", 10]}]}, {"d": 3}, True),
    ("numeric equals", {"x": [{"numeric": ["=", 3.018e2]}]}, {"x": 301.8}, True),
    ("numeric equals other", {"x": [{"numeric": ["=", 3.018e2]}]}, {"x": 301.9}, False),
    ("numeric not string", {"d": [{"numeric": ["<", 10]}]}, {"d": "5"}, False),
    ("numeric not bool", {"d": [{"numeric": [">", 0]}]}, {"d": True}, False),
    ("numeric array any element", {"d": [{"numeric": [">", 10]}]}, {"d": [1, 11]}, True),
    # exists
    ("exists true present", {"detail": {"c-count": [{"exists": True}]}}, EC2, True),
    ("exists true missing", {"detail": {"d-count": [{"exists": True}]}}, EC2, False),
    ("exists true null is a value", {"v": [{"exists": True}]}, {"v": None}, True),
    ("exists true object is no leaf", {"v": [{"exists": True}]}, {"v": {"c1": 100}}, False),
    ("exists true empty array", {"v": [{"exists": True}]}, {"v": []}, False),
    ("exists false missing", {"detail": {"d-count": [{"exists": False}]}}, EC2, True),
    ("exists false present fails", {"detail": {"c-count": [{"exists": False}]}}, EC2, False),
    ("exists false null present fails", {"v": [{"exists": False}]}, {"v": None}, False),
    ("exists false object is no leaf", {"v": [{"exists": False}]}, {"v": {"c1": 100}}, True),
    ("exists false parent missing", {"detail": {"a": {"b": [{"exists": False}]}}}, EC2, True),
    (
        "exists false deep present",
        {"d": {"l1": {"l2": {"l3": [{"exists": False}]}}}},
        {"d": {"l1": {"l2": {"l3": "v"}}}},
        False,
    ),
    # cidr
    ("cidr inside", {"ip": [{"cidr": "10.0.0.0/24"}]}, {"ip": "10.0.0.255"}, True),
    ("cidr outside", {"ip": [{"cidr": "10.0.0.0/24"}]}, {"ip": "10.0.1.0"}, False),
    ("cidr ipv6", {"ip": [{"cidr": "2001:db8::/32"}]}, {"ip": "2001:db8::1"}, True),
    ("cidr ipv6 outside", {"ip": [{"cidr": "2001:db8::/32"}]}, {"ip": "2001:db9::1"}, False),
    ("cidr not an ip", {"ip": [{"cidr": "10.0.0.0/24"}]}, {"ip": "not-an-ip"}, False),
    ("cidr not a number", {"ip": [{"cidr": "10.0.0.0/24"}]}, {"ip": 123}, False),
    # $or at any level, combined with AND
    ("or top second branch", {"$or": [{"a": ["1"]}, {"b": ["2"]}]}, {"b": "2"}, True),
    ("or top no branch", {"$or": [{"a": ["1"]}, {"b": ["2"]}]}, {"a": "2", "b": "1"}, False),
    ("or and field", {"s": ["x"], "$or": [{"a": ["1"]}, {"b": ["2"]}]}, {"s": "y", "a": "1"}, False),
    ("or nested level", {"detail": {"$or": [{"a": [1]}, {"b": [2]}]}}, {"detail": {"b": 2}}, True),
    ("or nested level none", {"detail": {"$or": [{"a": [1]}, {"b": [2]}]}}, {"detail": {"c": 2}}, False),
    (
        "or inside or",
        {"$or": [{"a": ["1"]}, {"b": ["2"], "$or": [{"c": ["3"]}, {"d": ["4"]}]}]},
        {"b": "2", "d": "4"},
        True,
    ),
    (
        "or inside or inner fails",
        {"$or": [{"a": ["1"]}, {"b": ["2"], "$or": [{"c": ["3"]}, {"d": ["4"]}]}]},
        {"b": "2", "d": "5"},
        False,
    ),
    # a list mixing literals and operators is still an OR
    ("mixed list operator hit", {"k": ["a", {"prefix": "zz"}]}, {"k": "zzz"}, True),
    ("mixed list no hit", {"k": ["a", {"prefix": "zz"}]}, {"k": "b"}, False),
]


@pytest.mark.parametrize(
    ("pattern", "event", "expected"), [case[1:] for case in MATCH_CASES], ids=[case[0] for case in MATCH_CASES]
)
def test_matches(pattern: dict[str, Any], event: dict[str, Any], expected: bool) -> None:
    assert matches(pattern, event) is expected


def test_matches_accepts_pattern_json_text() -> None:
    assert matches(json.dumps({"detail": {"state": ["running"]}}), EC2) is True
    assert matches(json.dumps({"detail": {"state": ["stopped"]}}), EC2) is False


# --------------------------------------------------------------------------- matching: the product rule

PRODUCT_KEYS = [
    ("sales/a.csv", True),
    ("sales/x/y.csv", True),  # wildcard spans "/"
    ("sales/a.csv.tmp", False),
    ("other/a.csv", False),
    ("sales/Q1 report+final %20ü.csv", True),
    ("Sales/a.csv", False),
    ("sales/a.CSV", False),
]


@pytest.mark.parametrize(("key", "expected"), PRODUCT_KEYS, ids=[key for key, _ in PRODUCT_KEYS])
def test_product_rule_on_s3_object_created(key: str, expected: bool) -> None:
    assert matches(PRODUCT_PATTERN, s3_event(key)) is expected


@pytest.mark.parametrize(
    "change",
    [
        {"source": "aws.s3control"},
        {"detail-type": "Object Deleted"},
        {"bucket": "other-bkt"},
    ],
    ids=["source", "detail-type", "bucket"],
)
def test_product_rule_rejects_other_sources_types_and_buckets(change: dict[str, str]) -> None:
    event = s3_event("sales/a.csv", bucket=change.get("bucket", "landing-bkt"))
    event.update({k: v for k, v in change.items() if k != "bucket"})
    assert matches(PRODUCT_PATTERN, event) is False


# --------------------------------------------------------------------------- validation

INVALID_PATTERNS: list[tuple[str, Any, str]] = [
    ("not an object", ["source"], "<root>: Filter is not an object"),
    ("empty pattern", {}, "<root>: Empty objects are not allowed"),
    ("empty nested object", {"detail": {}}, "detail: Empty objects are not allowed"),
    ("empty value list", {"source": []}, "source: Empty arrays are not allowed"),
    ("scalar instead of list", {"source": "aws.s3"}, 'source: "source" must be an object or an array'),
    ("list in value list", {"detail": {"x": [["a"]]}}, "detail.x: Match value must be String, number"),
    ("unknown operator", {"a": [{"prefixx": "a"}]}, "a: Unrecognized match type prefixx"),
    ("unsupported exactly", {"a": [{"exactly": "a"}]}, "a: Unrecognized match type exactly"),
    ("two operators", {"a": [{"prefix": "a", "suffix": "b"}]}, "a: Only one key allowed in match expression"),
    ("empty expression", {"a": [{}]}, "a: Match expression name not found"),
    ("prefix number", {"a": [{"prefix": 1}]}, "a: prefix match pattern must be a string"),
    ("prefix list", {"a": [{"prefix": ["x"]}]}, "a: prefix match pattern must be a string"),
    ("prefix nested other", {"a": [{"prefix": {"wildcard": "x"}}]}, "a: Unsupported prefix pattern: wildcard"),
    ("suffix nested not string", {"a": [{"suffix": {"equals-ignore-case": 1}}]}, "equals-ignore-case match pattern"),
    ("ignore case list", {"a": [{"equals-ignore-case": ["x"]}]}, "a: equals-ignore-case match pattern must be"),
    ("wildcard number", {"a": [{"wildcard": 1}]}, "a: wildcard match pattern must be a string"),
    ("wildcard double star", {"a": [{"wildcard": "a**"}]}, "a: Consecutive wildcard characters at pos 1"),
    ("wildcard bad escape", {"a": [{"wildcard": "a\\b"}]}, "a: Invalid escape character at pos 1"),
    ("wildcard trailing backslash", {"a": [{"wildcard": "a\\"}]}, "a: Invalid escape character at pos 1"),
    ("anything-but null", {"a": [{"anything-but": None}]}, "must be an array or single string/number value"),
    ("anything-but bool", {"a": [{"anything-but": True}]}, "must be an array or single string/number value"),
    ("anything-but empty list", {"a": [{"anything-but": []}]}, "either all values are number or string"),
    ("anything-but mixed list", {"a": [{"anything-but": ["x", 1]}]}, "either all values are number or string"),
    ("anything-but null in list", {"a": [{"anything-but": ["x", None]}]}, "either all values are number or string"),
    ("anything-but numeric", {"a": [{"anything-but": {"numeric": [">", 1]}}]}, "Unsupported anything-but pattern"),
    ("anything-but two keys", {"a": [{"anything-but": {"prefix": "a", "suffix": "b"}}]}, "Only one key allowed"),
    ("anything-but empty prefix", {"a": [{"anything-but": {"prefix": ""}}]}, "a: Null prefix/suffix not allowed"),
    ("anything-but suffix number", {"a": [{"anything-but": {"suffix": 1}}]}, "must be a string"),
    ("anything-but bad wildcard", {"a": [{"anything-but": {"wildcard": "**"}}]}, "Consecutive wildcard characters"),
    ("numeric not list", {"a": [{"numeric": ">"}]}, "a: Value of numeric must be an array."),
    ("numeric empty", {"a": [{"numeric": []}]}, "a: Invalid member in numeric match"),
    ("numeric starts with number", {"a": [{"numeric": [1, ">"]}]}, "a: Invalid member in numeric match: 1"),
    ("numeric bad operator", {"a": [{"numeric": ["!", 1]}]}, "a: Unrecognized numeric range operator: !"),
    ("numeric string operand", {"a": [{"numeric": [">", "1"]}]}, "a: Value of > must be numeric"),
    ("numeric bool operand", {"a": [{"numeric": ["=", True]}]}, "a: Value of equals must be numeric"),
    ("numeric missing operand", {"a": [{"numeric": ["<"]}]}, "a: Value of < must be numeric"),
    ("numeric equals range", {"a": [{"numeric": ["=", 1, "<", 2]}]}, "a: Too many elements in numeric expression"),
    ("numeric bad upper operator", {"a": [{"numeric": [">", 1, ">", 2]}]}, "a: Bad numeric range operator: >"),
    ("numeric inverted range", {"a": [{"numeric": [">", 5, "<", 1]}]}, "a: Bottom must be less than top"),
    ("numeric too many terms", {"a": [{"numeric": [">", 1, "<", 2, 3]}]}, "a: Too many terms in numeric range"),
    ("exists string", {"a": [{"exists": "true"}]}, "a: exists match pattern must be either true or false."),
    ("cidr no mask", {"a": [{"cidr": "10.0.0.0"}]}, "a: Malformed CIDR, one '/' required"),
    ("cidr bad address", {"a": [{"cidr": "bad-filter/24"}]}, "a: Nonstandard IP address or mask"),
    ("cidr bad mask", {"a": [{"cidr": "10.0.0.0/33"}]}, "a: Nonstandard IP address or mask"),
    ("cidr number", {"a": [{"cidr": 10}]}, "a: prefix match pattern must be a string"),
    ("or one branch", {"$or": [{"a": ["1"]}]}, "$or: There must have at least 2 Objects in $or"),
    ("or not a list", {"$or": {"a": ["1"]}}, "$or: It must be an Array followed with $or."),
    ("or branch not object", {"$or": [{"a": ["1"]}, ["b"]]}, "$or: Only JSON object is allowed"),
    ("or nested path", {"detail": {"$or": [{"a": ["1"]}]}}, "detail.$or: There must have at least 2 Objects"),
    ("or reserved field", {"$or": [{"prefix": ["1"]}, {"b": ["2"]}]}, "prefix: prefix is Ruler reserved fieldName"),
    ("or empty branch", {"$or": [{}, {"b": ["2"]}]}, "<root>: Empty objects are not allowed"),
    ("deep path named", {"detail": {"object": {"key": [{"wildcard": 5}]}}}, "detail.object.key: wildcard match"),
]


@pytest.mark.parametrize(
    ("pattern", "message"), [case[1:] for case in INVALID_PATTERNS], ids=[case[0] for case in INVALID_PATTERNS]
)
def test_invalid_pattern_raises_naming_the_part(pattern: Any, message: str) -> None:
    with pytest.raises(PatternError) as caught:
        validate_pattern(pattern)
    assert message in str(caught.value)


def test_matches_validates_before_matching() -> None:
    with pytest.raises(PatternError, match="a: Unrecognized match type bogus"):
        matches({"a": [{"bogus": 1}]}, {"a": 1})


def test_matches_rejects_pattern_text_that_is_not_json() -> None:
    with pytest.raises(PatternError, match="Filter is not valid JSON"):
        matches('{"source": [', EC2)


def test_pattern_error_is_a_value_error() -> None:
    assert issubclass(PatternError, ValueError)


def test_valid_patterns_pass_validation() -> None:
    for _, pattern, _, _ in MATCH_CASES:
        validate_pattern(pattern)
    validate_pattern(PRODUCT_PATTERN)


# --------------------------------------------------------------------------- target input: transformer


def test_product_template_embeds_the_full_event() -> None:
    event = s3_event("sales/2024-06-01/orders.csv")
    body = json.loads(render_target_input(event, input_transformer={"InputTemplate": PRODUCT_TEMPLATE}))
    assert body == {
        "pipeline": "sales-daily",
        "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:x",
        "trigger": {"mode": "window"},
        "event": event,
    }


@pytest.mark.parametrize("key", TRICKY_KEYS)
def test_product_template_keeps_the_key_byte_exact(key: str) -> None:
    event = s3_event(key)
    body = json.loads(render_target_input(event, input_transformer={"InputTemplate": PRODUCT_TEMPLATE}))
    assert body["event"]["detail"]["object"]["key"] == key
    assert body["event"]["detail"]["object"]["key"].encode() == key.encode()


@pytest.mark.parametrize("key", TRICKY_KEYS)
def test_string_placeholders_round_trip_quoted_and_unquoted(key: str) -> None:
    transformer = {
        "InputPathsMap": {"key": "$.detail.object.key"},
        "InputTemplate": '{"bare": <key>, "quoted": "<key>", "inline": "s3://landing-bkt/<key> landed"}',
    }
    body = json.loads(render_target_input(s3_event(key), input_transformer=transformer))
    assert body == {"bare": key, "quoted": key, "inline": f"s3://landing-bkt/{key} landed"}


def test_aws_events_event_drops_detail() -> None:
    event = s3_event("sales/a.csv")
    body = json.loads(render_target_input(event, input_transformer={"InputTemplate": '{"e": <aws.events.event>}'}))
    expected = {("detailType" if k == "detail-type" else k): v for k, v in event.items() if k != "detail"}
    assert body["e"] == expected
    assert "detail" not in body["e"] and body["e"]["detailType"] == "Object Created"


def test_value_positions_keep_json_types() -> None:
    event = {"detail": {"n": 3, "f": 1.5, "b": False, "z": None, "o": {"k": "v"}, "a": [1, "x"]}}
    paths = {name: f"$.detail.{name}" for name in ("n", "f", "b", "z", "o", "a")}
    template = '{"n": <n>, "f": <f>, "b": <b>, "z": <z>, "o": <o>, "a": <a>}'
    out = render_target_input(event, input_transformer={"InputPathsMap": paths, "InputTemplate": template})
    assert json.loads(out) == event["detail"]


def test_object_inside_a_string_loses_its_quotes() -> None:
    event = {"detail": {"o": {"instance-id": "i-1", "state": "RUNNING"}, "n": 7}}
    transformer = {"InputPathsMap": {"o": "$.detail.o", "n": "$.detail.n"}, "InputTemplate": '"Detail <o> n=<n>"'}
    out = render_target_input(event, input_transformer=transformer)
    assert json.loads(out) == "Detail {instance-id:i-1,state:RUNNING} n=7"


def test_missing_path_gives_empty_string_quoted_or_not() -> None:
    transformer = {
        "InputPathsMap": {"k": "$.detail.object.key", "gone": "$.detail.not.there"},
        "InputTemplate": '{"bare": <gone>, "quoted": "<gone>", "inline": "<k>|<gone>|"}',
    }
    out = render_target_input(s3_event("sales/a.csv"), input_transformer=transformer)
    assert json.loads(out) == {"bare": "", "quoted": "", "inline": "sales/a.csv||"}


def test_missing_path_in_a_string_template() -> None:
    transformer = {"InputPathsMap": {"gone": "$.detail.nope"}, "InputTemplate": '"info <gone>"'}
    assert render_target_input(s3_event("sales/a.csv"), input_transformer=transformer) == '"info "'


def test_json_string_template_stays_a_json_string() -> None:
    transformer = {"InputPathsMap": {"key": "$.detail.object.key"}, "InputTemplate": '"<key> landed"'}
    out = render_target_input(s3_event('sales/"q".csv'), input_transformer=transformer)
    assert out == '"sales/\\"q\\".csv landed"'
    assert json.loads(out) == 'sales/"q".csv landed'


def test_plain_text_template_gets_raw_values() -> None:
    transformer = {"InputPathsMap": {"key": "$.detail.object.key"}, "InputTemplate": "<key> landed"}
    out = render_target_input(s3_event('sales/Q1 "x" \\ ü.csv'), input_transformer=transformer)
    assert out == 'sales/Q1 "x" \\ ü.csv landed'


def test_escaped_quotes_in_template_do_not_end_the_string() -> None:
    transformer = {"InputPathsMap": {"k": "$.detail.object.key"}, "InputTemplate": '{"m": "key \\"<k>\\" in"}'}
    out = render_target_input(s3_event('a"b'), input_transformer=transformer)
    assert json.loads(out) == {"m": 'key "a"b" in'}


def test_angle_brackets_that_are_not_placeholders_are_kept() -> None:
    out = render_target_input({}, input_transformer={"InputTemplate": '{"m": "1 < 2 > 0"}'})
    assert out == '{"m": "1 < 2 > 0"}'


def test_rule_and_ingestion_variables() -> None:
    template = (
        '{"arn": <aws.events.rule-arn>, "name": "<aws.events.rule-name>", "at": <aws.events.event.ingestion-time>, '
        '"text": "<aws.events.rule-name> triggered at <aws.events.event.ingestion-time>"}'
    )
    out = render_target_input(
        s3_event("sales/a.csv"),
        input_transformer={"InputTemplate": template},
        rule_arn=RULE_ARN,
        rule_name="landing-rule",
        ingestion_time="2024-06-01T10:15:03Z",
    )
    assert json.loads(out) == {
        "arn": RULE_ARN,
        "name": "landing-rule",
        "at": "2024-06-01T10:15:03Z",
        "text": "landing-rule triggered at 2024-06-01T10:15:03Z",
    }


def test_ingestion_time_defaults_to_the_event_time() -> None:
    out = render_target_input(
        s3_event("sales/a.csv"), input_transformer={"InputTemplate": '"<aws.events.event.ingestion-time>"'}
    )
    assert json.loads(out) == "2024-06-01T10:15:02Z"


@pytest.mark.parametrize(
    ("transformer", "message"),
    [
        ({"InputTemplate": '{"a": <undefined>}'}, "invalid placeholder undefined"),
        ({"InputPathsMap": {"aws.events.rule-arn": "$.id"}, "InputTemplate": '"x"'}, "reserved"),
        ({"InputPathsMap": {"AWS.mine": "$.id"}, "InputTemplate": '"x"'}, "reserved"),
        ({"InputPathsMap": {"k": "detail.key"}, "InputTemplate": '"<k>"'}, "must start with \\$"),
        ({"InputPathsMap": {"k": "$..key"}, "InputTemplate": '"<k>"'}, "unsupported JSONPath"),
        ({"InputPathsMap": {}}, "InputTemplate"),
    ],
    ids=["unknown placeholder", "predefined name", "aws prefix", "no dollar", "recursive descent", "no template"],
)
def test_invalid_transformer_raises(transformer: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_target_input(s3_event("sales/a.csv"), input_transformer=transformer)


# --------------------------------------------------------------------------- target input: Input, InputPath, default


def test_constant_input_is_sent_verbatim() -> None:
    constant = '{ "run" : "nightly",  "n": 1.0 }'
    assert render_target_input(s3_event("sales/a.csv"), input=constant) == constant


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.detail.object.key", "sales/a b+c.csv"),
        ("$.detail.bucket", {"name": "landing-bkt"}),
        ("$.resources[0]", "arn:aws:s3:::landing-bkt"),
        ("$.resources[*]", ["arn:aws:s3:::landing-bkt"]),
        ("$.detail.object.size", 184662),
        ("$['detail']['bucket'].name", "landing-bkt"),
        ("$.detail.nope", None),
        ("$.resources[5]", None),
    ],
)
def test_input_path_extracts_json(path: str, expected: Any) -> None:
    out = render_target_input(s3_event("sales/a b+c.csv"), input_path=path)
    assert json.loads(out) == expected


def test_input_path_dollar_is_the_whole_event() -> None:
    event = s3_event("sales/a.csv")
    assert json.loads(render_target_input(event, input_path="$")) == event


def test_input_path_string_is_json_encoded() -> None:
    assert render_target_input(s3_event('sales/"x".csv'), input_path="$.detail.object.key") == '"sales/\\"x\\".csv"'


@pytest.mark.parametrize("key", TRICKY_KEYS)
def test_default_is_the_whole_event(key: str) -> None:
    event = s3_event(key)
    out = render_target_input(event)
    assert json.loads(out) == event
    assert out == json.dumps(event, ensure_ascii=False, separators=(",", ":"))  # minified, unicode unescaped


def test_only_one_input_setting_is_allowed() -> None:
    with pytest.raises(ValueError, match="Only one of Input, InputPath, or InputTransformer"):
        render_target_input(s3_event("sales/a.csv"), input='{"a": 1}', input_path="$.detail")
