"""Ingest: raw input files -> `clean/<entity>/dt=D` + `quarantine/<entity>/dt=D`.

Every record read ends in exactly one of the two, so records read = clean + quarantined, always.
A quarantined record keeps its raw text, the first reason it was refused for (in the order of
each entity's checks below) and its source file.

The flow, for every entity and format:
  extract   read_records(): files -> one row per input record with `raw_record`, `source_file`,
            a structural `problem` (encoding, unbalanced quote, column count, malformed JSON,
            oversized field) and one string column per canonical field; CSV headers are checked
            on the driver first.
  transform classify_<entity>(): parse types, apply the entity's checks in order, mark exact
            duplicates and repeats -> `quarantine_reason` (null for clean rows).
            split_clean() / split_quarantine() then give the two outputs.
  load      run_ingest(): publishes both partitions through the lake and records counts (one
            aggregate over the cached records, not a second read of the input) in the manifest.

CSV records (RFC 4180). The files are read as text lines, so that large files stay split across
tasks and the raw bytes of every record are kept (a line that is not UTF-8 is refused, not
repaired). A record is one line, unless a quoted field holds a line break: a line that ends inside
an open quoted field continues on the next lines, up to the first line that closes the field
(`scan_csv_layout` finds these on the driver from one aggregate over the lines; only a file that
has such lines pays for joining them). The fields of each record are then parsed by Spark's own
CSV parser (`from_csv`, all fields as strings, PERMISSIVE with a corrupt-record column): quoted
fields may hold the delimiter, doubled quotes and line breaks. A file's first line is its header.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from deepmine.core.config import Config, IngestConfig, TextConfig
from deepmine.core.lake import Lake, StageRun, resolve_url

FORMATS = ("csv", "json", "parquet")


class IngestError(ValueError):
    """Input that cannot be ingested at all: missing, wrong header, unknown format."""


@dataclass(frozen=True)
class EntitySpec:
    name: str
    required: tuple[str, ...]  # must be in the input's header / schema
    optional: tuple[str, ...] = ()  # may be absent: the clean column is then null
    # free text, held to its own length limit by the entity's checks rather than to
    # ingest.max_field_chars (a review's text)
    long_text: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


ENTITY_SPECS = {
    "transactions": EntitySpec("transactions",
                               ("invoice_id", "customer_id", "product_id", "quantity", "invoice_ts"),
                               ("unit_price", "country")),
    "ratings": EntitySpec("ratings", ("user_id", "item_id", "rating", "rated_ts")),
    "images": EntitySpec("images", ("image_id", "pixels", "split"), ("label",)),
    "reviews": EntitySpec("reviews", ("review_id", "product_id", "rating", "text"),
                          ("customer_id", "review_ts", "split"), long_text=("text",)),
}

# Structural problems found while reading, before any field is parsed, in this order.
EMPTY_LINE = "empty_line"
BAD_ENCODING = "bad_encoding"
UNBALANCED_QUOTE = "unbalanced_quote"
WRONG_COLUMN_COUNT = "wrong_column_count"
OVERSIZED_FIELD = "oversized_field"
MALFORMED_RECORD = "malformed_record"
DUPLICATE_LINE = "duplicate_line"

# Every reason a record can be quarantined for, per entity, in the order they are checked.
STRUCTURAL_REASONS = (EMPTY_LINE, BAD_ENCODING, UNBALANCED_QUOTE, WRONG_COLUMN_COUNT,
                      OVERSIZED_FIELD, MALFORMED_RECORD, DUPLICATE_LINE)
VALUE_REASONS = {
    "transactions": ("missing_invoice_id", "missing_customer_id", "missing_product_id",
                     "bad_quantity", "zero_quantity", "missing_unit_price", "bad_price",
                     "nonpositive_price", "bad_timestamp", "repeated_invoice_line"),
    "ratings": ("missing_user_id", "missing_item_id", "bad_rating", "rating_out_of_range",
                "bad_timestamp", "superseded_rating"),
    "images": ("missing_image_id", "bad_pixels", "bad_label", "label_out_of_range", "bad_split",
               "duplicate_image_id"),
    "reviews": ("missing_review_id", "missing_product_id", "empty_text", "oversized_text",
                "bad_rating", "rating_out_of_range", "bad_timestamp", "bad_split",
                "duplicate_review_id"),
}


def reasons_for(entity: str) -> tuple[str, ...]:
    return STRUCTURAL_REASONS + VALUE_REASONS[entity]


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


def _file_url(path: Column) -> Column:
    """A file path column in _same_form's form (file:///x)."""
    return F.regexp_replace(path, r"^file:/+", "file:///")


