"""Ingest: raw input files -> `clean/<entity>/dt=D` + `quarantine/<entity>/dt=D`.

Every row read ends in exactly one of the two, so rows read = clean + quarantined, always. A
quarantined row keeps its raw text, the first reason it was refused for (in the order of each
entity's checks below) and its source file.

The flow, for every entity and format:
  extract   read_records(): files -> one row per input record with `raw_record`, `source_file`,
            a structural `problem` (encoding, column count, malformed JSON, oversized field) and
            one string column per canonical field; CSV headers are checked on the driver first.
  transform classify_<entity>(): parse types, apply the entity's checks in order, mark exact
            duplicates and repeats -> `quarantine_reason` (null for clean rows).
            split_clean() / split_quarantine() then give the two outputs.
  load      run_ingest(): publishes both partitions through the lake and records counts in the
            run manifest.

CSV is read as text and split here (not by Spark's CSV reader) so that every physical line is one
record and nothing is silently merged, dropped or coerced. Quoted fields may contain the
delimiter and doubled quotes; a field may not span lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from deepmine.config import Config, IngestConfig
from deepmine.lake import Lake, StageRun, resolve_url

FORMATS = ("csv", "json", "parquet")


class IngestError(ValueError):
    """Input that cannot be ingested at all: missing, wrong header, unknown format."""


@dataclass(frozen=True)
class EntitySpec:
    name: str
    required: tuple[str, ...]  # must be in the input's header / schema
    optional: tuple[str, ...] = ()  # may be absent: the clean column is then null

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


ENTITY_SPECS = {
    "transactions": EntitySpec("transactions",
                               ("invoice_id", "customer_id", "product_id", "quantity", "invoice_ts"),
                               ("unit_price", "country")),
    "ratings": EntitySpec("ratings", ("user_id", "item_id", "rating", "rated_ts")),
    "images": EntitySpec("images", ("image_id", "pixels", "split"), ("label",)),
}

# Structural problems found while reading, before any field is parsed.
EMPTY_LINE = "empty_line"
BAD_ENCODING = "bad_encoding"
WRONG_COLUMN_COUNT = "wrong_column_count"
OVERSIZED_FIELD = "oversized_field"
MALFORMED_RECORD = "malformed_record"
DUPLICATE_LINE = "duplicate_line"


# =============================================================== extract

def list_input_files(lake: Lake, input_path: str) -> list[str]:
    """The data files under `input_path` (a file or a directory), sorted; hidden files skipped."""
    url = resolve_url(input_path)
    if not lake.exists(url):
        raise IngestError(f"input not found: {input_path}")
    fs, path = lake._fs(url)
    if fs.getFileStatus(path).isFile():
        return [_same_form(url)]
    files = []
    for status in fs.listStatus(path):
        name = str(status.getPath().getName())
        if status.isFile() and not name.startswith(("_", ".")):
            files.append(_same_form(str(status.getPath().toString())))
    if not files:
        raise IngestError(f"input directory has no data files: {input_path}")
    return sorted(files)


def _same_form(url: str) -> str:
    """Hadoop writes local files as file:/x, Spark's input_file_name() as file:///x; use the latter."""
    return re.sub(r"^file:/+", "file:///", url)


def source_file_column() -> Column:
    return F.regexp_replace(F.input_file_name(), r"^file:/+", "file:///")


def read_first_line(lake: Lake, url: str) -> str | None:
    """The first line of a file, decoded as UTF-8 (BOM kept); None if the file is empty."""
    fs, path = lake._fs(url)
    jvm = lake.spark.sparkContext._jvm
    reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(fs.open(path), "UTF-8"))
    try:
        return reader.readLine()  # None at end of file; undecodable bytes become U+FFFD
    finally:
        reader.close()


def parse_header(line: str, delimiter: str) -> list[str]:
    return [_unquote(name.strip()).strip() for name in _split_csv_text(line.lstrip("\ufeff"), delimiter)]


def _split_csv_text(line: str, delimiter: str) -> list[str]:
    return re.split(_field_split_pattern(delimiter), line)


def _field_split_pattern(delimiter: str) -> str:
    # a delimiter followed by an even number of quotes up to the end of the line: not in quotes
    return re.escape(delimiter) + r'(?=(?:[^"]*"[^"]*")*[^"]*$)'


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text


