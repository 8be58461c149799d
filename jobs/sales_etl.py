"""Sales ETL: the sample PySpark job that EMR Autopilot runs (EMR Serverless, EMR on EC2/EKS, and the local twin).

    spark-submit sales_etl.py --manifest <URI> --output <URI> --run-id <ID>
                              [--date-column order_date] [--object-root s3://]

Reads the sales CSV objects listed in the run's input manifest, cleans them and writes Parquet partitioned by the
date column to `--output` (mode overwrite: a rerun of the same run id replaces its output), then writes
`<output>/_metrics.json`. It never writes `_SUCCESS`: the workflow writes that itself once the run ledger entry is
stored, so the job turns off the output committer's marker
(`spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs=false`).

All I/O goes through Spark and the Hadoop FileSystem API (no boto3), so the same code reads `s3://` on EMR (EMRFS)
and `file://` locally. Object keys are raw S3 keys; see `object_path` and `unreadable_reason` for how they are
turned into Hadoop paths. Written for Spark 3.5 (EMR 7.x) and Spark 4.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PROG = "sales_etl"
MANIFEST_VERSION = 1
DEFAULT_OBJECT_ROOT = "s3://"
METRICS_NAME = "_metrics.json"

# Input CSV columns, in file order. Read as strings with this explicit schema, then parsed by `parse_sales`.
CSV_COLUMNS = ("order_id", "order_date", "customer_id", "product", "quantity", "unit_price", "region")
DATE_COLUMNS = ("order_date",)  # the columns --date-column may name (partitions are `<col>=YYYY-MM-DD`)
DATE_FORMAT = "yyyy-MM-dd"
OUTPUT_COLUMNS = (*CSV_COLUMNS, "amount")

# Output types. Values are validated with these patterns before they are cast, so casts never fail (ANSI mode,
# the Spark 4 default, would otherwise raise) and behave the same on Spark 3.5.
ORDER_ID_TYPE, ORDER_ID_PATTERN = "bigint", r"^[0-9]{1,18}$"
QUANTITY_TYPE, QUANTITY_PATTERN = "int", r"^[+-]?[0-9]{1,9}$"
PRICE_TYPE, PRICE_PATTERN = "decimal(10,2)", r"^[+-]?[0-9]{1,8}(\.[0-9]{1,2})?$"
AMOUNT_TYPE = "decimal(18,2)"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"

# Spark configuration the job needs. Set on the session builder (spark-submit) and again on a session that already
# existed (tests, notebooks), where builder settings of the SparkContext no longer take effect.
NO_SUCCESS_MARKER = "mapreduce.fileoutputcommitter.marksuccessfuljobs"
SPARK_CONF = {
    f"spark.hadoop.{NO_SUCCESS_MARKER}": "false",  # the workflow writes _SUCCESS, never the job
    "spark.sql.legacy.timeParserPolicy": "CORRECTED",  # Spark 3.5: no SparkUpgradeException for odd dates
}

# Hadoop glob metacharacters. Spark globs every input path that contains one of them, so they are escaped with a
# backslash (which itself must be escaped first).
GLOB_CHARS = frozenset("\\{}[]*?")


class JobError(Exception):
    """An error the user can fix; reported as one line on stderr."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise JobError(message)


# ---------------------------------------------------------------------------------------------- arguments


