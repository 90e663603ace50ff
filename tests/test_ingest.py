"""Ingest: transforms on tiny frames compared whole, hand-broken files, re-runs, clear errors."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from deepmine.core.config import IngestConfig
from deepmine.data.ingest import (ENTITY_SPECS, IngestError, classify_transactions, parse_csv_records,
                             run_ingest, split_clean, split_quarantine)
from deepmine.core.lake import Lake

from csv_reference import reference_records

HEADER = "invoice_id,customer_id,product_id,quantity,unit_price,invoice_ts,country"
DATE = "2026-11-22"


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _classify(spark, lines: list[str], source="file:///in.csv"):
    frame = spark.createDataFrame([(line, source) for line in lines],
                                  "raw_record string, source_file string")
    cfg = IngestConfig()
    records = parse_csv_records(frame, HEADER.split(","), ENTITY_SPECS["transactions"], cfg)
    return classify_transactions(records, cfg)


def test_classify_transactions_whole_result(spark):
    lines = [
        "I1,C1,P1,2,3.50,2026-01-02 10:00:00,UK",
        "I1,C1,P2,1,1.25,2026-01-02 10:00:00,UK",
        "I1,C1,P2,1,1.25,2026-01-02 10:00:00,UK",          # exact duplicate line
        "I1,C1,P2,1.0,1.250,2026-01-02 10:00:00,UK",       # same invoice line, other text
        "C2,C1,P1,-1,3.50,2026-01-03 10:00:00,UK",         # a return: kept, flagged
        '"I3","C2","P,3",3,2,2026-01-05 09:30,"Fr""ance"', # quoted fields, doubled quote
        "I4,C2,P3,1,2",                                    # wrong column count
        "I5,,P3,1,2,2026-01-05 00:00:00,UK",               # missing customer
        "I6,C2,P3,x,2,2026-01-05 00:00:00,UK",             # bad quantity
        "I7,C2,P3,0,2,2026-01-05 00:00:00,UK",             # zero quantity
        "I8,C2,P3,1,-2,2026-01-05 00:00:00,UK",            # negative price
        "I9,C2,P3,1,2,someday,UK",                         # bad timestamp
        "  ",                                              # empty line
    ]
    classified = _classify(spark, lines)
    expected_clean = spark.createDataFrame([
        Row("I1", "C1", "P1", 2, 3.5, _ts("2026-01-02 10:00:00"), "UK", False, "file:///in.csv"),
        Row("I1", "C1", "P2", 1, 1.25, _ts("2026-01-02 10:00:00"), "UK", False, "file:///in.csv"),
        Row("C2", "C1", "P1", -1, 3.5, _ts("2026-01-03 10:00:00"), "UK", True, "file:///in.csv"),
        Row("I3", "C2", "P,3", 3, 2.0, _ts("2026-01-05 09:30:00"), 'Fr"ance', False, "file:///in.csv"),
    ], split_clean(classified, "transactions").schema)
    assertDataFrameEqual(split_clean(classified, "transactions"), expected_clean)
    expected_quarantine = [(lines[i], reason) for i, reason in [
        (2, "duplicate_line"), (3, "repeated_invoice_line"), (6, "wrong_column_count"),
        (7, "missing_customer_id"), (8, "bad_quantity"), (9, "zero_quantity"),
        (10, "nonpositive_price"), (11, "bad_timestamp"), (12, "empty_line")]]
    got = split_quarantine(classified).select("raw_record", "quarantine_reason")
    assertDataFrameEqual(got, spark.createDataFrame(expected_quarantine, got.schema))


# A file broken by hand, in ways the generator does not make: every line's fate is known.
GOOD = [f"H{i:03d},K{i % 7},SKU{i % 11},{1 + i % 4},{1 + i % 9}.99,2026-02-{1 + i % 28:02d} 12:00:00,NL"
        for i in range(90)]
BROKEN = [
    (b"H900\tK1\tSKU1\t1\t1.99\t2026-02-01 12:00:00\tNL", "wrong_column_count"),  # tab-delimited
    (b"H901,K1,SKU1,1,1.99,2026-02-01 12:0", "wrong_column_count"),               # truncated
    (b"\x00\x9f\xff\xfe binary \x81 garbage", "bad_encoding"),
    (b"H902,K1," + b"S" * 5000 + b",1,1.99,2026-02-01 12:00:00,NL", "oversized_field"),
    (b"H903,K1,SKU1,NaN,1.99,2026-02-01 12:00:00,NL", "bad_quantity"),
    (b"H904,K1,SKU1,2,Infinity,2026-02-01 12:00:00,NL", "bad_price"),
    (b"H905,K1,,2,1.99,2026-02-01 12:00:00,NL", "missing_product_id"),
    (HEADER.encode(), "bad_quantity"),                                          # header repeated
    (b"H906;K1;SKU1;2;1,99;2026-02-01 12:00:00;NL", "wrong_column_count"),      # wrong delimiter
    (b"H907,K1,SKU1,2.5,1.99,2026-02-01 12:00:00,NL", "bad_quantity"),          # fractional
]


def test_hand_broken_file_every_line_accounted(spark, make_config, tmp_path):
    path = tmp_path / "handmade.csv"
    body = [line.encode() for line in GOOD[:45]] + [b for b, _ in BROKEN] + \
           [line.encode() for line in GOOD[45:]]
    path.write_bytes(b"\xef\xbb\xbf" + HEADER.encode() + b"\r\n" + b"\r\n".join(body) + b"\r\n")
    config = make_config()
    counts = run_ingest(spark, config, DATE, str(path))
    expected_reasons: dict[str, int] = {}
    for _, reason in BROKEN:
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert counts["rows_read"] == 100
    assert counts["rows_clean"] == 90
    assert counts["quarantined_by_reason"] == dict(sorted(expected_reasons.items()))
    lake = Lake(spark, config.lake.root)
    clean = lake.read("clean/transactions", f"dt={DATE}")
    assert sorted(r.invoice_id for r in clean.select("invoice_id").collect()) == \
        sorted(line.split(",")[0] for line in GOOD)
    quarantined = lake.read("quarantine/transactions", f"dt={DATE}").collect()
    assert all(r.source_file.endswith("handmade.csv") for r in quarantined)


def test_reingest_same_date_gives_identical_rows(spark, make_config, tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text("\n".join([HEADER, *GOOD[:30], GOOD[3], "x,y"]) + "\n")
    config = make_config()
    lake = Lake(spark, config.lake.root)
    first = run_ingest(spark, config, DATE, str(path))
    rows1 = {t: sorted(lake.read(t, f"dt={DATE}").collect()) for t in
             ("clean/transactions", "quarantine/transactions")}
    second = run_ingest(spark, config, DATE, str(path))
    rows2 = {t: sorted(lake.read(t, f"dt={DATE}").collect()) for t in rows1}
    assert first == second
    assert rows1 == rows2
    assert (first["rows_clean"], first["rows_quarantined"]) == (30, 2)
    manifest = json.loads(lake.read_text(lake.manifest_url(DATE)))
    stage = manifest["stages"]["ingest"]
    assert stage["status"] == "ok" and stage["counts"]["rows_read"] == 32
    assert set(stage) >= {"start", "end", "seconds", "counts"}


def test_json_and_ratings_and_images(spark, make_config, tmp_path):
    config = make_config()
    lake = Lake(spark, config.lake.root)
    tx = tmp_path / "tx.json"
    tx.write_text('{"invoice_id": "J1", "customer_id": "C1", "product_id": "P1", "quantity": 2, '
                  '"unit_price": 1.5, "invoice_ts": "2026-03-01 08:00:00"}\n{"invoice_id": "J2", oops\n')
    counts = run_ingest(spark, config, DATE, str(tx), fmt="json")
    assert (counts["rows_read"], counts["rows_clean"]) == (2, 1)
    assert counts["quarantined_by_reason"] == {"malformed_record": 1}

    ratings = tmp_path / "ratings.csv"
    ratings.write_text("user_id,item_id,rating,rated_ts\nu1,i1,4,881250949\nu1,i1,5,881250999\n"
                       "u2,i1,abc,881250949\nu2,i2,3.5,1997-12-04 15:55:49\n")
    counts = run_ingest(spark, config, DATE, str(ratings), entity="ratings")
    assert counts["quarantined_by_reason"] == {"bad_rating": 1, "superseded_rating": 1}
    got = lake.read("clean/ratings", f"dt={DATE}").select("user_id", "item_id", "rating", "rated_ts")
    assertDataFrameEqual(got, spark.createDataFrame(
        [("u1", "i1", 5.0, _ts("1997-12-04 15:56:39")), ("u2", "i2", 3.5, _ts("1997-12-04 15:55:49"))],
        got.schema))

    import pyarrow as pa
    import pyarrow.parquet as pq
    images = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image_id": ["a", "b", "c", "a"], "label": [1, None, 3, 1],
                             "pixels": [bytes(784), bytes(10), bytes(784), bytes([1]) * 784],
                             "split": ["train", "test", "valid", "train"]}), images)
    counts = run_ingest(spark, config, DATE, str(images), entity="images")
    assert counts["quarantined_by_reason"] == {"bad_pixels": 1, "bad_split": 1, "duplicate_image_id": 1}
    clean = lake.read("clean/images", f"dt={DATE}").collect()
    assert [(r.image_id, r.label, bytes(r.pixels)) for r in clean] == [("a", 1, bytes(784))]


def test_clear_errors_name_the_file(spark, make_config, tmp_path):
    config = make_config()
    with pytest.raises(IngestError, match="input not found: .*nothing.csv"):
        run_ingest(spark, config, DATE, str(tmp_path / "nothing.csv"))
    bad = tmp_path / "bad_header.csv"
    bad.write_text("InvoiceNo,customer_id,product_id,quantity,unit_price,invoice_ts\nI1,C1,P1,1,1,2026-01-01\n")
    with pytest.raises(IngestError, match=r"bad_header.csv: wrong header for transactions: "
                                          r"missing column\(s\) \['invoice_id'\]; unexpected column"):
        run_ingest(spark, config, DATE, str(bad))
    with pytest.raises(IngestError, match="unknown input format 'xml' for .*bad_header.csv"):
        run_ingest(spark, config, DATE, str(bad), fmt="xml")
    # the same file is fine once the column is mapped, and country may be absent
    mapped = make_config("ingest.column_map.InvoiceNo=invoice_id")
    counts = run_ingest(spark, mapped, DATE, str(bad))
    assert (counts["rows_read"], counts["rows_clean"]) == (1, 1)


def test_empty_and_header_only_files(spark, make_config, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_empty.csv").write_text("")
    (folder / "b_header_only.csv").write_text(HEADER + "\n")
    (folder / "c_data.csv").write_text(HEADER + "\n" + GOOD[0] + "\n")
    counts = run_ingest(spark, make_config(), DATE, str(folder))
    assert (counts["rows_read"], counts["rows_clean"], counts["rows_quarantined"]) == (1, 1, 0)


# ---------------------------------------------------------------- RFC 4180 records

def _tables(spark, config):
    lake = Lake(spark, config.lake.root)
    clean = lake.read("clean/transactions", f"dt={DATE}").drop("source_file")
    quarantine = lake.read("quarantine/transactions", f"dt={DATE}").select("raw_record",
                                                                          "quarantine_reason")
    return clean, quarantine


def test_rfc4180_records_whole_tables(spark, make_config, tmp_path):
    """A BOM, CRLF line ends, quoted line breaks (one record each, however many lines), doubled
    quotes, delimiters in quotes, an empty price in a file that has the price column, an
    ambiguous date, and an unbalanced quote that must not swallow the lines after it."""
    body = [
        'R1,C1,P1,2,3.50,2026-01-02 10:00:00,"Line\r\nBreak Land"',
        'R2,C1,"P,2",1,1.25,2026-01-02 10:00:00,"say ""hi"""',
        'R3,C2,P1,1,"2.00",2026-01-03 10:00:00,"three\r\n\r\nlines, one record"',
        'R4,C2,P1,1,,2026-01-03 10:00:00,UK',
        'R5,C2,P1,1,2.00,01/02/2026 10:00,UK',
        'R6,"C2,P1,1,2.00,2026-01-03 10:00:00,UK',
        'R7,C3,P1,1,2.00,2026-01-04 10:00:00,',
        'R8,C3,P2,1,2.00,2026-01-04 10:00:00,"""quoted"" start"',
    ]
    path = tmp_path / "rfc.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join([HEADER, *body]) + "\r\n").encode())
    config = make_config("ingest.max_record_lines=5")
    counts = run_ingest(spark, config, DATE, str(path))
    assert (counts["rows_read"], counts["rows_clean"], counts["rows_quarantined"]) == (8, 5, 3)
    clean, quarantine = _tables(spark, config)
    t = _ts("2026-01-02 10:00:00")
    expected = spark.createDataFrame([
        ("R1", "C1", "P1", 2, 3.5, t, "Line\nBreak Land", False),
        ("R2", "C1", "P,2", 1, 1.25, t, 'say "hi"', False),
        ("R3", "C2", "P1", 1, 2.0, _ts("2026-01-03 10:00:00"), "three\n\nlines, one record", False),
        ("R7", "C3", "P1", 1, 2.0, _ts("2026-01-04 10:00:00"), None, False),
        ("R8", "C3", "P2", 1, 2.0, _ts("2026-01-04 10:00:00"), '"quoted" start', False),
    ], clean.schema)
    assertDataFrameEqual(clean, expected)
    assertDataFrameEqual(quarantine, spark.createDataFrame([
        (body[3], "missing_unit_price"), (body[4], "bad_timestamp"), (body[5], "unbalanced_quote"),
    ], quarantine.schema))

    # the day-first source names its format, and the same line is 1 February
    conf = tmp_path / "dayfirst.yaml"
    conf.write_text('ingest:\n  timestamp_formats: ["d/M/yyyy H:mm"]\n')
    dayfirst = make_config(path=str(conf))
    (tmp_path / "d.csv").write_text(HEADER + "\n" + body[4] + "\n")
    run_ingest(spark, dayfirst, DATE, str(tmp_path / "d.csv"))
    clean, _ = _tables(spark, dayfirst)
    assert [r.invoice_ts for r in clean.collect()] == [_ts("2026-02-01 10:00:00")]
    conf.write_text('ingest:\n  timestamp_formats: ["d/M/yyyy H:mm", "M/d/yyyy H:mm"]\n')
    both = make_config(path=str(conf))
    with pytest.raises(IngestError, match="day and month swapped"):
        run_ingest(spark, both, DATE, str(tmp_path / "d.csv"))