def map_header(names: list[str], spec: EntitySpec, cfg: IngestConfig, where: str) -> list[str | None]:
    """Canonical name for each source column (None = a column mapped away with an empty name)."""
    mapped = [cfg.column_map.get(n, n) or None for n in names]
    present = [m for m in mapped if m]
    unknown = [n for n, m in zip(names, mapped) if m and m not in spec.columns]
    missing = [c for c in spec.required if c not in present]
    repeated = sorted({m for m in present if present.count(m) > 1})
    if unknown or missing or repeated:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if unknown:
            parts.append(f"unexpected column(s) {unknown}")
        if repeated:
            parts.append(f"repeated column(s) {repeated}")
        raise IngestError(
            f"{where}: wrong header for {spec.name}: {'; '.join(parts)}. Expected "
            f"{list(spec.required)} (optional {list(spec.optional)}); found {names}. Map other names "
            "with ingest.column_map (source: canonical; an empty canonical name drops a column).")
    return mapped


def read_records(spark: SparkSession, lake: Lake, input_path: str, entity: str, fmt: str,
                 cfg: IngestConfig) -> DataFrame:
    """Extract: one row per input record with raw_record, source_file, problem and string fields."""
    if fmt not in FORMATS:
        raise IngestError(f"unknown input format {fmt!r} for {input_path}; expected one of {list(FORMATS)}")
    spec = ENTITY_SPECS[entity]
    files = list_input_files(lake, input_path)
    if fmt == "csv":
        return _read_csv(spark, lake, files, spec, cfg)
    if fmt == "json":
        return _read_json(spark, files, spec, cfg)
    return _read_parquet(spark, files, spec, cfg)


def _read_csv(spark: SparkSession, lake: Lake, files: list[str], spec: EntitySpec,
              cfg: IngestConfig) -> DataFrame:
    headers: dict[str, str] = {}
    mapping: list[str | None] | None = None
    for url in files:
        first = read_first_line(lake, url)
        if first is None:
            continue  # an empty file holds no header and no rows
        file_mapping = map_header(parse_header(first, cfg.delimiter), spec, cfg, url)
        if mapping is not None and file_mapping != mapping:
            raise IngestError(f"{url}: header {first!r} differs from the other input files' "
                              f"(expected the columns {mapping})")
        mapping, headers[url] = file_mapping, first.lstrip("\ufeff")
    if mapping is None:  # only empty files
        return _empty_records(spark, spec)
    lines = (spark.read.text([u for u in files if u in headers])
             .select(F.col("value").alias("raw_record"), source_file_column().alias("source_file")))
    header_of = F.create_map(*[x for url, h in headers.items() for x in (F.lit(url), F.lit(h))])
    return lines_to_records(lines, header_of, mapping, spec, cfg)


def lines_to_records(lines: DataFrame, header_of: Column, mapping: list[str | None],
                     spec: EntitySpec, cfg: IngestConfig) -> DataFrame:
    """Transform: text lines (raw_record, source_file) -> records, minus one header line per file.

    A file's header line is its first line; any other line equal to it is a data line like any
    other (it will be quarantined as a duplicate or for its bad values).
    """
    # Hadoop's line reader drops a UTF-8 byte-order mark at the start of a file; compare without it
    is_header = F.regexp_replace("raw_record", "^\ufeff", "") == header_of[F.col("source_file")]
    header_rank = F.row_number().over(
        Window.partitionBy("source_file", "raw_record").orderBy(F.lit(1)))
    lines = (lines.withColumn("_header_rank", F.when(is_header, header_rank))
             .where(F.col("_header_rank").isNull() | (F.col("_header_rank") > 1))
             .drop("_header_rank"))
    fields = _unquote_all(F.split(F.col("raw_record"), _field_split_pattern(cfg.delimiter), -1))
    records = lines.withColumn("_fields", fields)
    problem = (F.when(F.trim("raw_record") == "", F.lit(EMPTY_LINE))
               .when(~F.is_valid_utf8("raw_record"), F.lit(BAD_ENCODING))
               .when(F.size("_fields") != len(mapping), F.lit(WRONG_COLUMN_COUNT))
               .when(F.exists("_fields", lambda f: F.length(f) > cfg.max_field_chars),
                     F.lit(OVERSIZED_FIELD)))
    columns = {name: F.get(F.col("_fields"), i) for i, name in enumerate(mapping) if name}
    return records.select(
        "raw_record", "source_file", problem.alias("problem"),
        *[(columns[c] if c in columns else F.lit(None).cast("string")).alias(c) for c in spec.columns])