def source_file_column() -> Column:
    return _file_url(F.input_file_name())


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
    return [name.strip() for name in next(csv.reader([line.lstrip("\ufeff")], delimiter=delimiter))]


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


@dataclass(frozen=True)
class Records:
    """Extracted records and which canonical columns the input has (an absent optional column is
    allowed; an empty value in a present one is a missing value)."""
    frame: DataFrame
    present: frozenset[str]


def read_records(spark: SparkSession, lake: Lake, input_path: str, entity: str, fmt: str,
                 cfg: IngestConfig) -> Records:
    """Extract: one row per input record with raw_record, source_file, problem and string fields."""
    if fmt not in FORMATS:
        raise IngestError(f"unknown input format {fmt!r} for {input_path}; expected one of {list(FORMATS)}")
    check_timestamp_formats(cfg.timestamp_formats)
    spec = ENTITY_SPECS[entity]
    files = list_input_files(lake, input_path)
    if fmt == "csv":
        return _read_csv(spark, lake, files, spec, cfg)
    if fmt == "json":
        return _read_json(spark, files, spec, cfg)
    return _read_parquet(spark, files, spec, cfg)


def check_timestamp_formats(formats: list[str]) -> None:
    """Refuse a list in which two formats read the same text with day and month swapped."""
    def shape(f: str) -> str:
        return re.sub(r"d+|M+", "#", f)
    for i, a in enumerate(formats):
        for b in formats[i + 1:]:
            if shape(a) == shape(b) and re.findall(r"[dM]", a) != re.findall(r"[dM]", b):
                raise IngestError(
                    f"ingest.timestamp_formats holds {a!r} and {b!r}, which read the same text "
                    "with day and month swapped (01/02 would be both 1 February and 2 January); "
                    "keep the one your source writes")


def _read_csv(spark: SparkSession, lake: Lake, files: list[str], spec: EntitySpec,
              cfg: IngestConfig) -> Records:
    mapping: list[str | None] | None = None
    with_header = []
    for url in files:
        first = read_first_line(lake, url)
        if first is None:
            continue  # an empty file holds no header and no rows
        file_mapping = map_header(parse_header(first, cfg.delimiter), spec, cfg, url)
        if mapping is not None and file_mapping != mapping:
            raise IngestError(f"{url}: header {first!r} differs from the other input files' "
                              f"(expected the columns {mapping})")
        mapping = file_mapping
        with_header.append(url)
    if mapping is None:  # only empty files
        return Records(_empty_records(spark, spec), frozenset())
    lines = csv_lines(spark, with_header)
    layout = scan_csv_layout(lines, cfg, len(mapping))
    return Records(lines_to_records(lines, layout, mapping, spec, cfg),
                   frozenset(m for m in mapping if m))


def csv_lines(spark: SparkSession, files: list[str]) -> DataFrame:
    """The files' physical lines: raw_record, source_file, block_start and line_pos.

    `line_pos` (monotonically_increasing_id) counts lines in file order within each of a file's
    splits (`block_start`): consecutive lines of a split have consecutive positions. Filters
    above this projection are not pushed into the scan (the id is nondeterministic), so every
    query over these lines sees the same splits and the same positions.
    """
    return spark.read.text(files).select(
        F.col("value").alias("raw_record"),
        _file_url(F.col("_metadata.file_path")).alias("source_file"),
        F.col("_metadata.file_block_start").alias("block_start"),
        F.monotonically_increasing_id().alias("line_pos"))


