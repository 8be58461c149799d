"""jobs/sales_etl.py: pure functions without Spark, then the whole job in-process on a local SparkSession.

The Spark tests (`-m spark`) stage input objects under `tmp_path/stage/<bucket>/<key>` and pass
`--object-root file://<stage>/`, exactly as the local twin does; manifests are written with the router's own
`InputManifest`, so the job is tested against the real manifest format.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from autopilot_common.manifest import InputManifest, ManifestObject
from tests.conftest import REPO

JOB = REPO / "jobs" / "sales_etl.py"
SAMPLE = REPO / "jobs" / "sample-data" / "sales"
SAMPLE_FILES = ("2024-06-01.csv", "2024-06-02.csv", "2024-06-03 late+orders.csv")

# The full sample set (documented in jobs/README.md).
SAMPLE_ROWS_IN = 158
SAMPLE_ROWS_OUT = 144  # 11 invalid rows and 3 duplicate order_ids rejected
SAMPLE_ROWS_PER_DATE = {"2024-05-31": 6, "2024-06-01": 45, "2024-06-02": 58, "2024-06-03": 35}
HEADER = "order_id,order_date,customer_id,product,quantity,unit_price,region\n"


def _load_job() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sales_etl", JOB)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


etl = _load_job()


def file_uri(path: Path) -> str:
    """A raw file:// URI, as the job expects (Path.as_uri() would percent-encode, which Hadoop takes literally)."""
    return f"file://{path}"


# ---------------------------------------------------------------------------------------------- arguments


def test_parse_args_defaults() -> None:
    args = etl.parse_args(["--manifest", "s3://a/m.json", "--output", "s3://o/p/run_id=r1/", "--run-id", "r1"])
    assert args == etl.JobArgs("s3://a/m.json", "s3://o/p/run_id=r1", "r1", "order_date", "s3://")
    assert args.metrics_uri == "s3://o/p/run_id=r1/_metrics.json"


def test_parse_args_all() -> None:
    args = etl.parse_args([
        "--manifest", "file:///m.json", "--output", "file:///out", "--run-id", "r1",
        "--date-column", "order_date", "--object-root", "file:///tmp/stage",
    ])  # fmt: skip
    assert args.object_root == "file:///tmp/stage/"
    assert args.date_column == "order_date"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--output", "s3://o/x", "--run-id", "r"], "--manifest"),
        (["--manifest", "s3://a/m.json", "--run-id", "r"], "--output"),
        (["--manifest", "s3://a/m.json", "--output", "s3://o/x"], "--run-id"),
        (["--manifest", "", "--output", "s3://o/x", "--run-id", "r"], "--manifest"),
        (["--manifest", "s3://a/m.json", "--output", "s3://o/x", "--run-id", " "], "--run-id"),
        (["--manifest", "m", "--output", "o", "--run-id", "r", "--date-column", "region"], "--date-column"),
        (["--manifest", "m", "--output", "o", "--run-id", "r", "--object-root", "/tmp/stage"], "--object-root"),
        (["--manifest", "m", "--output", "s3://", "--run-id", "r"], "--output"),
        (["--manifest", "m", "--output", "o", "--run-id", "r", "--strict"], "--strict"),
    ],
)
def test_parse_args_errors_name_the_argument(argv: list[str], named: str) -> None:
    with pytest.raises(etl.JobError, match=named):
        etl.parse_args(argv)


def test_main_bad_args_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert etl.main(["--output", "s3://o/x", "--run-id", "r"]) == 2  # fails before any Spark session
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sales_etl: error: ") and "--manifest" in err