@dataclass(frozen=True)
class JobArgs:
    manifest: str
    output: str
    run_id: str
    date_column: str = DATE_COLUMNS[0]
    object_root: str = DEFAULT_OBJECT_ROOT

    @property
    def metrics_uri(self) -> str:
        return f"{self.output}/{METRICS_NAME}"


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def parse_args(argv: Sequence[str]) -> JobArgs:
    """Parse the job arguments; raise JobError with a message that names the bad argument."""
    parser = _ArgumentParser(prog=PROG, description="Clean sales CSVs listed in a manifest into Parquet.")
    parser.add_argument("--manifest", required=True, help="URI of the run's JSON input manifest (s3://, file://)")
    parser.add_argument("--output", required=True, help="URI of the run's output folder")
    parser.add_argument("--run-id", required=True, help="the run id (recorded in _metrics.json)")
    parser.add_argument(
        "--date-column", default=DATE_COLUMNS[0], choices=DATE_COLUMNS, help="partition column (default: %(default)s)"
    )
    parser.add_argument(
        "--object-root",
        default=DEFAULT_OBJECT_ROOT,
        help="input objects are read from <object-root><bucket>/<key> (default: %(default)s)",
    )
    ns = parser.parse_args(list(argv))
    for name in ("manifest", "output", "run_id", "object_root"):
        if not getattr(ns, name).strip():
            raise JobError(f"argument --{name.replace('_', '-')}: must not be empty")
    if not _SCHEME.match(ns.object_root):
        raise JobError(f"argument --object-root: {ns.object_root!r} is not a URI prefix such as s3:// or file:///dir/")
    output = ns.output.rstrip("/")
    if not output or output.endswith(":"):
        raise JobError(f"argument --output: {ns.output!r} is not a folder URI")
    object_root = ns.object_root if ns.object_root.endswith("/") else ns.object_root + "/"
    return JobArgs(ns.manifest, output, ns.run_id, ns.date_column, object_root)


# ---------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestObject:
    bucket: str
    key: str
    size: int
    version_id: str | None = None


@dataclass(frozen=True)
class Manifest:
    run_id: str | None
    objects: tuple[ManifestObject, ...]