@pytest.mark.parametrize("seed", [3, 4])
def test_records_match_python_csv_across_splits(spark, make_config, tmp_path, seed):
    """Random fields with line breaks, quotes and delimiters, written by Python's csv module, and
    read with splits of 1 KB (so that records cross split boundaries): the clean table equals
    what Python's csv reader reads, and every record is counted once."""
    import csv
    import io
    import random
    rng = random.Random(seed)
    alphabet = ["a", "b", " ", ",", '"', "\n", "é", "x"]
    rows = []
    for i in range(300):
        country = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        product = "".join(rng.choice(alphabet[:5]) for _ in range(rng.randrange(1, 6))).strip() or "p"
        rows.append([f"I{i}", f"C{i % 17}", product, str(1 + i % 5), "1.50",
                     "2026-01-02 10:00:00", country])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER.split(","))
    writer.writerows(rows)
    text = buffer.getvalue()
    (tmp_path / "rand.csv").write_text(text, encoding="utf-8")
    config = make_config()
    spark.conf.set("spark.sql.files.maxPartitionBytes", "1024")
    try:
        counts = run_ingest(spark, config, DATE, str(tmp_path / "rand.csv"))
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    records = reference_records(text.split("\n")[:-1], config.ingest.max_record_lines, 7)
    assert counts["rows_read"] == len(records) == 300
    clean, quarantine = _tables(spark, config)
    assert quarantine.count() == 0
    expected = [(r[0], r[1], r[2].strip(" "), int(r[3]), 1.5, _ts(r[5]), r[6].strip(" ") or None, False)
                for r in list(csv.reader(io.StringIO(text)))[1:]]
    assertDataFrameEqual(clean, spark.createDataFrame(expected, clean.schema))