def _unquote_all(fields: Column) -> Column:
    """Strip the quotes around each quoted field and undo doubled quotes inside it."""
    def unquote(f: Column) -> Column:
        t = F.trim(f)
        return F.when(t.rlike(r'^".*"$'),
                      F.regexp_replace(F.regexp_extract(t, r'^"(.*)"$', 1), '""', '"')).otherwise(f)
    return F.transform(fields, unquote)


def _read_json(spark: SparkSession, files: list[str], spec: EntitySpec, cfg: IngestConfig) -> DataFrame:
    schema = T.StructType([T.StructField(c, T.StringType()) for c in spec.columns]
                          + [T.StructField("_corrupt_record", T.StringType())])
    df = (spark.read.schema(schema).option("mode", "PERMISSIVE")
          .option("columnNameOfCorruptRecord", "_corrupt_record").json(files)
          .withColumn("source_file", source_file_column()))
    fields = [F.col(c) for c in spec.columns]
    raw = F.coalesce(F.col("_corrupt_record"), F.to_json(F.struct(*fields)))
    problem = (F.when(F.col("_corrupt_record").isNotNull(), F.lit(MALFORMED_RECORD))
               .when(F.exists(F.array(*fields), lambda f: F.length(f) > cfg.max_field_chars),
                     F.lit(OVERSIZED_FIELD)))
    return df.select(raw.alias("raw_record"), "source_file", problem.alias("problem"),
                     *[F.when(F.col("_corrupt_record").isNull(), F.col(c)).alias(c) for c in spec.columns])


def _read_parquet(spark: SparkSession, files: list[str], spec: EntitySpec, cfg: IngestConfig) -> DataFrame:
    df = spark.read.parquet(*files)
    names = [f.name for f in df.schema.fields]
    mapping = map_header(names, spec, cfg, files[0])
    df = df.select(*[F.col(n).alias(m) for n, m in zip(names, mapping) if m])
    as_text = {}
    for field in df.schema.fields:
        if isinstance(field.dataType, T.BinaryType):
            as_text[field.name] = F.base64(field.name)  # pixels travel as base64 text
        else:
            as_text[field.name] = F.col(field.name).cast("string")
    cols = [as_text.get(c, F.lit(None).cast("string")).alias(c) for c in spec.columns]
    out = df.select(*cols).withColumn("source_file", source_file_column())
    raw = F.to_json(F.struct(*[F.col(c) for c in spec.columns]))
    return out.select(raw.alias("raw_record"), "source_file", F.lit(None).cast("string").alias("problem"),
                      *spec.columns)


def _empty_records(spark: SparkSession, spec: EntitySpec) -> DataFrame:
    schema = T.StructType([T.StructField(c, T.StringType()) for c in
                           ("raw_record", "source_file", "problem", *spec.columns)])
    return spark.createDataFrame([], schema)


# =============================================================== transform

def _text(name: str) -> Column:
    """A trimmed string field, null when empty."""
    t = F.trim(F.col(name))
    return F.when(t != "", t)


def parse_timestamp(col: Column, formats: list[str]) -> Column:
    """The first of `formats` that parses; numbers are read as Unix epoch seconds."""
    t = F.trim(col)
    epoch = F.when(t.rlike(r"^\d{9,10}(\.\d+)?$"), F.timestamp_seconds(t.try_cast("double")))
    return F.coalesce(*[F.try_to_timestamp(t, F.lit(f)) for f in formats], epoch)


def _first_reason(checks: list[tuple[str, Column]]) -> Column:
    out = None
    for reason, bad in checks:
        out = (F.when(bad, F.lit(reason)) if out is None else out.when(bad, F.lit(reason)))
    return out


def _is_bad_number(x: Column) -> Column:
    return x.isNull() | F.isnan(x) | (F.abs(x) == float("inf"))