def parse_manifest(text: str, source: str = "manifest") -> Manifest:
    """Parse and validate the router's input manifest (version 1). Raise JobError naming `source` on any problem.

    Objects listed more than once are kept once (first occurrence), so no input is read twice.
    """
    where = f"--manifest {source}"
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise JobError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise JobError(f"{where}: expected a JSON object, got {type(body).__name__}")
    if body.get("version") != MANIFEST_VERSION:
        raise JobError(
            f"{where}: unsupported version {body.get('version')!r}; this job reads version {MANIFEST_VERSION}"
        )
    raw_objects = body.get("objects")
    if not isinstance(raw_objects, list):
        raise JobError(f"{where}: 'objects' must be a list")
    objects: dict[tuple[str, str], ManifestObject] = {}
    for i, o in enumerate(raw_objects):
        if not isinstance(o, dict):
            raise JobError(f"{where}: objects[{i}] must be an object")
        bucket, key, size = o.get("bucket"), o.get("key"), o.get("size", 0)
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise JobError(f"{where}: objects[{i}].bucket must be a bucket name, got {bucket!r}")
        if not isinstance(key, str) or not key:
            raise JobError(f"{where}: objects[{i}].key must be a non-empty string, got {key!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise JobError(f"{where}: objects[{i}].size must be a non-negative integer, got {size!r}")
        version_id = o.get("version_id")
        objects.setdefault(
            (bucket, key), ManifestObject(bucket, key, size, version_id if isinstance(version_id, str) else None)
        )
    run_id = body.get("run_id")
    return Manifest(run_id if isinstance(run_id, str) else None, tuple(objects.values()))


# ---------------------------------------------------------------------------------------------- paths


def object_path(object_root: str, bucket: str, key: str) -> str:
    """The object's path exactly as stored: `<object-root><bucket>/<key>`, for Hadoop FileSystem calls.

    Nothing is URL-encoded: `org.apache.hadoop.fs.Path(String)` takes the string literally (a space, `+`, `%20`,
    `#`, `?` or unicode stay what they are). Spark's file reader however globs, so use `glob_escape` for it.
    """
    return f"{object_root}{bucket}/{key}"


def glob_escape(path: str) -> str:
    """Escape Hadoop glob metacharacters (`\\ { } [ ] * ?`) so Spark reads `path` literally.

    Spark globs any input path containing one of them; Hadoop's Globber unescapes a component that has no
    unescaped wildcard and looks it up directly (no listing), so the escaped path finds exactly one object.
    """
    return "".join(f"\\{c}" if c in GLOB_CHARS else c for c in path)


def spark_hidden(name: str) -> bool:
    """Whether Spark's file index silently skips a file of this name, even when the path names it explicitly."""
    return (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")


def unreadable_reason(key: str) -> str | None:
    """Why an S3 key cannot be read through a Hadoop path, or None when it can.

    Hadoop's Path normalizes `a//b`, `a/./b`, `a/../b` and a trailing `/`, so such keys would address a different
    object; and Spark skips hidden-looking names (`_x`, `.x`, `x._COPYING_`) without an error.
    """
    segments = key.split("/")
    if key.endswith("/"):
        return "is a folder placeholder"
    if "" in segments:
        return "has an empty path segment ('//' or a leading '/'), which Hadoop paths collapse"
    if "." in segments or ".." in segments:
        return "has a '.' or '..' segment, which Hadoop paths normalize away"
    if spark_hidden(segments[-1]):
        return "has a name Spark treats as hidden and skips (starts with '_' or '.', or ends with '._COPYING_')"
    return None


# ---------------------------------------------------------------------------------------------- metrics


def build_metrics(
    run_id: str,
    *,
    rows_in: int,
    rows_out: int,
    objects: Sequence[ManifestObject],
    partitions: Sequence[str],
    columns: Sequence[str],
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_rejected": rows_in - rows_out,
        "input_objects": len(objects),
        "input_bytes": sum(o.size for o in objects),
        "partitions": sorted(partitions),
        "columns": list(columns),
    }


# ---------------------------------------------------------------------------------------------- cleaning (Spark)


def csv_schema() -> Any:
    """The explicit read schema: every column as a string, so parsing and rejection are done by `parse_sales`."""
    from pyspark.sql.types import StringType, StructField, StructType

    return StructType([StructField(c, StringType(), True) for c in CSV_COLUMNS])


def parse_sales(raw: DataFrame) -> DataFrame:
    """Typed sales columns plus `_reject`: why the row is rejected, or null when it is valid.

    Strings are trimmed and empty strings are null. Rejected: order_id missing or not a whole number; order_date
    missing or not a valid yyyy-MM-dd date; quantity missing, not a whole number, or negative; unit_price missing
    or not a number with at most 2 decimals; amount beyond decimal(18,2).
    """
    from pyspark.sql import functions as F

    s = {c: F.nullif(F.trim(F.col(c)), F.lit("")) for c in CSV_COLUMNS}
    order_id = F.when(s["order_id"].rlike(ORDER_ID_PATTERN), s["order_id"].cast(ORDER_ID_TYPE))
    order_date = F.when(
        s["order_date"].rlike(DATE_PATTERN), F.try_to_timestamp(s["order_date"], F.lit(DATE_FORMAT)).cast("date")
    )
    quantity = F.when(s["quantity"].rlike(QUANTITY_PATTERN), s["quantity"].cast(QUANTITY_TYPE))
    unit_price = F.when(s["unit_price"].rlike(PRICE_PATTERN), s["unit_price"].cast(PRICE_TYPE))
    typed = raw.select(
        order_id.alias("order_id"),
        order_date.alias("order_date"),
        s["customer_id"].alias("customer_id"),
        s["product"].alias("product"),
        quantity.alias("quantity"),
        unit_price.alias("unit_price"),
        s["region"].alias("region"),
    ).withColumn("amount", F.expr(f"try_cast(quantity * unit_price AS {AMOUNT_TYPE})"))
    reject = (
        F.when(F.col("order_id").isNull(), "order_id")
        .when(F.col("order_date").isNull(), "order_date")
        .when(F.col("quantity").isNull(), "quantity")
        .when(F.col("quantity") < 0, "negative quantity")
        .when(F.col("unit_price").isNull(), "unit_price")
        .when(F.col("amount").isNull(), "amount out of range")
    )
    return typed.withColumn("_reject", reject)


def clean_sales(parsed: DataFrame) -> DataFrame:
    """Valid rows of `parse_sales`, one per order_id, with the output columns.

    Which duplicate is kept is deterministic: the smallest by (order_date, customer_id, product, quantity,
    unit_price, region).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = [F.col(c).asc_nulls_last() for c in OUTPUT_COLUMNS if c != "order_id"]
    first = Window.partitionBy("order_id").orderBy(*order)
    return (
        parsed.where(F.col("_reject").isNull())
        .withColumn("_n", F.row_number().over(first))
        .where(F.col("_n") == 1)
        .select(*OUTPUT_COLUMNS)
    )


# ---------------------------------------------------------------------------------------------- Spark / Hadoop I/O


def get_spark() -> SparkSession:
    """The job's session: a new one under spark-submit, or the caller's when one exists (tests)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(PROG)
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # An existing session ignores builder settings of its SparkContext: set them where they take effect.
    spark.sparkContext._jsc.hadoopConfiguration().set(NO_SUCCESS_MARKER, "false")
    spark.conf.set("spark.sql.legacy.timeParserPolicy", SPARK_CONF["spark.sql.legacy.timeParserPolicy"])
    return spark


def _hadoop_path(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    """(FileSystem, Path) for a URI; the path string is taken literally (no globbing, no URL decoding)."""
    jvm: Any = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def read_text(spark: SparkSession, uri: str, what: str) -> str:
    fs, path = _hadoop_path(spark, uri)
    if not fs.exists(path):
        raise JobError(f"{what} {uri}: does not exist")
    stream = fs.open(path)
    try:
        data = stream.readAllBytes()
    finally:
        stream.close()
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobError(f"{what} {uri}: not UTF-8 text ({e})") from None


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    fs, path = _hadoop_path(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def list_partitions(spark: SparkSession, output: str, column: str) -> list[str]:
    """Names of the `<column>=...` folders under the output (what was actually written)."""
    fs, path = _hadoop_path(spark, output)
    if not fs.exists(path):
        return []
    prefix = f"{column}="
    return sorted(
        name for st in fs.listStatus(path) if st.isDirectory() and (name := st.getPath().getName()).startswith(prefix)
    )


def first_missing(spark: SparkSession, paths: Sequence[tuple[ManifestObject, str]]) -> ManifestObject | None:
    for obj, path in paths:
        fs, hpath = _hadoop_path(spark, path)
        if not fs.exists(hpath):
            return obj
    return None


def changed_objects(
    spark: SparkSession, paths: Sequence[tuple[ManifestObject, str]]
) -> list[tuple[ManifestObject, int]]:
    """(object, stored size) of every object whose stored size differs from its manifest's: the key was
    overwritten after its run was routed. A path reads a key's current version (Hadoop has no version ids), so
    such a run would silently process the newer bytes, which have a run of their own. One listing per folder.
    Objects not found are left to the read (it names them)."""
    folders: dict[str, list[tuple[ManifestObject, Any]]] = {}
    for obj, path in paths:
        _, hpath = _hadoop_path(spark, path)
        folders.setdefault(str(hpath.getParent().toString()), []).append((obj, hpath))
    changed: list[tuple[ManifestObject, int]] = []
    for items in folders.values():
        parent = items[0][1].getParent()
        fs = parent.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        if not fs.exists(parent):
            continue
        sizes = {str(st.getPath().toUri().getPath()): int(st.getLen()) for st in fs.listStatus(parent)}
        for obj, hpath in items:
            size = sizes.get(str(hpath.toUri().getPath()))
            if size is not None and size != obj.size:
                changed.append((obj, size))
    return changed


def read_sales(spark: SparkSession, objects: Sequence[ManifestObject], object_root: str) -> DataFrame:
    """The raw CSV rows of all objects (header line of each file skipped), every column a string."""
    from pyspark.errors import AnalysisException

    if not objects:
        return spark.createDataFrame([], csv_schema())
    for o in objects:
        if reason := unreadable_reason(o.key):
            raise JobError(f"--manifest: object bucket={o.bucket!r} key={o.key!r} {reason}")
    paths = [(o, object_path(object_root, o.bucket, o.key)) for o in objects]
    if changed := changed_objects(spark, paths):
        listed = "; ".join(
            f"bucket={o.bucket!r} key={o.key!r} (manifest: {o.size} bytes, version {o.version_id or 'unversioned'}; "
            f"now {size} bytes)"
            for o, size in changed[:10]
        )
        raise JobError(
            f"--manifest: {len(changed)} input object(s) changed since the run was routed (overwritten; the newer "
            f"version has a run of its own): {listed}"
        )
    reader = (
        spark.read.schema(csv_schema())
        .option("header", "true")
        .option("enforceSchema", "false")  # fail on a header that does not match the columns (e.g. swapped)
        .option("mode", "PERMISSIVE")
        .option("encoding", "UTF-8")
    )
    try:
        return reader.csv([glob_escape(p) for _, p in paths])
    except AnalysisException as e:
        if "PATH_NOT_FOUND" not in str(e) and "Path does not exist" not in str(e):
            raise
        missing = first_missing(spark, paths)
        if missing is None:
            raise
        raise JobError(
            f"--manifest: input object not found: bucket={missing.bucket!r} key={missing.key!r} "
            f"({object_path(object_root, missing.bucket, missing.key)})"
        ) from None


# ---------------------------------------------------------------------------------------------- the job


def run(args: JobArgs) -> dict[str, Any]:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = get_spark()
    manifest = parse_manifest(read_text(spark, args.manifest, "--manifest"), args.manifest)
    if manifest.run_id is not None and manifest.run_id != args.run_id:
        print(
            f"{PROG}: warning: --run-id {args.run_id!r} differs from the manifest's {manifest.run_id!r}",
            file=sys.stderr,
        )
    print(f"{PROG}: run {args.run_id}: {len(manifest.objects)} objects -> {args.output}")

    parsed = parse_sales(read_sales(spark, manifest.objects, args.object_root)).persist(StorageLevel.MEMORY_AND_DISK)
    cleaned = None
    try:
        by_reason = {r["_reject"]: r["count"] for r in parsed.groupBy("_reject").count().collect()}
        rows_in = sum(by_reason.values())
        cleaned = clean_sales(parsed).persist(StorageLevel.MEMORY_AND_DISK)
        rows_out = cleaned.count()
        (
            cleaned.hint("rebalance", F.col(args.date_column))  # few files per date, skew split by AQE
            .write.mode("overwrite")
            .option("partitionOverwriteMode", "static")  # replace the whole run output, whatever the session says
            .partitionBy(args.date_column)
            .parquet(args.output)
        )
        columns = cleaned.columns
    finally:
        if cleaned is not None:
            cleaned.unpersist()
        parsed.unpersist()

    rejected = {str(k): v for k, v in sorted(by_reason.items(), key=lambda kv: str(kv[0])) if k is not None}
    dupes = rows_in - rows_out - sum(rejected.values())
    print(f"{PROG}: rows_in={rows_in} rows_out={rows_out} rejected={rejected} duplicates={dupes}")
    metrics = build_metrics(
        args.run_id,
        rows_in=rows_in,
        rows_out=rows_out,
        objects=manifest.objects,
        partitions=list_partitions(spark, args.output, args.date_column),
        columns=columns,
    )
    write_text(spark, args.metrics_uri, json.dumps(metrics, indent=2) + "\n")
    return metrics


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _summary(e: BaseException) -> str:
    """One line for an unexpected error: the root Java cause when there is one."""
    java = getattr(e, "java_exception", None)
    if java is not None:
        try:
            while java.getCause() is not None:
                java = java.getCause()
            return _one_line(f"{java.getClass().getName()}: {java.getMessage()}")
        except Exception:
            pass
    first = str(e).strip().splitlines()
    return _one_line(f"{type(e).__name__}: {first[0] if first else ''}")


def main(argv: list[str] | None = None) -> int:
    """Run the job; 0 on success, 2 for bad arguments, 1 for bad input or a failed run (one line on stderr)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except JobError as e:
        print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    try:
        metrics = run(args)
    except JobError as e:
        print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except Exception as e:
        traceback.print_exc()
        print(f"{PROG}: error: run {args.run_id} failed: {_summary(e)}", file=sys.stderr)
        return 1
    print(f"{PROG}: wrote {metrics['rows_out']} rows in {len(metrics['partitions'])} partitions to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