def test_spark_csv_parser_corrupt_record_behaviour(spark):
    """Pins what this Spark's from_csv does (its documentation and code disagree): too few and too
    many fields fill the corrupt-record column; an unbalanced quote reads to the end of the line;
    an empty line is not corrupt; a bad byte is no parse error (ingest checks UTF-8 itself)."""
    from pyspark.sql import functions as F
    options = {"sep": ",", "quote": '"', "escape": '"', "mode": "PERMISSIVE",
               "columnNameOfCorruptRecord": "_corrupt"}
    cases = ["a,b,c", "a,b", "a,b,c,d", 'a,"b,c', 'a,"b,c",d', "", 'a,"b""",c',
             "a,\udcff,c"]
    frame = spark.createDataFrame([(c,) for c in cases[:-1]], "v string").union(
        spark.createDataFrame([(bytearray(b"a,\xff,c"),)], "v binary")
        .select(F.col("v").cast("string").alias("v")))
    got = frame.select("v", F.from_csv("v", "x string, y string, z string, _corrupt string",
                                        options).alias("r")).select("v", "r.*")
    expected = [("a,b,c", "a", "b", "c", None), ("a,b", "a", "b", None, "a,b"),
                ("a,b,c,d", "a", "b", "c", "a,b,c,d"), ('a,"b,c', "a", "b,c", None, 'a,"b,c'),
                ('a,"b,c",d', "a", "b,c", "d", None), ("", None, None, None, None),
                ('a,"b""",c', "a", 'b"', "c", None)]
    rows = got.collect()
    assert [tuple(r) for r in rows[:-1]] == expected
    bad = rows[-1]
    assert (bad.x, bad.z, bad._corrupt) == ("a", "c", None) and bad.y != "\xff"