def test_script_bad_args_exit_2_without_spark() -> None:
    proc = subprocess.run(
        [sys.executable, str(JOB), "--manifest", "s3://a/m.json", "--run-id", "r"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "sales_etl: error: the following arguments are required: --output\n"
    assert proc.stdout == ""


# ---------------------------------------------------------------------------------------------- manifest


def _manifest_json(*objects: ManifestObject, run_id: str = "r1") -> str:
    return InputManifest(pipeline="sales-daily", run_id=run_id, objects=list(objects)).to_json()


def test_parse_manifest_router_format() -> None:
    key = "sales/2024 06/b c+d%20ü[1].csv"
    text = _manifest_json(ManifestObject("landing", "sales/a.csv", 10, "e1"), ManifestObject("landing", key, 5, "e2"))
    manifest = etl.parse_manifest(text, "s3://art/manifests/sales-daily/r1.json")
    assert manifest.run_id == "r1"
    assert manifest.objects == (etl.ManifestObject("landing", "sales/a.csv", 10), etl.ManifestObject("landing", key, 5))


def test_parse_manifest_keeps_duplicates_once() -> None:
    o = ManifestObject("landing", "sales/a.csv", 10)
    assert len(etl.parse_manifest(_manifest_json(o, o, ManifestObject("other", "sales/a.csv", 1))).objects) == 2


def test_parse_manifest_empty() -> None:
    assert etl.parse_manifest(_manifest_json()).objects == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"version": 2, "objects": []}', "unsupported version 2"),
        ('{"objects": []}', "unsupported version None"),
        ('{"version": "1", "objects": []}', "unsupported version '1'"),
        ('{"version": 1}', "'objects' must be a list"),
        ('{"version": 1, "objects": [{"bucket": "b", "key": ""}]}', r"objects\[0\].key"),
        ('{"version": 1, "objects": [{"bucket": "b/c", "key": "k"}]}', r"objects\[0\].bucket"),
        ('{"version": 1, "objects": [{"bucket": "b", "key": "k", "size": -1}]}', r"objects\[0\].size"),
    ],
)
def test_parse_manifest_errors(text: str, message: str) -> None:
    with pytest.raises(etl.JobError, match=message) as info:
        etl.parse_manifest(text, "s3://art/m.json")
    assert str(info.value).startswith("--manifest s3://art/m.json: ")


# ---------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("sales/a.csv", "s3://landing/sales/a.csv"),
        ("sales/with space+plus%20pct ü☃.csv", "s3://landing/sales/with space+plus%20pct ü☃.csv"),  # never encoded
        ("sales/x#y?z.csv", "s3://landing/sales/x#y?z.csv"),
    ],
)
def test_object_path_is_raw(key: str, path: str) -> None:
    assert etl.object_path("s3://", "landing", key) == path


def test_object_path_local_root() -> None:
    assert (
        etl.object_path("file:///tmp/stage/", "landing", "sales/a b.csv") == "file:///tmp/stage/landing/sales/a b.csv"
    )


@pytest.mark.parametrize(
    ("path", "escaped"),
    [
        ("s3://b/plain name+%20ü.csv", "s3://b/plain name+%20ü.csv"),  # nothing to escape
        ("s3://b/x[1].csv", "s3://b/x\\[1\\].csv"),
        ("s3://b/{a,b}.csv", "s3://b/\\{a,b\\}.csv"),
        ("s3://b/star*q?.csv", "s3://b/star\\*q\\?.csv"),
        ("s3://b/back\\slash.csv", "s3://b/back\\\\slash.csv"),  # the escape character itself
        ("s3://b/[a-z]^!.csv", "s3://b/\\[a-z\\]^!.csv"),  # ^ ! - only matter inside [ ]
    ],
)
def test_glob_escape(path: str, escaped: str) -> None:
    assert etl.glob_escape(path) == escaped


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("sales/a.csv", None),
        ("sales/_dir/.dir/a.csv", None),  # hidden-looking folders are fine: only the file name matters
        ("sales/_col=1.csv", None),  # Spark keeps `_` names containing `=`
        ("sales/", "folder placeholder"),
        ("sales//a.csv", "empty path segment"),
        ("/sales/a.csv", "empty path segment"),
        ("sales/./a.csv", "'.' or '..'"),
        ("sales/../a.csv", "'.' or '..'"),
        ("sales/_late.csv", "hidden"),
        ("sales/.a.csv", "hidden"),
        ("sales/a.csv._COPYING_", "hidden"),
    ],
)
def test_unreadable_reason(key: str, reason: str | None) -> None:
    got = etl.unreadable_reason(key)
    assert got is None if reason is None else reason in got