def resolve_reasons(typed: DataFrame, repeat_key: list[str], repeat_reason: str,
                    repeat_order: list) -> DataFrame:
    """One reason per row, in this order: the structural `problem` found while reading, an exact
    duplicate of an earlier raw record, the first failed value check (`_value_problem`), and last a
    repeat of an already clean row under the entity's key (`repeat_key`)."""
    typed = mark_duplicates(typed.withColumn("quarantine_reason", F.col("problem")),
                            "quarantine_reason", ["raw_record"], DUPLICATE_LINE, ["source_file"])
    typed = typed.withColumn("quarantine_reason", F.coalesce("quarantine_reason", "_value_problem"))
    typed = mark_duplicates(typed, "quarantine_reason", repeat_key, repeat_reason, repeat_order)
    return typed.drop("_value_problem", "problem")


def mark_duplicates(df: DataFrame, reason_col: str, key: list[str], reason: str,
                    order: list[str]) -> DataFrame:
    """Among rows not yet refused, the second and later rows with the same `key` get `reason`.

    `order` decides which copy is kept (the first), so re-runs keep the same one.
    """
    candidate = F.col(reason_col).isNull()
    w = Window.partitionBy(candidate, *key).orderBy(*order)
    return df.withColumn(reason_col, F.when(candidate & (F.row_number().over(w) > 1), F.lit(reason))
                         .otherwise(F.col(reason_col)))


def classify_transactions(records: DataFrame, cfg: IngestConfig) -> DataFrame:
    """records -> typed transaction rows with `quarantine_reason` (null = clean)."""
    quantity = F.trim("quantity").try_cast("double")
    price = F.trim("unit_price").try_cast("double")
    price_given = _text("unit_price").isNotNull()
    ts = parse_timestamp(F.col("invoice_ts"), cfg.timestamp_formats)
    checks = [
        ("missing_invoice_id", _text("invoice_id").isNull()),
        ("missing_customer_id", _text("customer_id").isNull()),
        ("missing_product_id", _text("product_id").isNull()),
        ("bad_quantity", _is_bad_number(quantity) | (quantity != F.floor(quantity))
         | (F.abs(quantity) > 1e9)),
        ("zero_quantity", quantity == 0),
        ("bad_price", price_given & _is_bad_number(price)),
        ("nonpositive_price", price_given & (price <= 0)),
        ("bad_timestamp", ts.isNull()),
    ]
    typed = records.select(
        "raw_record", "source_file", "problem",
        _text("invoice_id").alias("invoice_id"), _text("customer_id").alias("customer_id"),
        _text("product_id").alias("product_id"),
        F.when(~_is_bad_number(quantity) & (F.abs(quantity) <= 1e9),
               quantity.cast("long")).alias("quantity"),
        price.alias("unit_price"), ts.alias("invoice_ts"), _text("country").alias("country"),
        _first_reason(checks).alias("_value_problem"))
    # The same invoice line written twice in different text (e.g. "5" and "5.0", padded ids).
    typed = resolve_reasons(
        typed, ["invoice_id", "product_id", "customer_id", "quantity", "unit_price", "invoice_ts"],
        "repeated_invoice_line", ["source_file", "raw_record"])
    return typed.withColumn("is_return", F.col("quantity") < 0)


def classify_ratings(records: DataFrame, cfg: IngestConfig) -> DataFrame:
    rating = F.trim("rating").try_cast("double")
    ts = parse_timestamp(F.col("rated_ts"), cfg.timestamp_formats)
    checks = [
        ("missing_user_id", _text("user_id").isNull()),
        ("missing_item_id", _text("item_id").isNull()),
        ("bad_rating", _is_bad_number(rating)),
        ("bad_timestamp", ts.isNull()),
    ]
    typed = records.select("raw_record", "source_file", "problem",
                           _text("user_id").alias("user_id"), _text("item_id").alias("item_id"),
                           rating.alias("rating"), ts.alias("rated_ts"),
                           _first_reason(checks).alias("_value_problem"))
    # A user rating the same item again: the latest rating stands, earlier ones are superseded.
    return resolve_reasons(typed, ["user_id", "item_id"], "superseded_rating",
                           [F.col("rated_ts").desc(), "source_file", "raw_record"])