def test_out_of_range_ratings_and_labels_are_quarantined(spark, make_config, tmp_path):
    """A rating outside ingest.rating_min..rating_max and an image label below 0 or not below
    images.classes are quarantined with their reason; an image without a label stays clean (it
    is for clustering and scoring, not for the CNN's loss)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    config = make_config("images.classes=3")
    ratings = tmp_path / "r.csv"
    ratings.write_text("user_id,item_id,rating,rated_ts\nu1,i1,0,881250949\nu1,i2,6,881250949\n"
                       "u1,i3,0.5,881250949\nu1,i4,5,881250949\n")
    counts = run_ingest(spark, config, DATE, str(ratings), entity="ratings")
    assert counts["quarantined_by_reason"] == {"rating_out_of_range": 2}
    lake = Lake(spark, config.lake.root)
    assert sorted(r.item_id for r in lake.read("clean/ratings", f"dt={DATE}").collect()) == ["i3", "i4"]
    images = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image_id": ["a", "b", "c", "d"], "label": [0, -2, 3, None],
                             "pixels": [bytes(784)] * 4, "split": ["train"] * 4}), images)
    counts = run_ingest(spark, config, DATE, str(images), entity="images")
    assert counts["quarantined_by_reason"] == {"label_out_of_range": 2}
    clean = lake.read("clean/images", f"dt={DATE}").collect()
    assert sorted((r.image_id, r.label) for r in clean) == [("a", 0), ("d", None)]


def test_reviews_whole_tables(spark, make_config, tmp_path):
    """Reviews (CSV): a quoted line break and a doubled quote stay inside one text, Chinese text
    passes as written, a text longer than ingest.max_field_chars is held only to text.max_chars,
    and each broken review is quarantined with its first reason in the documented order."""
    config = make_config("ingest.max_field_chars=20", "text.max_chars=60")
    long_ok = "fine " * 8  # 40 characters: over max_field_chars, within text.max_chars
    path = tmp_path / "reviews.csv"
    path.write_text(
        "review_id,product_id,rating,text,review_ts,split\n"
        'r1,P1,5,"Great tea.\nWould buy ""again"", twice.",2026-01-02 10:00:00,train\n'
        "r2,P1,1,这个茶叶太苦了，不推荐,,test\n"
        f"r3,P2,4.5,{long_ok},2026-01-03,\n"
        ",P2,3,no id,,\n"                                  # missing_review_id
        "r5,,3,no product,,\n"                             # missing_product_id
        'r6,P2,3,"   ",,\n'                                # empty_text
        f"r7,P2,3,{'x' * 61},,\n"                          # oversized_text
        "r8,P2,five,text,,\n"                              # bad_rating
        "r9,P2,0,text,,\n"                                 # rating_out_of_range
        "r10,P2,2,text,yesterday,\n"                       # bad_timestamp
        "r11,P2,2,text,,valid\n"                           # bad_split
        "r2,P3,4,same id again,,\n"                        # duplicate_review_id
        f"r13,{'P' * 21},2,text,,\n")                      # oversized_field (not the text)
    counts = run_ingest(spark, config, DATE, str(path), entity="reviews")
    assert counts["rows_read"] == 13 and counts["rows_clean"] == 3
    assert counts["quarantined_by_reason"] == {
        "missing_review_id": 1, "missing_product_id": 1, "empty_text": 1, "oversized_text": 1,
        "bad_rating": 1, "rating_out_of_range": 1, "bad_timestamp": 1, "bad_split": 1,
        "duplicate_review_id": 1, "oversized_field": 1}
    lake = Lake(spark, config.lake.root)
    got = lake.read("clean/reviews", f"dt={DATE}").drop("source_file")
    assertDataFrameEqual(got, spark.createDataFrame([
        ("r1", "P1", None, 5.0, 'Great tea.\nWould buy "again", twice.', _ts("2026-01-02 10:00:00"),
         "train"),
        ("r2", "P1", None, 1.0, "这个茶叶太苦了，不推荐", None, "test"),
        ("r3", "P2", None, 4.5, long_ok, _ts("2026-01-03 00:00:00"), None)], got.schema))
    quarantined = lake.read("quarantine/reviews", f"dt={DATE}")
    assert quarantined.where(F.col("quarantine_reason") == "duplicate_review_id") \
        .first()["raw_record"] == "r2,P3,4,same id again,,"
