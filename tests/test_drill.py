"""The multi-day drill, small: three consecutive nights on generated purchases that arrive day by
day, with a planted behaviour shift on the last day (the at_risk group comes back), the customer
deep clustering kept in the model registry:

1. the first night trains in full and its version is the champion;
2. a quiet night warm-starts from the champion; a deliberately broken setting (learning rate 10,
   no retries) makes tonight's model fail its gate, so it is not promoted and the champion's
   predictions are published; no drift;
3. the shift is flagged by the drift stage against the first night (the last full training; the
   warm start does not move the reference), which asks for a full retrain; the model trains in
   full and is promoted.

The report of each night shows the decisions; `decision_table` lays them out as one table.
"""
from __future__ import annotations

import json

import pytest

from conftest import skip_all_but


def test_three_nights_warm_start_broken_model_and_shift(spark, make_config, tmp_path):
    from deepmine.core.lake import Lake
    from deepmine.core.metrics import clustering_scores
    from deepmine.data.generate import generate_transactions
    from deepmine.nightly import run_nightly
    from deepmine.ops.drill import (consecutive_nights, daily_inputs, decision_table,
                                    line_day)
    import pandas as pd

    gen = tmp_path / "gen"
    truth = generate_transactions(gen, lines=8000, seed=5, dirty_rate=0.02,
                                  shift_date="2026-11-22")
    shifted = truth["behaviour_shift"]
    groups = {g["name"]: g["size"] for g in truth["groups"]}
    assert (shifted["group"], shifted["customers"]) == ("at_risk", groups["at_risk"])
    nights = consecutive_nights("2026-11-22", 3)
    assert nights == ["2026-11-20", "2026-11-21", "2026-11-22"]
    inputs = daily_inputs(gen, nights, tmp_path / "nights")
    # the nights' lines, one after the other, are the generated file; each later night holds
    # its own day's
    header, *_ = (gen / "transactions.csv").read_bytes().split(b"\n", 1)
    parts = [inputs[n].read_bytes().split(b"\n", 1) for n in nights]
    assert all(h == header for h, _ in parts)
    assert b"".join(body for _, body in parts) == \
        (gen / "transactions.csv").read_bytes().split(b"\n", 1)[1]
    for night, (_, body) in zip(nights[1:], parts[1:]):
        days = {line_day(line, 5) for line in body.splitlines()} - {None}
        assert night in days and max(days) == night, (night, days)

    kept = ("ingest", "rfm", "features", "drift", "train_autoencoder_customers", "report")
    base = [skip_all_but(*kept),
            "input.generate_if_missing=false", f"input.products={gen / 'products.csv'}",
            "rfm.k_max=4", "rfm.n_init=1",
            # about registry decisions, not clustering quality: a first model a point or two
            # under K-means on these few customers still counts as passing
            "train.gate_tolerance=0.05"]
    broken = ["train.lr=10", "train.max_retries=0"]
    for night in nights:
        config = make_config(*base, *(broken if night == nights[1] else []))
        run_nightly(spark, config, night, transactions=str(inputs[night]))

    lake = Lake(spark, config.lake.root)
    # no image model trains: the features stage left the image table out, and a second run of
    # the night finds every stage done
    assert not lake.has_partition("features/images", f"run_date={nights[-1]}")
    again = run_nightly(spark, config, nights[-1], transactions=str(inputs[nights[-1]]))
    assert (again.ran, again.skipped) == ((), kept), again
    manifests = {n: lake.read_manifest(n) for n in nights}
    stage = "train_autoencoder_customers"
    rec = {n: manifests[n]["stages"][stage] for n in nights}
    reg = {n: rec[n]["metrics"]["registry"] for n in nights}
    drift = {n: manifests[n]["stages"]["drift"]["metrics"] for n in nights}
    one, two, three = nights

    # night 1: full, the first champion
    assert (rec[one]["status"], reg[one]["training"], reg[one]["version"],
            reg[one]["promoted"]) == ("ok", "full", "1", True)
    assert drift[one]["drifted"] == [] and "no earlier snapshot" in drift[one]["note"]

    # night 2: quiet, warm start from version 1; broken, so not promoted, the champion's
    # predictions published
    assert drift[two]["drifted"] == [], drift[two]
    assert (reg[two]["training"], reg[two]["parent_version"]) == ("warm_start", "1")
    assert rec[two]["metrics"]["pretrain_epochs_run"] == 0  # no pretraining, no K-means start
    assert rec[two]["status"] == "degraded"
    assert (reg[two]["promoted"], reg[two]["champion"], reg[two]["predictions_from"]) == \
        (False, "1", "champion 1")
    published = lake.read("predictions/autoencoder_customers", f"run_date={two}").toPandas()
    planted = pd.read_csv(gen / "customers_truth.csv", usecols=["customer_id", "group"],
                          dtype=str)
    scored = published.merge(planted, on="customer_id")
    assert len(scored) == len(published) > 0
    # the champion's clustering of tonight's customers, not the broken model's
    assert clustering_scores(scored["group"], scored["cluster"])["cluster_acc"] >= \
        rec[one]["metrics"]["cluster_acc"] - 0.05

    # night 3: the win-back is flagged against night 1 and answered by a full retrain
    assert drift[three]["references"]["features/customer_values"] == one
    assert "mining/rfm:recency_days" in drift[three]["drifted"], drift[three]
    assert stage in drift[three]["full_retrain"]
    assert reg[three]["training"] == "full" and "drift" in reg[three]["training_reason"]
    assert (rec[three]["status"], reg[three]["version"], reg[three]["promoted"]) == \
        ("ok", "3", True)

    # the decisions, as one table and in each night's report
    table = decision_table(manifests)
    assert [(r["night"], r["stage"]) for r in table] == \
        [(n, s) for n in nights for s in ("drift", stage)]
    assert "NOT promoted" in table[3]["decision"] and "warm_start" in table[3]["decision"]
    assert "full retrain asked of" in table[4]["decision"]
    html = (tmp_path / "lake" / "runs" / f"run_date={three}" / "report.html").read_text()
    assert "Models kept fresh" in html and "the drift stage asks for it" in html
    json.dumps(table)  # plain values, for the script's JSON