def classify_images(records: DataFrame, cfg: IngestConfig, height: int, width: int) -> DataFrame:
    pixels = F.try_to_binary(F.col("pixels"), F.lit("base64"))
    label = F.trim("label").try_cast("double")
    split = F.lower(_text("split"))
    checks = [
        ("missing_image_id", _text("image_id").isNull()),
        ("bad_pixels", pixels.isNull() | (F.length(pixels) != height * width)),
        ("bad_label", _text("label").isNotNull() & (_is_bad_number(label) | (label != F.floor(label)))),
        ("bad_split", ~F.coalesce(split.isin("train", "test"), F.lit(False))),
    ]
    typed = records.select("raw_record", "source_file", "problem",
                           _text("image_id").alias("image_id"),
                           F.when(label == F.floor(label), label.cast("long")).alias("label"),
                           pixels.alias("pixels"), split.alias("split"),
                           _first_reason(checks).alias("_value_problem"))
    return resolve_reasons(typed, ["image_id"], "duplicate_image_id", ["source_file", "raw_record"])


CLEAN_COLUMNS = {
    "transactions": ["invoice_id", "customer_id", "product_id", "quantity", "unit_price",
                     "invoice_ts", "country", "is_return", "source_file"],
    "ratings": ["user_id", "item_id", "rating", "rated_ts", "source_file"],
    "images": ["image_id", "label", "pixels", "split", "source_file"],
}


def split_clean(classified: DataFrame, entity: str) -> DataFrame:
    return classified.where(F.col("quarantine_reason").isNull()).select(*CLEAN_COLUMNS[entity])


def split_quarantine(classified: DataFrame) -> DataFrame:
    return (classified.where(F.col("quarantine_reason").isNotNull())
            .select("raw_record", "quarantine_reason", "source_file"))


def classify(records: DataFrame, entity: str, config: Config) -> DataFrame:
    classifiers: dict[str, Callable[[DataFrame], DataFrame]] = {
        "transactions": lambda r: classify_transactions(r, config.ingest),
        "ratings": lambda r: classify_ratings(r, config.ingest),
        "images": lambda r: classify_images(r, config.ingest, config.images.height,
                                            config.images.width),
    }
    return classifiers[entity](records)


# =============================================================== load

def stage_name(entity: str) -> str:
    """The manifest's name for ingesting an entity: `ingest` for transactions, else ingest_<entity>."""
    return "ingest" if entity == "transactions" else f"ingest_{entity}"


def run_ingest(spark: SparkSession, config: Config, run_date: str, input_path: str,
               entity: str = "transactions", fmt: str | None = None) -> dict:
    """Ingest one input for one date; returns the stage's counts (also in the manifest)."""
    if entity not in ENTITY_SPECS:
        raise IngestError(f"unknown entity {entity!r}; expected one of {list(ENTITY_SPECS)}")
    fmt = fmt or ("parquet" if entity == "images" else config.ingest.format)
    lake = Lake(spark, config.lake.root)
    partition = f"dt={run_date}"
    with StageRun(lake, run_date, stage_name(entity)) as run:
        run.counts["input"] = input_path
        records = read_records(spark, lake, input_path, entity, fmt, config.ingest)
        classified = classify(records, entity, config).persist()
        try:
            rows_read = records.count()
            rows_clean = lake.publish(split_clean(classified, entity), f"clean/{entity}", partition)
            rows_quarantined = lake.publish(split_quarantine(classified), f"quarantine/{entity}",
                                            partition)
        finally:
            classified.unpersist()
        by_reason = {r["quarantine_reason"]: r["count"] for r in
                     lake.read(f"quarantine/{entity}", partition)
                     .groupBy("quarantine_reason").count().collect()}
        run.counts.update(rows_read=rows_read, rows_clean=rows_clean,
                          rows_quarantined=rows_quarantined,
                          quarantined_by_reason=dict(sorted(by_reason.items())))
        if entity == "transactions":
            run.counts["rows_returns"] = lake.read(f"clean/{entity}", partition) \
                .where("is_return").count()
        run.outputs.update(clean=lake.partition_url(f"clean/{entity}", partition),
                           quarantine=lake.partition_url(f"quarantine/{entity}", partition))
        if rows_read != rows_clean + rows_quarantined:
            raise RuntimeError(f"ingest lost rows: read {rows_read}, clean {rows_clean}, "
                               f"quarantined {rows_quarantined}")
    return run.counts