def test_build_metrics() -> None:
    objects = [etl.ManifestObject("b", "k1", 10), etl.ManifestObject("b", "k2", 5)]
    metrics = etl.build_metrics(
        "r1", rows_in=10, rows_out=7, objects=objects, partitions=["d=2", "d=1"], columns=["a", "d"]
    )
    assert metrics == {
        "run_id": "r1", "rows_in": 10, "rows_out": 7, "rows_rejected": 3, "input_objects": 2, "input_bytes": 15,
        "partitions": ["d=1", "d=2"], "columns": ["a", "d"],
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- Spark


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark tests need Java 17+ on PATH")
    from pyspark.sql import SparkSession

    # Deliberately without the job's settings (no _SUCCESS marker etc.): main() must apply them itself.
    session = (
        SparkSession.builder.master("local[1]")
        .appName("test_sales_etl")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "512m")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    yield session
    session.stop()


class Run:
    """A staged landing area, a manifest and an output folder under tmp_path."""

    def __init__(self, tmp: Path, run_id: str = "r1") -> None:
        self.tmp = tmp
        self.stage = tmp / "stage"
        self.output = tmp / "outputs" / "sales-daily" / f"run_id={run_id}"
        self.run_id = run_id
        self.objects: list[ManifestObject] = []

    def put(self, key: str, body: str | bytes, bucket: str = "landing", listed: bool = True) -> None:
        path = self.stage / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        data = body.encode("utf-8") if isinstance(body, str) else body
        path.write_bytes(data)
        if listed:
            self.objects.append(ManifestObject(bucket, key, len(data), "etag"))

    def list_missing(self, key: str, bucket: str = "landing") -> None:
        self.objects.append(ManifestObject(bucket, key, 1, "etag"))

    def main(self, *extra: str, manifest_text: str | None = None) -> int:
        manifest = self.tmp / "manifests" / f"{self.run_id}.json"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        text = manifest_text if manifest_text is not None else _manifest_json(*self.objects, run_id=self.run_id)
        manifest.write_text(text, encoding="utf-8")
        return int(
            etl.main(
                [
                    "--manifest",
                    file_uri(manifest),
                    "--output",
                    file_uri(self.output),
                    "--run-id",
                    self.run_id,
                    "--object-root",
                    f"{file_uri(self.stage)}/",
                    *extra,
                ]
            )  # fmt: skip
        )

    def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.output / "_metrics.json").read_text(encoding="utf-8"))
        return result

    def success_markers(self) -> list[Path]:
        return sorted(self.tmp.rglob("_SUCCESS"))

    def data_files(self) -> list[Path]:
        return sorted(self.output.rglob("*.parquet"))


