"""Tests of deepmine.data.generate: synthetic transactions with planted truth.

The checks re-derive everything from the written files with their own simple logic (byte-level
parsing, pandas), independent of how the generator counts.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import deepmine.data.generate as gen
from deepmine.data.generate import FASHION_MNIST_CLASSES, generate_transactions

HEADER = b"invoice_id,customer_id,product_id,quantity,unit_price,invoice_ts,country"
KINDS = {
    "bad_timestamp",
    "nonpositive_price",
    "missing_customer_id",
    "bad_quantity",
    "wrong_column_count",
    "duplicate_line",
    "bad_encoding",
}
MAIN_LINES = 30_000
MAIN_DIRTY = 0.10


# ---------------------------------------------------------------------------------------------
# helpers


def _read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    rows = data[:-1].split(b"\n")
    assert rows[0] == HEADER
    return rows[1:]


def _defects(raw: bytes, clean_seen: set, countries) -> set:
    """Every defect of one data line, found without short cuts."""
    found = set()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        found.add("bad_encoding")
        text = raw.decode("latin-1")
    if raw in clean_seen:
        found.add("duplicate_line")
    fields = text.split(",")
    if len(fields) != 7:
        found.add("wrong_column_count")
        return found
    inv, cust, prod, qty, price, ts, country = fields
    if cust == "":
        found.add("missing_customer_id")
    if not re.fullmatch(r"-?\d+", qty):
        found.add("bad_quantity")
    if not re.fullmatch(r"-?\d+(\.\d+)?", price):
        found.add("unparseable_price")  # never planted
    elif float(price) <= 0:
        found.add("nonpositive_price")
    try:
        dt.datetime.strptime(ts, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        found.add("bad_timestamp")
    if "bad_encoding" not in found and country not in countries:
        found.add("unknown_country")  # never planted
    return found


def _classify(rows: list[bytes], countries=tuple(gen.COUNTRIES)):
    """Independent check of every data line: returns (Counter of defects, clean rows as lists).
    Fails if a line has more than one defect or a defect that is never planted, or if a broken
    line (other than a duplicate) repeats any other line."""
    dirty = collections.Counter()
    clean = []
    clean_seen: set = set()
    all_seen: set = set()
    for raw in rows:
        found = _defects(raw, clean_seen, countries)
        assert len(found) <= 1, (raw, found)
        if found:
            (kind,) = found
            assert kind in KINDS, (raw, kind)
            if kind != "duplicate_line":
                assert raw not in all_seen, raw
            dirty[kind] += 1
        else:
            assert raw not in all_seen, raw
            clean_seen.add(raw)
            clean.append(raw.decode().split(","))
        all_seen.add(raw)
    return dirty, clean


def _clean_frame(clean_rows) -> pd.DataFrame:
    df = pd.DataFrame(clean_rows, columns=HEADER.decode().split(","))
    df["unit_price_text"] = df["unit_price"]
    df["quantity"] = df["quantity"].astype(int)
    df["unit_price"] = df["unit_price"].astype(float)
    df["invoice_ts"] = pd.to_datetime(df["invoice_ts"], format="%Y-%m-%d %H:%M:%S")
    return df


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen_main")
    truth = generate_transactions(out, MAIN_LINES, seed=11, dirty_rate=MAIN_DIRTY)
    rows = _read_lines(out / "transactions.csv")
    dirty, clean = _classify(rows)
    return {"out": out, "truth": truth, "rows": rows, "dirty": dirty, "df": _clean_frame(clean)}


# ---------------------------------------------------------------------------------------------
# format


def test_files_header_and_exact_line_count(main_run):
    out, truth = main_run["out"], main_run["truth"]
    assert len(main_run["rows"]) == MAIN_LINES
    assert truth["counts"]["lines"] == MAIN_LINES
    assert json.loads((out / "truth.json").read_text()) == truth
    assert truth["as_of"] == "2026-11-23" and truth["seed"] == 11
    assert set(truth["dirty"]) == KINDS

    products = pd.read_csv(out / "products.csv", dtype={"product_id": str})
    assert list(products.columns) == ["product_id", "category_id", "category", "list_price"]
    assert len(products) == truth["counts"]["products"]
    assert products["product_id"].str.fullmatch(r"P\d{5,}").all()
    assert products["product_id"].is_unique
    names = products["category_id"].map(FASHION_MNIST_CLASSES.__getitem__)
    assert (products["category"] == names).all()
    assert set(products["category_id"]) == set(range(10))
    assert (products["list_price"] > 0).all()

    cust = pd.read_csv(out / "customers_truth.csv")
    taste_cols = [f"taste_category_{i}" for i in range(10)]
    assert list(cust.columns) == ["customer_id", "group"] + taste_cols + ["purchase_rate_per_day"]
    taste = cust[taste_cols].to_numpy()
    assert np.allclose(taste.sum(axis=1), 1.0, atol=1e-4) and (taste > 0).all()
    # active groups go on buying at a positive rate, faster the more often they bought; the
    # groups that stopped have none
    active = {g["name"]: g["active"] for g in truth["groups"]}
    rate = cust.groupby("group")["purchase_rate_per_day"]
    assert all((rate.min()[g] > 0) == active[g] and (rate.max()[g] > 0) == active[g] for g in active)
    assert rate.mean()["champions"] > rate.mean()["loyal"]
    sizes = cust["group"].value_counts().to_dict()
    assert sizes == {g["name"]: g["size"] for g in truth["groups"]}
    assert len(cust) == truth["counts"]["customers"]


def test_fashion_mnist_classes():
    assert FASHION_MNIST_CLASSES == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]  # fmt: skip


def test_clean_lines_follow_the_contract(main_run):
    df, truth = main_run["df"], main_run["truth"]
    counts = truth["counts"]
    assert len(df) == counts["clean_lines"] == MAIN_LINES - counts["dirty_lines"]
    assert df["invoice_id"].str.fullmatch(r"[IC]\d{7,}").all()
    assert df["customer_id"].str.fullmatch(r"C\d{6,}").all()
    assert df["product_id"].str.fullmatch(r"P\d{5,}").all()
    start, as_of = pd.Timestamp(truth["start_date"]), pd.Timestamp(truth["as_of"])
    assert df["invoice_ts"].min() >= start and df["invoice_ts"].max() < as_of
    assert (df["unit_price"] > 0).all()
    assert df["country"].isin(truth["countries"]).all()
    assert not df.duplicated(["invoice_id", "product_id"]).any()
    per_inv = df.groupby("invoice_id").agg(
        c=("customer_id", "nunique"), t=("invoice_ts", "nunique")
    )
    assert (per_inv["c"] == 1).all() and (per_inv["t"] == 1).all()
    assert df["unit_price_text"].str.fullmatch(r"\d+\.\d{2}").all()

    # returns: negative quantity, own C invoice, of an earlier purchase by the same customer
    is_ret = df["invoice_id"].str.startswith("C")
    assert ((df["quantity"] < 0) == is_ret).all()
    rets, buys = df[is_ret], df[~is_ret]
    assert len(rets) == counts["returns"] > 0
    assert 0.003 < counts["returns"] / MAIN_LINES < 0.03
    m = rets.merge(buys, on=["customer_id", "product_id"], suffixes=("_r", "_b"))
    m = m[(m["invoice_ts_b"] < m["invoice_ts_r"]) & (m["unit_price_b"] == m["unit_price_r"])]
    m = m[-m["quantity_r"] <= m["quantity_b"]]
    assert m["invoice_id_r"].nunique() == len(rets)
    # several lines per basket
    sizes = buys.groupby("invoice_id").size()
    assert sizes.mean() > 2.5 and sizes.max() > 5


# ---------------------------------------------------------------------------------------------
# determinism


def test_deterministic(tmp_path):
    kw = dict(lines=6000, seed=5, dirty_rate=0.2, days=90, start_date="2026-01-01")
    a = generate_transactions(tmp_path / "a", **kw)
    b = generate_transactions(tmp_path / "b", **kw)
    assert a == b
    files = ["transactions.csv", "products.csv", "customers_truth.csv", "truth.json"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # another process with another hash seed gives the same bytes
    code = (
        "import sys; from deepmine.data.generate import generate_transactions as g; "
        "g(sys.argv[1], lines=6000, seed=5, dirty_rate=0.2, days=90, start_date='2026-01-01')"
    )
    env = _child_env(PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], check=True, env=env)
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name
    # another seed gives other data
    generate_transactions(tmp_path / "d", **{**kw, "seed": 6})
    for name in ("transactions.csv", "customers_truth.csv"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "d" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------
# dirty lines


def test_dirty_counts_match_an_independent_parse(main_run):
    truth, found = main_run["truth"], main_run["dirty"]
    assert {k: found.get(k, 0) for k in KINDS} == truth["dirty"]
    assert sum(truth["dirty"].values()) == truth["counts"]["dirty_lines"]
    assert truth["counts"]["dirty_lines"] == round(MAIN_DIRTY * MAIN_LINES)
    assert all(v > 0 for v in truth["dirty"].values())


def test_no_dirty_lines_by_default(tmp_path):
    truth = generate_transactions(tmp_path, 5000, seed=2)
    found, clean = _classify(_read_lines(tmp_path / "transactions.csv"))
    assert sum(found.values()) == 0 and len(clean) == 5000
    assert truth["dirty"] == {k: 0 for k in KINDS}


# ---------------------------------------------------------------------------------------------
# bundles


def _baskets(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["invoice_id"].str.startswith("I")][["invoice_id", "product_id"]]


def test_realized_bundle_stats_match_the_clean_lines(main_run):
    truth = main_run["truth"]
    baskets = _baskets(main_run["df"])
    n_inv = baskets["invoice_id"].nunique()
    assert n_inv == truth["counts"]["clean_purchase_invoices"]
    sets = baskets.groupby("invoice_id")["product_id"].agg(frozenset)
    assert 4 <= len(truth["bundles"]) <= 6
    for b in truth["bundles"]:
        items = set(b["items"])
        assert 2 <= len(items) <= 3 and b["trigger"] in items
        n_trig = int(sets.map(lambda s: b["trigger"] in s).sum())
        n_full = int(sets.map(items.issubset).sum())
        real = b["realized"]
        assert real["invoices_with_trigger"] == n_trig
        assert real["invoices_with_bundle"] == n_full
        assert real["support"] == n_full / n_inv
        assert real["confidence"] == n_full / n_trig
        assert real["trigger_share"] == n_trig / n_inv
        planted = b["planted"]
        assert 0.6 <= planted["confidence"] <= 0.9
        assert abs(real["support"] - planted["support"]) < 0.015
        assert abs(real["confidence"] - planted["confidence"]) < 0.1
        assert abs(real["trigger_share"] - planted["trigger_share"]) < 0.015


def test_background_pairs_stay_far_below_the_bundles(main_run):
    truth = main_run["truth"]
    baskets = _baskets(main_run["df"])
    n_inv = baskets["invoice_id"].nunique()
    pairs = baskets.merge(baskets, on="invoice_id")
    pairs = pairs[pairs["product_id_x"] < pairs["product_id_y"]]
    counts = pairs.groupby(["product_id_x", "product_id_y"]).size()
    bundle_of = {p: b["id"] for b in truth["bundles"] for p in b["items"]}
    same_bundle = [
        bundle_of.get(a) is not None and bundle_of.get(a) == bundle_of.get(c)
        for a, c in counts.index
    ]
    background = counts[~np.array(same_bundle)]
    top = background.max()
    assert truth["background"]["max_pair_count"] == top
    assert truth["background"]["max_pair_support"] == top / n_inv
    min_bundle = min(b["realized"]["support"] for b in truth["bundles"])
    assert top / n_inv < 0.3 * min_bundle


# ---------------------------------------------------------------------------------------------
# customer groups


def test_planted_groups_are_recovered_by_kmeans_on_rfm(main_run):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    df, truth, out = main_run["df"], main_run["truth"], main_run["out"]
    as_of = pd.Timestamp(truth["as_of"])
    df = df.assign(value=df["quantity"] * df["unit_price"])
    rfm = df.groupby("customer_id").agg(last=("invoice_ts", "max"), monetary=("value", "sum"))
    rfm["frequency"] = (
        df[df["invoice_id"].str.startswith("I")].groupby("customer_id")["invoice_id"].nunique()
    )
    rfm = rfm.dropna()
    rfm["recency"] = (as_of - rfm["last"]).dt.total_seconds() / 86400
    features = np.log1p(rfm[["recency", "frequency", "monetary"]].clip(lower=0))
    x = StandardScaler().fit_transform(features)
    labels = KMeans(n_clusters=len(truth["groups"]), n_init=4, random_state=0).fit_predict(x)
    groups = pd.read_csv(out / "customers_truth.csv", index_col="customer_id")["group"]
    ari = adjusted_rand_score(groups.loc[rfm.index], labels)
    assert ari > 0.7, ari

    # the groups' behaviour is as described
    means = rfm.join(groups).groupby("group")[["recency", "frequency", "monetary"]].median()
    assert means.loc["champions", "recency"] < means.loc["loyal", "recency"]
    assert means.loc["loyal", "recency"] < means.loc["at_risk", "recency"]
    assert means.loc["champions", "frequency"] > 2 * means.loc["loyal", "frequency"]
    assert means.loc["at_risk", "frequency"] >= 3 and means.loc["one_off", "frequency"] == 1
    assert means.loc["champions", "monetary"] == means["monetary"].max()


# ---------------------------------------------------------------------------------------------
# planted demand


def test_quantities_follow_the_planted_demand(main_run):
    """Each category's purchase quantities follow truth["demand"]: summed per category and
    weekday, and per category and quarter of the period, the realized quantity is within 10% of
    the planted expectation max(quantity_g * f_k(t), 1) of the same lines, and the planted
    expectation itself varies far more than that (so a file without it would fail)."""
    df, truth, out = main_run["df"], main_run["truth"], main_run["out"]
    demand = truth["demand"]
    assert len(demand["categories"]) == 10 and demand["start_date"] == truth["start_date"]
    for c in demand["categories"]:
        assert len(c["weekday_profile"]) == 7 and abs(np.mean(c["weekday_profile"]) - 1) < 1e-3
        # planted_demand_factor against the documented formula, its calendar computed here by
        # pandas: with growth and the weekday (pandas' Monday = 0) divided out, the yearly cycle
        # peaks on yearly_peak_day at 1 + amplitude and bottoms half a year later at 1 - amplitude
        days = pd.date_range("2026-01-01", "2026-12-31", freq="D")
        since = (days - pd.Timestamp(demand["start_date"])).days.to_numpy()
        cycle = (gen.planted_demand_factor(demand, c["category_id"], days.to_numpy())
                 / np.exp(c["growth_per_year"] * since / 365.25)
                 / np.asarray(c["weekday_profile"])[days.weekday])
        assert abs(int(days.dayofyear[np.argmax(cycle)]) - c["yearly_peak_day"]) <= 1
        assert cycle.max() == pytest.approx(1 + c["yearly_amplitude"], rel=1e-3)
        assert cycle.min() == pytest.approx(1 - c["yearly_amplitude"], rel=1e-3)
    # each category its own cycle, not one draw shared
    assert len({c["yearly_peak_day"] for c in demand["categories"]}) >= 8
    buys = df[df["quantity"] > 0]
    products = pd.read_csv(out / "products.csv", dtype={"product_id": str})
    groups = pd.read_csv(out / "customers_truth.csv", index_col="customer_id")["group"]
    qmean = {g["name"]: g["params"]["quantity"] for g in truth["groups"]}
    buys = buys.assign(
        category=buys["product_id"].map(products.set_index("product_id")["category_id"]),
        qmean=buys["customer_id"].map(groups).map(qmean),
        day=buys["invoice_ts"].dt.floor("D"),
    )
    factor = np.empty(len(buys))
    for k, idx in buys.groupby("category").indices.items():
        factor[idx] = gen.planted_demand_factor(demand, int(k), buys["day"].iloc[idx].to_numpy())
    buys = buys.assign(
        expected=np.maximum(buys["qmean"] * factor, 1.0),
        weekday=buys["day"].dt.weekday,
        quarter=((buys["day"] - pd.Timestamp(truth["start_date"])).dt.days * 4 // truth["days"]),
    )
    for by in ("weekday", "quarter"):
        sums = buys.groupby(["category", by])[["quantity", "expected"]].sum()
        ratio = sums["quantity"] / sums["expected"]
        assert ratio.between(0.9, 1.1).all(), ratio.describe()
        per_line = buys.groupby(["category", by])["expected"].mean()
        spread = per_line / per_line.groupby(level=0).transform("mean")
        assert spread.max() > 1.25 and spread.min() < 0.8, spread.describe()
    # the weekday profile as planted (Monday first): the realized quantity per line divided by
    # the group's mean, per category and weekday, correlates with it
    rel = (buys["quantity"] / buys["qmean"]).groupby([buys["category"], buys["weekday"]]).mean()
    for c in demand["categories"]:
        got = rel.loc[c["category_id"]].to_numpy()
        assert np.corrcoef(got, c["weekday_profile"])[0, 1] > 0.8, (c["category"], got)


def test_planted_demand_moves_only_quantities(tmp_path):
    """The demand is carried by quantities alone: a file generated with every multiplier at 1
    has the same lines but for the quantity column (invoice times, customers, products and
    prices, so the groups' recency and frequency, bundles and returns, are untouched)."""
    planted = generate_transactions(tmp_path / "planted", 3000, seed=5, dirty_rate=0.0)
    flat = {"start_date": planted["start_date"], "categories": [
        {**c, "growth_per_year": 0.0, "yearly_amplitude": 0.0, "weekday_profile": [1.0] * 7}
        for c in planted["demand"]["categories"]]}
    original = gen._draw_demand
    gen._draw_demand = lambda seed: flat["categories"]
    try:
        generate_transactions(tmp_path / "flat", 3000, seed=5, dirty_rate=0.0)
    finally:
        gen._draw_demand = original
    a = pd.read_csv(tmp_path / "planted" / "transactions.csv", dtype=str)
    b = pd.read_csv(tmp_path / "flat" / "transactions.csv", dtype=str)
    rest = [c for c in a.columns if c != "quantity"]
    assert a[rest].equals(b[rest])
    assert (a["quantity"] != b["quantity"]).mean() > 0.2
    for name in ("products.csv", "customers_truth.csv"):
        assert (tmp_path / "planted" / name).read_bytes() == (tmp_path / "flat" / name).read_bytes()


# ---------------------------------------------------------------------------------------------
# arguments and edge cases


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lines": 0}, "lines"),
        ({"lines": -5}, "lines"),
        ({"dirty_rate": 0.51}, "dirty_rate"),
        ({"dirty_rate": -0.1}, "dirty_rate"),
        ({"days": 0}, "days"),
        ({"start_date": "2025-13-01"}, "start_date"),
        ({"start_date": "2025/11/23"}, "start_date"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"customers": -1}, "customers"),
        ({"products": 10}, "products"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, name):
    args = {"lines": 100, "seed": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        generate_transactions(tmp_path, **args)
    assert not (tmp_path / "transactions.csv").exists()


@pytest.mark.parametrize("lines", [1, 2, 17, 333])
def test_tiny_outputs_are_exact(tmp_path, lines):
    truth = generate_transactions(tmp_path, lines, seed=3, dirty_rate=0.5, days=3)
    rows = _read_lines(tmp_path / "transactions.csv")
    assert len(rows) == lines == truth["counts"]["lines"]
    found, clean = _classify(rows)
    assert {k: found.get(k, 0) for k in KINDS} == truth["dirty"]
    assert len(clean) == truth["counts"]["clean_lines"]
    if clean:
        df = _clean_frame(clean)
        assert df["invoice_ts"].min() >= pd.Timestamp("2025-11-23")
        assert df["invoice_ts"].max() < pd.Timestamp("2025-11-26")


def test_explicit_customers_and_products(tmp_path):
    truth = generate_transactions(tmp_path, 20_000, seed=4, customers=300, products=60)
    assert truth["counts"]["lines"] == 20_000
    assert truth["counts"]["customers"] == 300
    assert truth["counts"]["products"] == 60
    df = _clean_frame(_classify(_read_lines(tmp_path / "transactions.csv"))[1])
    assert df["customer_id"].nunique() == 300
    assert df["product_id"].nunique() <= 60


def test_progress_goes_to_stderr(tmp_path, capsys):
    generate_transactions(tmp_path, 1000, seed=1, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "1,000/1,000" in captured.err
    generate_transactions(tmp_path, 1000, seed=1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# ---------------------------------------------------------------------------------------------
# memory


def _child_env(**extra) -> dict:
    env = dict(os.environ)
    lib = str(Path(gen.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = lib + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _peak_rss_kb(out: Path, lines: int) -> int:
    code = (
        "import resource, sys\n"
        "from deepmine.data.generate import generate_transactions\n"
        "generate_transactions(sys.argv[1], int(sys.argv[2]), seed=1, dirty_rate=0.05)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(out), str(lines)],
        check=True,
        capture_output=True,
        text=True,
        env=_child_env(),
    )
    return int(res.stdout.strip().splitlines()[-1])


def test_memory_is_bounded_as_lines_grow(tmp_path):
    small = _peak_rss_kb(tmp_path / "small", 200_000)
    large = _peak_rss_kb(tmp_path / "large", 800_000)
    assert large < 2 * small, (small, large)
    assert len(_read_lines(tmp_path / "large" / "transactions.csv")) == 800_000