def _quote_state_patterns(delimiter: str) -> tuple[str, str]:
    """Java regexes for a line's quote state (possessive, so linear in the line's length).

    opens: read from the start of a record, the line ends inside an open quoted field.
    closes: read from inside a quoted field, the line closes it and ends outside any quotes.
    A field is quoted when it starts with a quote; inside, a doubled quote is a quote.
    """
    d = re.escape(delimiter)
    quoted = f'"(?:[^"]|"")*+"[^{d}]*+'
    unquoted = f'[^"{d}][^{d}]*+'
    opens = f'^(?:(?:{quoted}|{unquoted})?{d})*+"(?:[^"]|"")*+$'
    closes = f'^(?:[^"]|"")*+"[^{d}]*+(?:{d}(?:{quoted}|{unquoted})?)*+$'
    return opens, closes


@dataclass(frozen=True)
class CsvLayout:
    """Where the records are among the lines: the header lines to drop, the lines that join into
    one multi-line record (ranges of positions, each with the record's first line), and lines
    whose quote never closes."""
    header_positions: tuple[int, ...]
    record_ranges: tuple[tuple[int, int, int], ...] = ()  # (first line_pos, lo, hi), inclusive
    unbalanced: tuple[int, ...] = ()
    multiline_records: int = 0


def scan_csv_layout(lines: DataFrame, cfg: IngestConfig, columns: int) -> CsvLayout:
    """Where the records are among the lines.

    One aggregate over the lines finds each split's positions, each file's header line (the first
    line of its first split) and the lines that open a quoted field. Only when there are such
    lines, two more queries find, for each, the first line within `max_record_lines` that closes
    it, and whether the lines joined up to there parse to `columns` fields. The driver then walks
    the openers in file order: a joined record that parses is taken (its lines start no record
    of their own); an opener that finds no closing line, or whose joined lines do not parse, is
    an unbalanced quote, a record alone, and the lines after it are records as usual.
    """
    opens_re, closes_re = _quote_state_patterns(cfg.delimiter)
    raw = F.col("raw_record")
    opens = raw.contains('"') & raw.rlike(opens_re)
    blocks = (lines.groupBy("source_file", "block_start")
              .agg(F.min("line_pos").alias("lo"), F.max("line_pos").alias("hi"),
                   F.collect_list(F.when(opens, F.col("line_pos"))).alias("openers"))
              .collect())
    headers = tuple(b.lo for b in blocks if b.block_start == 0)
    openers = sorted((b.source_file, b.block_start, p) for b in blocks for p in b.openers
                     if not (b.block_start == 0 and p == b.lo))
    if not openers:
        return CsvLayout(headers)
    splits: dict[str, list[tuple[int, int, int]]] = {}
    for b in blocks:
        splits.setdefault(b.source_file, []).append((b.block_start, b.lo, b.hi))
    for parts in splits.values():
        parts.sort()

    def after(file: str, block: int, pos: int, end: int | None = None) -> list[tuple[int, int]]:
        """The positions of the `max_record_lines` lines after `pos` in file order (up to `end`
        if given), as (lo, hi) ranges, one per split."""
        parts = splits[file]
        i = next(j for j, part in enumerate(parts) if part[0] == block)
        out, lo, left = [], pos + 1, cfg.max_record_lines
        while left > 0 and i < len(parts):
            hi = min(parts[i][2], lo + left - 1)
            if lo <= hi:
                if end is not None and lo <= end <= hi:
                    return out + [(lo, end)]
                out.append((lo, hi))
                left -= hi - lo + 1
            i += 1
            if i < len(parts):
                lo = parts[i][1]
        return out

    closes = raw.contains('"') & raw.rlike(closes_re)
    windows = [(p, lo, hi) for f, b, p in openers for lo, hi in after(f, b, p)]
    first_close = {r.opener: r.first.line_pos for r in
                   _lines_in_ranges(lines.where(closes), windows, "opener")
                   .groupBy("opener")
                   .agg(F.min(F.struct("block_start", "line_pos")).alias("first")).collect()}
    spans = {p: [(p, p)] + after(f, b, p, first_close[p]) for f, b, p in openers if p in first_close}
    candidates = [(p, lo, hi) for p, ranges in spans.items() for lo, hi in ranges]
    joined = (_lines_in_ranges(lines, candidates, "_record").groupBy("_record")
              .agg(_joined_lines().alias("raw_record")))
    schema = ", ".join([f"`_{i}` string" for i in range(columns)] + ["_corrupt string"])
    parses = {r._record for r in joined.where(
        F.from_csv("raw_record", schema, _csv_options(cfg))["_corrupt"].isNull())
        .select("_record").collect()}
    ranges, unbalanced, taken_until = [], [], None
    for f, b, p in openers:
        if taken_until is not None and (f, b, p) <= taken_until:
            continue  # a line of the record before
        if p not in parses:
            unbalanced.append(p)
            continue
        ranges.extend((p, lo, hi) for lo, hi in spans[p])
        end = first_close[p]
        taken_until = (f, next(x[0] for x in splits[f] if x[1] <= end <= x[2]), end)
    return CsvLayout(headers, tuple(ranges), tuple(unbalanced), len({r[0] for r in ranges}))