def _rows(*lines: str) -> str:
    return HEADER + "".join(f"{line}\n" for line in lines)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("sales_etl: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.spark
def test_sample_set(spark: Any, tmp_path: Path) -> None:
    run = Run(tmp_path)
    for name in SAMPLE_FILES:
        run.put(f"sales/{name}", (SAMPLE / name).read_bytes())

    assert run.main("--date-column", "order_date") == 0

    dates = sorted(SAMPLE_ROWS_PER_DATE)
    assert run.metrics() == {
        "run_id": "r1",
        "rows_in": SAMPLE_ROWS_IN,
        "rows_out": SAMPLE_ROWS_OUT,
        "rows_rejected": SAMPLE_ROWS_IN - SAMPLE_ROWS_OUT,
        "input_objects": 3,
        "input_bytes": sum((SAMPLE / n).stat().st_size for n in SAMPLE_FILES),
        "partitions": [f"order_date={d}" for d in dates],
        "columns": [*etl.CSV_COLUMNS, "amount"],
    }
    assert sorted(p.name for p in run.output.iterdir() if p.is_dir()) == [f"order_date={d}" for d in dates]
    assert run.success_markers() == []

    df = spark.read.parquet(file_uri(run.output))
    assert df.count() == SAMPLE_ROWS_OUT
    assert dict(df.dtypes) == {
        "order_id": "bigint", "order_date": "date", "customer_id": "string", "product": "string",
        "quantity": "int", "unit_price": "decimal(10,2)", "region": "string", "amount": "decimal(18,2)",
    }  # fmt: skip
    per_date = {str(r["order_date"]): r["count"] for r in df.groupBy("order_date").count().collect()}
    assert per_date == SAMPLE_ROWS_PER_DATE
    assert df.select("order_id").distinct().count() == SAMPLE_ROWS_OUT
    rows = {r["order_id"]: r for r in df.where("order_id IN (20020, 30044, 30045, 30046)").collect()}
    assert rows[20020]["order_date"] == date(2024, 6, 1)  # duplicate across files: one kept, deterministically
    assert (rows[30044]["product"], rows[30044]["unit_price"]) == ("Widget", Decimal("9.99"))  # trimmed
    assert (rows[30045]["product"], rows[30045]["amount"]) == ("Cable, USB-C", Decimal("23.80"))  # quoted comma
    assert rows[30046]["amount"] == Decimal("0.00")  # zero quantity is valid


@pytest.mark.spark
def test_special_character_keys_are_read_exactly(spark: Any, tmp_path: Path) -> None:
    run = Run(tmp_path)
    keys = {
        "sales/2024 06/with space+plus%20pct ünï ☃ [1].csv": 1,
        "sales/{a,b} star* q?.csv": 2,
        "sales/dt=2024-06-01/back\\slash #hash;semi&amp=.csv": 3,
        "sales/_dir/%2F%zz.csv": 4,
    }
    for key, n in keys.items():
        run.put(key, _rows(f"{n},2024-06-01,C1,Widget,1,1.00,EU"))
    # Decoys an unescaped glob or a URL-decoded key would pick up instead: they must not be read.
    run.put("sales/2024 06/with space+plus%20pct ünï ☃ 1.csv", _rows("91,2024-06-01,C1,Widget,1,1.00,EU"), listed=False)
    run.put("sales/a star qx.csv", _rows("92,2024-06-01,C1,Widget,1,1.00,EU"), listed=False)
    run.put("sales/_dir/%zz.csv", _rows("93,2024-06-01,C1,Widget,1,1.00,EU"), listed=False)

    assert run.main() == 0

    assert run.metrics()["rows_in"] == run.metrics()["rows_out"] == len(keys)
    df = spark.read.parquet(file_uri(run.output))
    assert sorted(r["order_id"] for r in df.collect()) == sorted(keys.values())
    assert "dt" not in df.columns  # a `k=v` folder in a key is not taken for a partition column


@pytest.mark.spark
def test_rerun_overwrites(spark: Any, tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.put("sales/a.csv", _rows("1,2024-06-01,C1,Widget,1,1.00,EU", "2,2024-06-02,C1,Widget,1,1.00,EU"))
    assert run.main() == 0
    first = run.data_files()
    (run.output / "_SUCCESS").write_text("")  # as the workflow writes it after the ledger entry

    assert run.main() == 0

    assert spark.read.parquet(file_uri(run.output)).count() == 2
    assert len(run.data_files()) == len(first)
    assert run.metrics()["rows_out"] == 2
    assert run.success_markers() == []  # the rerun replaced the whole run output; the workflow writes it again


@pytest.mark.spark
@pytest.mark.parametrize("header_only", [False, True], ids=["no-objects", "header-only"])
def test_empty_input_succeeds_with_zeros(spark: Any, tmp_path: Path, header_only: bool) -> None:
    run = Run(tmp_path)
    if header_only:
        run.put("sales/empty.csv", HEADER)

    assert run.main() == 0

    assert run.metrics() == {
        "run_id": "r1", "rows_in": 0, "rows_out": 0, "rows_rejected": 0, "input_objects": int(header_only),
        "input_bytes": len(HEADER) if header_only else 0, "partitions": [], "columns": [*etl.CSV_COLUMNS, "amount"],
    }  # fmt: skip
    assert run.success_markers() == []


@pytest.mark.spark
def test_missing_object_names_bucket_and_key(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = Run(tmp_path)
    run.put("sales/a.csv", _rows("1,2024-06-01,C1,Widget,1,1.00,EU"))
    run.list_missing("sales/gone [1] ü.csv")  # escaped for Spark; looked up literally when diagnosing

    assert run.main() == 1

    line = _one_error_line(capsys.readouterr().err)
    assert "input object not found: bucket='landing' key='sales/gone [1] ü.csv'" in line
    assert not (run.output / "_metrics.json").exists()


@pytest.mark.spark
def test_an_object_overwritten_after_routing_fails_the_run_instead_of_reading_the_newer_bytes(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13.2: a path reads a key's current version; the manifest pinned an older one (its size differs)."""
    run = Run(tmp_path)
    run.put("sales/a b+c.csv", _rows("1,2024-06-01,C1,Widget,1,1.00,EU"))
    run.put("sales/ok.csv", _rows("2,2024-06-01,C1,Widget,1,1.00,EU"))
    (run.stage / "landing" / "sales" / "a b+c.csv").write_text(
        _rows("1,2024-06-01,C1,Widget,1,1.00,EU", "3,x,y,z,1,1,EU")
    )

    assert run.main() == 1

    line = _one_error_line(capsys.readouterr().err)
    assert "1 input object(s) changed since the run was routed" in line
    assert "key='sales/a b+c.csv' (manifest: 100 bytes, version unversioned; now 115 bytes)" in line
    assert not (run.output / "_metrics.json").exists()


@pytest.mark.spark
@pytest.mark.parametrize(
    ("manifest_text", "message"),
    [
        ("{oops", "not valid JSON"),
        ('{"version": 2, "objects": []}', "unsupported version 2"),
        (None, "key='sales/_late.csv' has a name Spark treats as hidden"),
    ],
    ids=["invalid-json", "wrong-version", "hidden-name"],
)
def test_bad_manifest_fails_with_one_line(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], manifest_text: str | None, message: str
) -> None:
    run = Run(tmp_path)
    run.put("sales/_late.csv", _rows("1,2024-06-01,C1,Widget,1,1.00,EU"))

    assert run.main(manifest_text=manifest_text) == 1

    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("sales_etl: error: --manifest")
    assert message in line


@pytest.mark.spark
def test_missing_manifest(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    argv = ["--manifest", file_uri(missing), "--output", file_uri(tmp_path / "out"), "--run-id", "r1"]
    assert etl.main(argv) == 1
    assert (
        _one_error_line(capsys.readouterr().err) == f"sales_etl: error: --manifest {file_uri(missing)}: does not exist"
    )


@pytest.mark.spark
def test_header_that_does_not_match_fails(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = Run(tmp_path)
    run.put(
        "sales/swapped.csv",
        "order_date,order_id,customer_id,product,quantity,unit_price,region\n2024-06-01,1,C,W,1,1,EU\n",
    )

    assert run.main() == 1

    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("sales_etl: error: run r1 failed: ")
    assert "CSV header does not conform to the schema" in err.splitlines()[-1]


@pytest.mark.spark
def test_parse_sales_rules(spark: Any) -> None:
    cases = [  # (order_id, order_date, quantity, unit_price) -> reason
        (("007", "2024-06-01", "+3", "12"), None),
        ((" 8 ", " 2024-06-01 ", " 0 ", " 0.5 "), None),
        ((None, "2024-06-01", "1", "1.00"), "order_id"),
        (("A1", "2024-06-01", "1", "1.00"), "order_id"),
        (("1.5", "2024-06-01", "1", "1.00"), "order_id"),
        (("1", "2024-02-30", "1", "1.00"), "order_date"),
        (("1", "2024-6-1", "1", "1.00"), "order_date"),
        (("1", "2024-06-01T00:00", "1", "1.00"), "order_date"),
        (("1", "", "1", "1.00"), "order_date"),
        (("1", "2024-06-01", "2.5", "1.00"), "quantity"),
        (("1", "2024-06-01", "-1", "1.00"), "negative quantity"),
        (("1", "2024-06-01", "1", "1.999"), "unit_price"),
        (("1", "2024-06-01", "1", "1,00"), "unit_price"),
        (("1", "2024-06-01", "999999999", "99999999.99"), "amount out of range"),
    ]
    rows = [(oid, d, "C1", "P", q, p, "EU") for (oid, d, q, p), _ in cases]
    parsed = etl.parse_sales(spark.createDataFrame(rows, etl.csv_schema())).collect()
    assert [r["_reject"] for r in parsed] == [reason for _, reason in cases]
    assert (parsed[0]["order_id"], parsed[0]["quantity"], parsed[0]["unit_price"]) == (7, 3, Decimal("12.00"))
    assert (parsed[1]["order_id"], parsed[1]["order_date"], parsed[1]["amount"]) == (8, date(2024, 6, 1), Decimal(0))
