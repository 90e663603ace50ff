"""Association rules (deepmine.mining.rules) against hand-computed values, mlxtend 0.23.4 and planted
truth.

mlxtend gets the same baskets as a one-hot DataFrame. Only items that can be frequent (in at least
ceil(min_support * baskets) baskets) get a column: mlxtend drops the others itself before mining,
so the result is the same, and the one-hot table stays small.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mlxtend.frequent_patterns import association_rules as mlx_rules
from mlxtend.frequent_patterns import fpgrowth as mlx_fpgrowth
from pyspark.testing import assertDataFrameEqual

from deepmine.mining import rules
from deepmine.core.config import ConfigError
from deepmine.core.lake import Lake
from deepmine.mining.rules import RULE_METRICS, RulesInputError, run_rules
from deepmine.core.schemas import CLEAN_TRANSACTIONS

from conftest import sample_or_skip

RUN_DATE = "2026-11-23"
INF = float("inf")


# --------------------------------------------------------------------------- helpers

def basket_frame(spark, baskets: list[list[str]]):
    return spark.createDataFrame([(str(i), sorted(set(b))) for i, b in enumerate(baskets)],
                                 "invoice_id string, items array<string>")


def mlxtend_mine(baskets: list[list[str]], min_support: float, min_confidence: float,
                 max_len: int) -> tuple[dict, pd.DataFrame]:
    """mlxtend fpgrowth + association_rules -> ({itemset: support}, rules keyed by item tuples)."""
    n = len(baskets)
    counts = pd.Series([p for b in baskets for p in set(b)]).value_counts()
    columns = sorted(counts[counts >= math.ceil(min_support * n)].index)
    position = {p: j for j, p in enumerate(columns)}
    onehot = np.zeros((n, len(columns)), dtype=bool)
    for i, basket in enumerate(baskets):
        for p in set(basket):
            if p in position:
                onehot[i, position[p]] = True
    frequent = mlx_fpgrowth(pd.DataFrame(onehot, columns=columns), min_support=min_support,
                            use_colnames=True, max_len=max_len)
    itemsets = {tuple(sorted(s)): sup for s, sup in zip(frequent["itemsets"], frequent["support"])}
    with np.errstate(divide="ignore", invalid="ignore"):
        found = mlx_rules(frequent, num_itemsets=n, metric="confidence",
                          min_threshold=min_confidence)
    found = found.assign(antecedents=found["antecedents"].map(lambda s: tuple(sorted(s))),
                         consequents=found["consequents"].map(lambda s: tuple(sorted(s))))
    return itemsets, found.set_index(["antecedents", "consequents"])[list(RULE_METRICS)]


def keyed(rules_pd: pd.DataFrame) -> pd.DataFrame:
    out = rules_pd.assign(antecedents=rules_pd["antecedents"].map(lambda a: tuple(a)),
                          consequents=rules_pd["consequents"].map(lambda a: tuple(a)))
    return out.set_index(["antecedents", "consequents"])[list(RULE_METRICS)]


def rule(keyed_rules: pd.DataFrame, antecedents: tuple, consequents: tuple) -> pd.Series:
    match = keyed_rules[[key == (antecedents, consequents) for key in keyed_rules.index]]
    assert len(match) == 1, f"no rule {antecedents} -> {consequents}"
    return match.iloc[0]


def assert_rules_match(ours: pd.DataFrame, theirs: pd.DataFrame, tol: float = 1e-9) -> float:
    """Same set of (antecedents, consequents) and every metric within tol (infinities equal);
    returns the largest difference seen."""
    assert not ours.index.duplicated().any()
    assert set(ours.index) == set(theirs.index), (
        f"only ours: {sorted(set(ours.index) - set(theirs.index))[:5]}; "
        f"only mlxtend: {sorted(set(theirs.index) - set(ours.index))[:5]}")
    theirs = theirs.loc[ours.index]
    worst = 0.0
    for metric in RULE_METRICS:
        a, b = ours[metric].to_numpy(float), theirs[metric].to_numpy(float)
        assert np.array_equal(np.isinf(a), np.isinf(b)), metric
        assert not np.isnan(a).any() and not np.isnan(b).any(), metric
        finite = ~np.isinf(a)
        diff = np.abs(a[finite] - b[finite])
        assert np.all(diff <= tol * np.maximum(1.0, np.abs(b[finite]))), (metric, diff.max())
        worst = max(worst, float(diff.max(initial=0.0)))
    return worst


def assert_itemsets_match(ours: pd.DataFrame, theirs: dict) -> None:
    got = {tuple(items): sup for items, sup in zip(ours["items"], ours["support"])}
    assert got.keys() == theirs.keys()
    assert max(abs(got[k] - theirs[k]) for k in got) <= 1e-12


# --------------------------------------------------------------------------- hand example

# a is in every basket: certainty's and Zhang's zero denominators, conviction's infinite case.
HAND_BASKETS = [["a", "b", "c"], ["a", "b"], ["a", "c", "e"], ["a", "b", "c", "d"], ["a", "e"],
                ["a", "b", "d"], ["a", "c", "e"], ["a", "e"]]


def _hand_rule(a: list[str], c: list[str], cA: int, cC: int, cAC: int, n: int = 8) -> tuple:
    sA, sC, sAC = cA / n, cC / n, cAC / n
    conf = cAC / cA
    lev = sAC - sA * sC
    zden = max(sAC * (1 - sA), sA * (sC - sAC))
    return (a, c, sA, sC, sAC, conf, conf / sC, lev,
            INF if conf == 1 else (1 - sC) / (1 - conf), 0.0 if zden == 0 else lev / zden,
            cAC / (cA + cC - cAC), 0.0 if cC == n else (conf - sC) / (1 - sC),
            (cAC / cA + cAC / cC) / 2)


def test_hand_example_whole_tables(spark):
    baskets = basket_frame(spark, HAND_BASKETS)
    # counts: a 8, b 4, c 4, e 4, d 2; ab 4, ac 4, ae 4, bc 2, ce 2, bd 2, abc 2, ace 2, abd 2, ...
    itemsets = rules.frequent_itemsets(baskets, 8, max_len=2, min_support=0.25).persist()
    expected_itemsets = spark.createDataFrame(
        [(["a"], 1.0), (["b"], 0.5), (["c"], 0.5), (["e"], 0.5), (["d"], 0.25),
         (["a", "b"], 0.5), (["a", "c"], 0.5), (["a", "e"], 0.5), (["a", "d"], 0.25),
         (["b", "c"], 0.25), (["c", "e"], 0.25), (["b", "d"], 0.25)],
        "items array<string>, support double")
    assertDataFrameEqual(itemsets.select("items", "support"), expected_itemsets)

    found = rules.association_rules(itemsets, 8, min_confidence=0.5)
    expected = [
        _hand_rule(["a"], ["b"], 8, 4, 4), _hand_rule(["b"], ["a"], 4, 8, 4),
        _hand_rule(["a"], ["c"], 8, 4, 4), _hand_rule(["c"], ["a"], 4, 8, 4),
        _hand_rule(["a"], ["e"], 8, 4, 4), _hand_rule(["e"], ["a"], 4, 8, 4),
        _hand_rule(["d"], ["a"], 2, 8, 2),  # a -> d has confidence 0.25
        _hand_rule(["b"], ["c"], 4, 4, 2), _hand_rule(["c"], ["b"], 4, 4, 2),
        _hand_rule(["c"], ["e"], 4, 4, 2), _hand_rule(["e"], ["c"], 4, 4, 2),
        _hand_rule(["d"], ["b"], 2, 4, 2),  # b -> d has confidence 0.5: kept
        _hand_rule(["b"], ["d"], 4, 2, 2),
    ]
    expected_df = spark.createDataFrame(expected, found.schema)
    assertDataFrameEqual(found, expected_df, rtol=1e-12, atol=1e-12)
    rows = {(tuple(r["antecedents"]), tuple(r["consequents"])): r for r in found.collect()}
    assert rows[("b",), ("a",)]["conviction"] == INF
    assert rows[("a",), ("b",)]["certainty"] == 0.0 and rows[("a",), ("b",)]["zhangs_metric"] == 0.0

    # the same baskets through mlxtend, max_len 3 this time (a cap applied before rules are
    # made), with the minimum support as a count of 2 baskets here and as the fraction 2/8 there
    itemsets3 = rules.frequent_itemsets(baskets, 8, max_len=3, min_count=2).persist()
    ours = keyed(rules.association_rules(itemsets3, 8, 0.0).toPandas())
    theirs_sets, theirs = mlxtend_mine(HAND_BASKETS, 0.25, 0.0, 3)
    assert_itemsets_match(itemsets3.toPandas(), theirs_sets)
    assert_rules_match(ours, theirs)
    assert rule(ours, ("b", "c"), ("a",))["conviction"] == INF
    assert rules.frequent_itemsets(baskets, 8, max_len=3, min_count=9).count() == 0


# --------------------------------------------------------------------------- Instacart

def test_instacart_sample_matches_mlxtend(spark, tmp_path):
    info = sample_or_skip(tmp_path, "instacart")
    lines = pd.read_csv(info["path"], dtype=str)
    # the first 6,000 orders (of 15,183) keep the test fast; the benchmark runs them all
    orders = lines["invoice_id"].drop_duplicates().iloc[:6000]
    lines = lines[lines["invoice_id"].isin(orders)]
    grouped = lines.groupby("invoice_id", sort=True)["product_id"].agg(lambda s: sorted(set(s)))
    baskets_list = grouped.tolist()
    transactions = spark.createDataFrame(
        lines.assign(is_return=False)[["invoice_id", "product_id", "is_return"]])
    baskets = rules.baskets(transactions)
    assertDataFrameEqual(baskets, spark.createDataFrame(
        pd.DataFrame({"invoice_id": grouped.index, "items": baskets_list})))

    min_support, min_confidence, max_len = 0.006, 0.1, 3
    itemsets = rules.frequent_itemsets(baskets, len(baskets_list), max_len, min_support,
                                       num_partitions=2).persist()
    ours_sets = itemsets.toPandas()
    ours = keyed(rules.association_rules(itemsets, len(baskets_list), min_confidence).toPandas())
    theirs_sets, theirs = mlxtend_mine(baskets_list, min_support, min_confidence, max_len)
    assert_itemsets_match(ours_sets, theirs_sets)
    worst = assert_rules_match(ours, theirs)
    sizes = ours_sets["items"].map(len).value_counts().to_dict()
    print(f"instacart: {len(baskets_list)} baskets, itemsets by length {sizes}, "
          f"{len(ours)} rules, largest metric difference from mlxtend {worst:.1e}")
    assert sizes.get(3, 0) > 0 and len(ours) >= 20  # the comparison covers real rules


# --------------------------------------------------------------------------- generated data

def publish_clean(spark, lake: Lake, csv_path, dt: str) -> pd.DataFrame:
    """Put a generated file with no dirty lines into clean/transactions as ingest would (the
    ingest has its own tests; this keeps the test fast). Returns the lines as pandas read them."""
    lines = pd.read_csv(csv_path, dtype={"invoice_id": str, "customer_id": str, "product_id": str,
                                         "country": str})
    lines["invoice_ts"] = pd.to_datetime(lines["invoice_ts"], format="%Y-%m-%d %H:%M:%S")
    lines["is_return"] = lines["quantity"] < 0
    lines["source_file"] = str(csv_path)
    lake.publish(spark.createDataFrame(lines[list(CLEAN_TRANSACTIONS.fieldNames())],
                                       CLEAN_TRANSACTIONS), "clean/transactions", f"dt={dt}")
    return lines


def purchase_baskets(lines: pd.DataFrame, item: str = "product_id") -> list[list[str]]:
    purchases = lines[~lines["is_return"]]
    return purchases.groupby("invoice_id")[item].agg(lambda s: sorted(set(s))).tolist()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from deepmine.data.generate import generate_transactions
    out = tmp_path_factory.mktemp("generated")
    truth = generate_transactions(out, lines=10_000, seed=5)
    return out, truth


def test_generated_stage_matches_mlxtend_and_planted_bundles(spark, make_config, generated):
    out, truth = generated
    config = make_config("rules.min_support=0.02", "rules.min_confidence=0.3", "rules.max_len=3")
    lake = Lake(spark, config.lake.root)
    lines = publish_clean(spark, lake, out / "transactions.csv", RUN_DATE)
    result = run_rules(spark, config, RUN_DATE)

    baskets_list = purchase_baskets(lines)
    assert result["baskets"] == len(baskets_list) == truth["counts"]["clean_purchase_invoices"]
    theirs_sets, theirs = mlxtend_mine(baskets_list, 0.02, 0.3, 3)
    partition = f"run_date={RUN_DATE}"
    assert_itemsets_match(lake.read("mining/itemsets", partition).toPandas(), theirs_sets)
    ours = keyed(lake.read("mining/rules", partition).toPandas())
    worst = assert_rules_match(ours, theirs)
    print(f"generated: {len(baskets_list)} baskets, {len(ours)} rules, "
          f"largest metric difference from mlxtend {worst:.1e}")

    # each planted bundle is a rule trigger -> rest with its realized rates, exactly, and its
    # planted rates within 4 binomial standard errors
    n = result["baskets"]
    for bundle in truth["bundles"]:
        found = rule(ours, (bundle["trigger"],), tuple(sorted(bundle["rest"])))
        realized, planted = bundle["realized"], bundle["planted"]
        with_trigger = realized["invoices_with_trigger"]
        assert found["support"] == pytest.approx(realized["support"], abs=1e-12)
        assert found["confidence"] == pytest.approx(realized["confidence"], abs=1e-12)
        assert found["antecedent support"] == pytest.approx(realized["trigger_share"], abs=1e-12)
        p, q = planted["confidence"], planted["trigger_share"]
        assert abs(found["confidence"] - p) <= 4 * math.sqrt(p * (1 - p) / with_trigger)
        assert abs(found["antecedent support"] - q) <= 4 * math.sqrt(q * (1 - q) / n)
        assert found["lift"] > 5
    # nothing else is that strong: every other rule has a low lift
    bundle_items = {p for b in truth["bundles"] for p in b["items"]}
    others = ours[[not (set(a + c) <= bundle_items) for a, c in ours.index]]
    assert others.empty or others["lift"].max() < 3

    manifest = lake.read_manifest(RUN_DATE)["stages"]["rules"]
    assert manifest["status"] == "ok"
    assert manifest["counts"]["rules"] == len(ours)
    assert manifest["counts"]["itemsets"] == len(theirs_sets)
    infinite = int(np.isinf(ours["conviction"]).sum())
    assert manifest["counts"]["rules_infinite_conviction"] == infinite > 0


def test_category_level_baskets_match_mlxtend(spark, generated):
    out, _ = generated
    lines = pd.read_csv(out / "transactions.csv", dtype=str)
    lines["is_return"] = lines["quantity"].astype(int) < 0
    products = pd.read_csv(out / "products.csv", dtype=str)
    lines["category"] = lines["product_id"].map(dict(zip(products["product_id"],
                                                         products["category"])))
    categories = rules.read_categories(spark, str(out / "products.csv"), "category")
    baskets = rules.baskets(spark.createDataFrame(
        lines[["invoice_id", "product_id", "is_return"]]), categories)
    cat_baskets = purchase_baskets(lines, "category")
    itemsets = rules.frequent_itemsets(baskets, len(cat_baskets), 2, 0.05).persist()
    theirs_sets, theirs = mlxtend_mine(cat_baskets, 0.05, 0.2, 2)
    assert_itemsets_match(itemsets.toPandas(), theirs_sets)
    ours = keyed(rules.association_rules(itemsets, len(cat_baskets), 0.2).toPandas())
    assert_rules_match(ours, theirs)
    assert len(ours) > 10 and "Ankle boot" in {c for a, _ in ours.index for c in a}


def test_no_baskets_yet_publishes_empty_tables(spark, make_config):
    config = make_config()
    lake = Lake(spark, config.lake.root)
    lines = pd.DataFrame({"invoice_id": ["I1"], "customer_id": ["C1"], "product_id": ["P1"],
                          "quantity": [1], "unit_price": [2.0], "country": [None],
                          "invoice_ts": [pd.Timestamp("2026-01-31 10:00:00")], "is_return": [False],
                          "source_file": ["test.csv"]})
    lake.publish(spark.createDataFrame(lines[list(CLEAN_TRANSACTIONS.fieldNames())],
                                       CLEAN_TRANSACTIONS), "clean/transactions", "dt=2026-01-31")
    result = run_rules(spark, config, "2026-01-01")  # before the only input date
    assert result["baskets"] == 0 and result["itemsets"] == 0 and result["rules"] == 0
    assert lake.read("mining/rules", "run_date=2026-01-01").count() == 0


def test_bad_settings_are_named(spark, make_config, tmp_path):
    with pytest.raises(ConfigError, match="rules.min_support"):
        run_rules(spark, make_config("rules.min_support=1.5"), RUN_DATE)
    with pytest.raises(ConfigError, match="rules.max_len"):
        run_rules(spark, make_config("rules.max_len=0"), RUN_DATE)
    with pytest.raises(RulesInputError, match="input.products"):
        rules.read_categories(spark, "", "category")
    products = tmp_path / "products.csv"
    products.write_text("product_id,category\nP1,Bag\nP1,Coat\n")
    with pytest.raises(RulesInputError, match=r"missing column\(s\) \['aisle'\]"):
        rules.read_categories(spark, str(products), "aisle")
    with pytest.raises(RulesInputError, match="more than one 'category'"):
        rules.read_categories(spark, str(products), "category")
