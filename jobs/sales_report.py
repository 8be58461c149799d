"""Sales report: the sample downstream job of pipelines run `after` others (`trigger.after`).

    spark-submit sales_report.py --manifest <URI> --output <URI> --run-id <ID> [--object-root s3://]

Reads the Parquet files listed in the run's input manifest (the cleaned sales that `sales_etl.py` runs of its upstream
pipelines wrote, partitioned `order_date=YYYY-MM-DD/`), sums `amount` and counts orders per order date and region, and
writes the totals as Parquet to `--output` (mode overwrite), then `<output>/_metrics.json`. Like `sales_etl.py` it
never writes `_SUCCESS` (the workflow does, after the run ledger entry). Exit status: 0 success, 2 bad arguments,
1 failure (one line on stderr, `sales_report: error: ...`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

PROG = "sales_report"
METRICS_NAME = "_metrics.json"
SPARK_CONF = {"spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false"}
# The partition folder `sales_etl.py` writes: the date is in the path, not in the files.
DATE_IN_PATH = r"order_date=([0-9]{4}-[0-9]{2}-[0-9]{2})/"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Daily sales totals per region from cleaned sales.")
    parser.add_argument("--manifest", required=True, help="URI of the run's JSON input manifest")
    parser.add_argument("--output", required=True, help="URI of the run's output folder")
    parser.add_argument("--run-id", required=True, help="the run id (recorded in _metrics.json)")
    parser.add_argument("--object-root", default="s3://", help="objects are read from <object-root><bucket>/<key>")
    args = parser.parse_args(argv)
    args.output = args.output.rstrip("/")
    args.object_root = args.object_root if args.object_root.endswith("/") else args.object_root + "/"
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    builder = SparkSession.builder.appName(f"{PROG} {args.run_id}")
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    manifest = json.loads("".join(r.value for r in spark.read.text(args.manifest, wholetext=True).collect()))
    paths = [f"{args.object_root}{o['bucket']}/{o['key']}" for o in manifest["objects"]]
    print(f"{PROG}: run {args.run_id}: {len(paths)} objects -> {args.output}")
    sales = spark.read.parquet(*paths).withColumn("order_date", F.regexp_extract(F.input_file_name(), DATE_IN_PATH, 1))
    totals = sales.groupBy("order_date", "region").agg(
        F.count(F.lit(1)).alias("orders"), F.sum("amount").alias("amount")
    )
    totals.coalesce(1).write.mode("overwrite").parquet(args.output)
    metrics = {"run_id": args.run_id, "rows_in": sales.count(), "rows_out": totals.count(), "objects": len(paths)}
    jvm_path = spark._jvm.org.apache.hadoop.fs.Path(f"{args.output}/{METRICS_NAME}")  # type: ignore[union-attr]
    stream = jvm_path.getFileSystem(spark._jsc.hadoopConfiguration()).create(jvm_path, True)  # type: ignore[union-attr]
    try:
        stream.write(bytearray(json.dumps(metrics, indent=2) + "\n", "utf-8"))
    finally:
        stream.close()
    print(f"{PROG}: rows_in={metrics['rows_in']} rows_out={metrics['rows_out']}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)  # argparse exits 2 on bad arguments
    try:
        run(args)
    except Exception as exc:  # one line for the driver log's last line (the run's failure notice shows it)
        print(f"{PROG}: error: {' '.join(str(exc).split())[:2000]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