def _joined_lines() -> Column:
    """Aggregate: a record's lines joined by line breaks, in file order."""
    parts = F.array_sort(F.collect_list(F.struct("block_start", "line_pos", "raw_record")))
    return F.concat_ws("\n", F.transform(parts, lambda x: x["raw_record"]))


def _csv_options(cfg: IngestConfig) -> dict[str, str]:
    """Spark's CSV parser, RFC 4180 quoting (a doubled quote inside quotes is a quote), every
    field a string, a record with too few or too many fields in the corrupt-record column."""
    return {"sep": cfg.delimiter, "quote": '"', "escape": '"', "mode": "PERMISSIVE",
            "columnNameOfCorruptRecord": "_corrupt", "maxCharsPerColumn": "-1"}


def _lines_in_ranges(lines: DataFrame, ranges: list[tuple[int, int, int]], key: str,
                     how: str = "inner") -> DataFrame:
    """`lines` joined with the position ranges (key, lo, hi) that hold them. Ranges are at most a
    few hundred lines long: each is listed under the buckets of `bucket` positions it touches,
    so the join is on equal buckets (hashed, broadcast) rather than a scan of every range."""
    spark = lines.sparkSession
    bucket = max(hi - lo + 1 for _, lo, hi in ranges)
    rows = [(k_, lo, hi, b) for k_, lo, hi in ranges for b in range(lo // bucket, hi // bucket + 1)]
    table = spark.createDataFrame(rows, f"{key} long, _lo long, _hi long, _bucket long")
    joined = lines.join(
        F.broadcast(table),
        (F.floor(lines["line_pos"] / bucket) == table["_bucket"])
        & lines["line_pos"].between(table["_lo"], table["_hi"]), how)
    return joined.drop("_lo", "_hi", "_bucket")


def lines_to_records(lines: DataFrame, layout: CsvLayout, mapping: list[str | None],
                     spec: EntitySpec, cfg: IngestConfig) -> DataFrame:
    """Transform: text lines -> records (header lines dropped, multi-line records joined), then
    each record's fields parsed by Spark's CSV parser."""
    lines = lines.where(~F.col("line_pos").isin(list(layout.header_positions)))
    if layout.record_ranges:
        tagged = _lines_in_ranges(lines, list(layout.record_ranges), "_record", how="left")
        lines = (tagged.groupBy(F.coalesce("_record", "line_pos").alias("line_pos"))
                 .agg(_joined_lines().alias("raw_record"),
                      F.first("source_file").alias("source_file")))
    unbalanced = (F.col("line_pos").isin(list(layout.unbalanced)) if layout.unbalanced
                  else F.lit(False))
    return parse_csv_records(lines.withColumn("_unbalanced", unbalanced), mapping, spec, cfg)


def parse_csv_records(records: DataFrame, mapping: list[str | None], spec: EntitySpec,
                      cfg: IngestConfig) -> DataFrame:
    """(raw_record, source_file[, _unbalanced]) -> records with `problem` and string fields."""
    names = [m or f"_dropped_{i}" for i, m in enumerate(mapping)]
    schema = ", ".join(f"`{n}` string" for n in [*names, "_corrupt"])
    options = _csv_options(cfg)
    if "_unbalanced" not in records.columns:
        records = records.withColumn("_unbalanced", F.lit(False))
    parsed = records.select("raw_record", "source_file", "_unbalanced",
                            F.from_csv("raw_record", schema, options).alias("_f"))
    fields = [F.col(f"_f.{n}") for n in names if n not in spec.long_text]
    problem = (F.when(F.trim("raw_record") == "", F.lit(EMPTY_LINE))
               .when(~F.is_valid_utf8("raw_record"), F.lit(BAD_ENCODING))
               .when(F.col("_unbalanced"), F.lit(UNBALANCED_QUOTE))
               .when(F.col("_f._corrupt").isNotNull(), F.lit(WRONG_COLUMN_COUNT))
               .when(F.greatest(*[F.coalesce(F.length(f), F.lit(0)) for f in fields])
                     > cfg.max_field_chars, F.lit(OVERSIZED_FIELD)))
    present = {m: F.col(f"_f.{m}") for m in mapping if m}
    return parsed.select(
        "raw_record", "source_file", problem.alias("problem"),
        *[present.get(c, F.lit(None).cast("string")).alias(c) for c in spec.columns])


def _read_json(spark: SparkSession, files: list[str], spec: EntitySpec, cfg: IngestConfig) -> Records:
    schema = T.StructType([T.StructField(c, T.StringType()) for c in spec.columns]
                          + [T.StructField("_corrupt_record", T.StringType())])
    df = (spark.read.schema(schema).option("mode", "PERMISSIVE")
          .option("columnNameOfCorruptRecord", "_corrupt_record").json(files)
          .withColumn("source_file", source_file_column()))
    fields = [F.col(c) for c in spec.columns]
    raw = F.coalesce(F.col("_corrupt_record"), F.to_json(F.struct(*fields)))
    short = F.array(*[F.col(c) for c in spec.columns if c not in spec.long_text])
    problem = (F.when(F.col("_corrupt_record").isNotNull(), F.lit(MALFORMED_RECORD))
               .when(F.exists(short, lambda f: F.length(f) > cfg.max_field_chars),
                     F.lit(OVERSIZED_FIELD)))
    records = df.select(raw.alias("raw_record"), "source_file", problem.alias("problem"),
                        *[F.when(F.col("_corrupt_record").isNull(), F.col(c)).alias(c)
                          for c in spec.columns])
    # JSON lines have no header: an optional key is taken as present when any record has it
    seen = records.select(*[F.max(F.col(c).isNotNull()).alias(c) for c in spec.optional]).first() \
        if spec.optional else None
    present = set(spec.required) | {c for c in spec.optional if seen and seen[c]}
    return Records(records, frozenset(present))


def _read_parquet(spark: SparkSession, files: list[str], spec: EntitySpec, cfg: IngestConfig) -> Records:
    df = spark.read.parquet(*files)
    names = [f.name for f in df.schema.fields]
    mapping = map_header(names, spec, cfg, files[0])
    df = df.select(*[F.col(n).alias(m) for n, m in zip(names, mapping) if m])
    as_text = {}
    for field_ in df.schema.fields:
        if isinstance(field_.dataType, T.BinaryType):
            as_text[field_.name] = F.base64(field_.name)  # pixels travel as base64 text
        else:
            as_text[field_.name] = F.col(field_.name).cast("string")
    cols = [as_text.get(c, F.lit(None).cast("string")).alias(c) for c in spec.columns]
    out = df.select(*cols).withColumn("source_file", source_file_column())
    raw = F.to_json(F.struct(*[F.col(c) for c in spec.columns]))
    records = out.select(raw.alias("raw_record"), "source_file",
                         F.lit(None).cast("string").alias("problem"), *spec.columns)
    return Records(records, frozenset(m for m in mapping if m))


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
    repeat of an already clean row under the entity's key (`repeat_key`), the first by
    `repeat_order` being kept.

    Both duplicate checks run after one shuffle, on the key's first column: copies of one raw
    record parse to the same key, so each check's groups lie within one partition. When
    `repeat_order` starts with raw_record and source_file (transactions, images), both checks
    also share one sort.
    """
    typed = typed.repartition(F.col(repeat_key[0]))
    # copies of one raw record share their structural problem: the first by file is the record
    copy = F.row_number().over(Window.partitionBy(*repeat_key, "raw_record").orderBy("source_file"))
    reason = F.coalesce(F.col("problem"),
                        F.when(copy > 1, F.lit(DUPLICATE_LINE)), F.col("_value_problem"))
    typed = typed.withColumn("quarantine_reason", reason)
    candidate = F.col("quarantine_reason").isNull()
    earlier = F.sum(candidate.cast("int")).over(
        Window.partitionBy(*repeat_key).orderBy(*repeat_order)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    typed = typed.withColumn("quarantine_reason", F.when(candidate & (earlier > 1),
                                                         F.lit(repeat_reason))
                             .otherwise(F.col("quarantine_reason")))
    return typed.drop("_value_problem", "problem")


def classify_transactions(records: DataFrame, cfg: IngestConfig,
                          present: frozenset[str] = frozenset(ENTITY_SPECS["transactions"].columns)
                          ) -> DataFrame:
    """records -> typed transaction rows with `quarantine_reason` (null = clean).

    `present`: the canonical columns the input has. A price column the input lacks altogether
    (a source without prices) leaves unit_price null; an empty price in an input that has the
    column is `missing_unit_price`. Each field is parsed once (one projection), then checked
    (the next): the checks read the parsed columns instead of parsing again.
    """
    parsed = records.select(
        "raw_record", "source_file", "problem",
        _text("invoice_id").alias("invoice_id"), _text("customer_id").alias("customer_id"),
        _text("product_id").alias("product_id"),
        F.trim("quantity").try_cast("double").alias("_quantity"),
        F.trim("unit_price").try_cast("double").alias("_price"),
        _text("unit_price").isNotNull().alias("_price_given"),
        parse_timestamp(F.col("invoice_ts"), cfg.timestamp_formats).alias("invoice_ts"),
        _text("country").alias("country"))
    quantity, price, price_given = F.col("_quantity"), F.col("_price"), F.col("_price_given")
    checks = [
        ("missing_invoice_id", F.col("invoice_id").isNull()),
        ("missing_customer_id", F.col("customer_id").isNull()),
        ("missing_product_id", F.col("product_id").isNull()),
        ("bad_quantity", _is_bad_number(quantity) | (quantity != F.floor(quantity))
         | (F.abs(quantity) > 1e9)),
        ("zero_quantity", quantity == 0),
        ("missing_unit_price", F.lit("unit_price" in present) & ~price_given),
        ("bad_price", price_given & _is_bad_number(price)),
        ("nonpositive_price", price_given & (price <= 0)),
        ("bad_timestamp", F.col("invoice_ts").isNull()),
    ]
    typed = parsed.select(
        "raw_record", "source_file", "problem", "invoice_id", "customer_id", "product_id",
        F.when(~_is_bad_number(quantity) & (F.abs(quantity) <= 1e9),
               quantity.cast("long")).alias("quantity"),
        price.alias("unit_price"), "invoice_ts", "country",
        _first_reason(checks).alias("_value_problem"))
    # The same invoice line written twice in different text (e.g. "5" and "5.0", padded ids).
    typed = resolve_reasons(
        typed, ["invoice_id", "product_id", "customer_id", "quantity", "unit_price", "invoice_ts"],
        "repeated_invoice_line", ["raw_record", "source_file"])
    return typed.withColumn("is_return", F.col("quantity") < 0)


def classify_ratings(records: DataFrame, cfg: IngestConfig) -> DataFrame:
    rating = F.trim("rating").try_cast("double")
    ts = parse_timestamp(F.col("rated_ts"), cfg.timestamp_formats)
    checks = [
        ("missing_user_id", _text("user_id").isNull()),
        ("missing_item_id", _text("item_id").isNull()),
        ("bad_rating", _is_bad_number(rating)),
        ("rating_out_of_range", (rating < cfg.rating_min) | (rating > cfg.rating_max)),
        ("bad_timestamp", ts.isNull()),
    ]
    typed = records.select("raw_record", "source_file", "problem",
                           _text("user_id").alias("user_id"), _text("item_id").alias("item_id"),
                           rating.alias("rating"), ts.alias("rated_ts"),
                           _first_reason(checks).alias("_value_problem"))
    # A user rating the same item again: the latest rating stands, earlier ones are superseded.
    return resolve_reasons(typed, ["user_id", "item_id"], "superseded_rating",
                           [F.col("rated_ts").desc(), "source_file", "raw_record"])


def classify_images(records: DataFrame, cfg: IngestConfig, height: int, width: int,
                    classes: int = 0) -> DataFrame:
    pixels = F.try_to_binary(F.col("pixels"), F.lit("base64"))
    label = F.trim("label").try_cast("double")
    split = F.lower(_text("split"))
    in_range = (label >= 0) & ((label < classes) if classes > 0 else F.lit(True))
    checks = [
        ("missing_image_id", _text("image_id").isNull()),
        ("bad_pixels", pixels.isNull() | (F.length(pixels) != height * width)),
        ("bad_label", _text("label").isNotNull() & (_is_bad_number(label) | (label != F.floor(label)))),
        ("label_out_of_range", _text("label").isNotNull() & ~in_range),
        ("bad_split", ~F.coalesce(split.isin("train", "test"), F.lit(False))),
    ]
    typed = records.select("raw_record", "source_file", "problem",
                           _text("image_id").alias("image_id"),
                           F.when(label == F.floor(label), label.cast("long")).alias("label"),
                           pixels.alias("pixels"), split.alias("split"),
                           _first_reason(checks).alias("_value_problem"))
    return resolve_reasons(typed, ["image_id"], "duplicate_image_id", ["raw_record", "source_file"])


REVIEW_RATING_MIN, REVIEW_RATING_MAX = 1, 5  # stars


def classify_reviews(records: DataFrame, cfg: IngestConfig, text: TextConfig) -> DataFrame:
    """records -> typed review rows with `quarantine_reason`. The text is kept as written (line
    breaks included), only checked: not empty once trimmed, at most `text.max_chars` characters
    (invalid UTF-8 is refused before, as bad_encoding). A rating is 1-5 stars (halves allowed);
    review_ts and split may be absent (a seeded hash of review_id then picks the split later).
    A review_id seen again is a duplicate: the first by file and text is kept."""
    rating = F.trim("rating").try_cast("double")
    given_ts = _text("review_ts")
    ts = parse_timestamp(F.col("review_ts"), cfg.timestamp_formats)
    split = F.lower(_text("split"))
    body = F.col("text")
    checks = [
        ("missing_review_id", _text("review_id").isNull()),
        ("missing_product_id", _text("product_id").isNull()),
        ("empty_text", F.coalesce(F.trim(body), F.lit("")) == ""),
        ("oversized_text", F.length(body) > text.max_chars),
        ("bad_rating", _is_bad_number(rating)),
        ("rating_out_of_range", (rating < REVIEW_RATING_MIN) | (rating > REVIEW_RATING_MAX)),
        ("bad_timestamp", given_ts.isNotNull() & ts.isNull()),
        ("bad_split", split.isNotNull() & ~split.isin("train", "test")),
    ]
    typed = records.select("raw_record", "source_file", "problem",
                           _text("review_id").alias("review_id"),
                           _text("product_id").alias("product_id"),
                           _text("customer_id").alias("customer_id"),
                           rating.alias("rating"), body.alias("text"), ts.alias("review_ts"),
                           split.alias("split"), _first_reason(checks).alias("_value_problem"))
    return resolve_reasons(typed, ["review_id"], "duplicate_review_id",
                           ["source_file", "raw_record"])


CLEAN_COLUMNS = {
    "transactions": ["invoice_id", "customer_id", "product_id", "quantity", "unit_price",
                     "invoice_ts", "country", "is_return", "source_file"],
    "ratings": ["user_id", "item_id", "rating", "rated_ts", "source_file"],
    "images": ["image_id", "label", "pixels", "split", "source_file"],
    "reviews": ["review_id", "product_id", "customer_id", "rating", "text", "review_ts", "split",
                "source_file"],
}


def split_clean(classified: DataFrame, entity: str) -> DataFrame:
    return classified.where(F.col("quarantine_reason").isNull()).select(*CLEAN_COLUMNS[entity])


def split_quarantine(classified: DataFrame) -> DataFrame:
    return (classified.where(F.col("quarantine_reason").isNotNull())
            .select("raw_record", "quarantine_reason", "source_file"))


def classify(records: Records, entity: str, config: Config) -> DataFrame:
    classifiers: dict[str, Callable[[DataFrame], DataFrame]] = {
        "transactions": lambda r: classify_transactions(r, config.ingest, records.present),
        "ratings": lambda r: classify_ratings(r, config.ingest),
        "images": lambda r: classify_images(r, config.ingest, config.images.height,
                                            config.images.width, config.images.classes),
        "reviews": lambda r: classify_reviews(r, config.ingest, config.text),
    }
    return classifiers[entity](records.frame)


def outcome_counts(classified: DataFrame, entity: str) -> list[Column]:
    """The stage's counts as aggregates over the classified records."""
    reason = F.col("quarantine_reason")
    counts = [F.count(F.lit(1)).alias("rows_read"),
              F.count_if(reason.isNull()).alias("rows_clean")]
    counts += [F.count_if(reason == r).alias(r) for r in reasons_for(entity)]
    if entity == "transactions":
        counts.append(F.count_if(reason.isNull() & F.col("is_return")).alias("rows_returns"))
    return counts


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
        # The counts come from one aggregate that also fills the cache the two writes read, so
        # the input is read and shuffled once. (Not DataFrame.observe: on Spark 4.0 a session that
        # has used an Observation holds an ObservationManager that cannot be serialized, and
        # every later Spark ML model whose training summary keeps the session, such as a
        # LogisticRegressionModel, then fails in transform with "Task not serializable".)
        classified = classify(records, entity, config).persist()
        try:
            seen = classified.agg(*outcome_counts(classified, entity)).first().asDict()
            rows_clean = lake.publish(split_clean(classified, entity), f"clean/{entity}", partition)
            rows_quarantined = lake.publish(split_quarantine(classified), f"quarantine/{entity}",
                                            partition)
        finally:
            classified.unpersist()
        rows_read = seen["rows_read"]
        by_reason = {r: seen[r] for r in reasons_for(entity) if seen[r]}
        run.counts.update(rows_read=rows_read, rows_clean=rows_clean,
                          rows_quarantined=rows_quarantined,
                          quarantined_by_reason=dict(sorted(by_reason.items())))
        if entity == "transactions":
            run.counts["rows_returns"] = seen["rows_returns"]
        run.outputs.update(clean=lake.partition_url(f"clean/{entity}", partition),
                           quarantine=lake.partition_url(f"quarantine/{entity}", partition))
        if not (rows_read == rows_clean + rows_quarantined == seen["rows_clean"]
                + sum(by_reason.values())) or rows_clean != seen["rows_clean"]:
            raise RuntimeError(f"ingest lost rows: read {rows_read}, clean {rows_clean}, "
                               f"quarantined {rows_quarantined}")
    return run.counts
