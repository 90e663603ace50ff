"""Neural collaborative filtering (deepmine.deep.ncf, deep/ncf_loop.py, deep/models/ncf.py): the
leave-one-out protocol's metrics against hand and plain-loop computations, the Spark split and
sampling on tiny tables, the three networks, and one `train --model ncf` on generated purchases
with planted taste groups (NCF must beat popularity on HR@10)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from deepmine.deep.ncf import (evaluation_lists, full_ranking_recall, index_pairs, leave_one_out,
                               negative_sets, popularity_scorer, protocol_metrics)
from deepmine.deep.ncf_loop import hit_and_ndcg, ranks_of_targets


# --------------------------------------------------------------------------- metrics

def test_protocol_metrics_equal_a_hand_computation():
    # three users, four candidates each; the score of (user, item) is a fixed table
    table = np.array([[0.9, 0.1, 0.5, 0.3, 0.0],
                      [0.2, 0.2, 0.8, 0.2, 0.7],
                      [0.0, 0.4, 0.4, 0.4, 0.1]])
    lists = pd.DataFrame({"user": [0, 1, 2],
                          "items": [[1, 0, 2, 3], [0, 2, 4, 1], [1, 2, 3, 4]],
                          "target": [2, 2, 2]})

    def score(users, items):
        return table[users, items]
    # user 0: target item 2 (0.5) below item 0 (0.9): rank 1 (0-based)
    # user 1: target item 4 (0.7) below item 2 (0.8): rank 1
    # user 2: target item 3 (0.4) ties items 1 and 2, both listed before it: rank 2
    for k, hr, ndcg in [(1, 0.0, 0.0),
                        (2, 2 / 3, (2 / math.log2(3)) / 3),
                        (3, 1.0, (2 / math.log2(3) + 1 / math.log2(4)) / 3)]:
        got = protocol_metrics(score, lists, k)
        assert got["hr"] == pytest.approx(hr) and got["ndcg"] == pytest.approx(ndcg)


def test_ranks_follow_a_plain_sort_with_ties_by_list_position():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(200, 20)).astype(float)  # many ties
    target = rng.integers(0, 20, size=200)
    expected = []
    for row, t in zip(scores, target):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))  # stable: earlier first
        expected.append(order.index(t))
    assert ranks_of_targets(scores, target).tolist() == expected
    hit, gain = hit_and_ndcg(scores, target, 10)
    ranks = np.array(expected)
    assert hit.tolist() == (ranks < 10).astype(float).tolist()
    assert np.allclose(gain, np.where(ranks < 10, 1 / np.log2(ranks + 2), 0.0))


def test_full_ranking_recall_masks_known_items():
    # 6 items; popularity = item index; user 0's test item 1 is behind 5, 4, 3, 2 unless its
    # training items 5 and 4 are masked
    score = popularity_scorer(np.arange(6))
    test = pd.DataFrame({"user": [0, 1], "item": [1, 5]})
    known = {0: np.array([5, 4])}
    assert full_ranking_recall(score, test, known, 6, 2, seed=0) == 0.5  # user 0: rank 2 of 2
    assert full_ranking_recall(score, test, known, 6, 3, seed=0) == 1.0
    assert full_ranking_recall(score, test, {}, 6, 3, seed=0) == 0.5


# --------------------------------------------------------------------------- Spark pieces

@pytest.fixture(scope="module")
def tiny(spark):
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "d", 3),  # tie at 3: d later
            ("u2", "a", 5), ("u2", "c", 1),
            ("u3", "e", 4)]
    pairs = spark.createDataFrame(rows, "customer_id string, product_id string, ts long") \
        .withColumn("strength", F.lit(1.0))
    indexed, users, items = index_pairs(pairs)
    return leave_one_out(indexed).persist(), users, items


def test_leave_one_out_holds_out_each_users_latest_then_the_one_before(spark, tiny):
    split, users, items = tiny
    assert users == ["u1", "u2", "u3"] and items == ["a", "b", "c", "d", "e"]
    expected = spark.createDataFrame(
        [("u1", "a", "train"), ("u1", "b", "train"), ("u1", "c", "validation"),
         ("u1", "d", "test"), ("u2", "a", "test"), ("u2", "c", "train"), ("u3", "e", "train")],
        "customer_id string, product_id string, role string")
    assertDataFrameEqual(split.select("customer_id", "product_id", "role"), expected)


def test_evaluation_lists_rank_the_held_out_item_among_untouched_ones(spark, tiny):
    split, _, items = tiny
    lists = evaluation_lists(split, len(items), "test", 1, seed=5).toPandas()
    again = evaluation_lists(split, len(items), "test", 1, seed=5).toPandas()
    pd.testing.assert_frame_equal(lists.sort_values("user").reset_index(drop=True),
                                  again.sort_values("user").reset_index(drop=True))
    touched = split.groupBy("user").agg(F.collect_set("item").alias("t")).toPandas()
    touched = {r.user: set(r.t) for r in touched.itertuples()}
    held = {r.user: r.item for r in split.where("role = 'test'").toPandas().itertuples()}
    assert sorted(lists["user"]) == sorted(held)  # u3 (one interaction) has no list
    for row in lists.itertuples():
        assert len(row.items) == 2 and row.items[row.target] == held[row.user]
        others = [i for j, i in enumerate(row.items) if j != row.target]
        assert len(others) == 1 and not set(others) & touched[row.user]
    # u1 touched 4 of the 5 items: fewer untouched than asked, so its list is marked empty;
    # u2 (3 untouched) gets distinct ones
    short = evaluation_lists(split, len(items), "test", 2, seed=5).toPandas().set_index("user")
    assert short.loc[0, "target"] == -1
    u2 = list(short.loc[1, "items"])
    assert len(u2) == 3 and len(set(u2)) == 3 and u2[short.loc[1, "target"]] == held[1]


def test_negatives_are_untouched_items_fresh_per_set(spark):
    n_items = 40
    rows = [(f"u{u}", f"p{i:02d}", i, 1.0) for u in range(6) for i in range(u, 40, 3)]
    pairs = spark.createDataFrame(rows, "customer_id string, product_id string, ts long, "
                                        "strength double")
    indexed, _, items = index_pairs(pairs)
    assert len(items) == n_items
    split = leave_one_out(indexed)
    sampled = negative_sets(split, n_items, sets=3, negatives=4, groups=2, seed=1).toPandas()
    touched = split.groupBy("user").agg(F.collect_set("item").alias("t")).toPandas()
    touched = {r.user: set(r.t) for r in touched.itertuples()}
    train = split.where("role = 'train'").toPandas()
    for s in range(3):
        part = sampled[sampled["neg_set"] == s]
        pos, neg = part[part["label"] == 1], part[part["label"] == 0]
        assert sorted(zip(pos["user"], pos["item"])) == sorted(zip(train["user"], train["item"]))
        assert len(neg) == 4 * len(pos)
        assert all(i not in touched[u] for u, i in zip(neg["user"], neg["item"]))
    first, second = (sampled[(sampled["neg_set"] == s) & (sampled["label"] == 0)]["item"].tolist()
                     for s in (0, 1))
    assert first != second  # each set draws its own negatives
    again = negative_sets(split, n_items, sets=3, negatives=4, groups=2, seed=1).toPandas()
    key = ["neg_set", "user", "_order"]
    pd.testing.assert_frame_equal(sampled.sort_values(key).reset_index(drop=True),
                                  again.sort_values(key).reset_index(drop=True))


def test_training_sets_are_capped_by_their_rows():
    from deepmine.deep.ncf import training_set_count
    # (asked, epochs, train pairs, negatives, cap) -> sets; a set = pairs x (1 + negatives) rows
    table = [((0, 20, 1_000, 4, 10_000_000), 20),         # 100k rows in all: one per epoch
             ((5, 20, 1_000, 4, 10_000_000), 5),          # as asked
             ((0, 20, 98_000, 4, 10_000_000), 20),        # 9.8M rows: just under the cap
             ((0, 20, 530_000, 4, 10_000_000), 3),        # 2.65M a set: 3 fit
             ((0, 20, 5_300_000, 4, 10_000_000), 1),      # one set is over the cap: still one
             ((0, 20, 5_300_000, 4, 0), 20),              # no cap
             ((0, 20, 0, 4, 10_000_000), 20)]             # nothing to train on
    assert [training_set_count(*args) for args, _ in table] == [sets for _, sets in table]


def test_row_groups_sized_to_the_rows():
    from deepmine.deep.ncf import row_groups_for
    # (rows, features.row_groups, ranks) -> row groups: 50,000 rows each, a multiple of the ranks
    table = [((60_000, 8, 2), 2), ((0, 8, 2), 2), ((120_000, 8, 2), 4), ((485_000, 8, 2), 8),
             ((2_650_000, 8, 2), 8), ((60_000, 8, 3), 3), ((500_000, 8, 3), 8),
             ((500_000, 1, 2), 2)]
    assert [row_groups_for(*args) for args, _ in table] == [groups for _, groups in table]


# --------------------------------------------------------------------------- models

@pytest.mark.parametrize("kind, sparse", [("gmf", False), ("mlp", False), ("neumf", False),
                                          ("neumf", True)])
def test_networks_score_pairs_and_learn_a_planted_preference(kind, sparse):
    from deepmine.deep.lazy_adam import LazyAdam
    from deepmine.deep.models import build
    torch.manual_seed(0)
    model = build({"kind": kind, "n_users": 20, "n_items": 10, "factors": 8,
                   "mlp_layers": [16, 8], "sparse_embeddings": sparse})
    # users < 10 like items < 5, the others the rest
    users = torch.arange(20).repeat_interleave(10)
    items = torch.arange(10).repeat(20)
    x = torch.stack([users, items], 1).float()
    y = ((users < 10) == (items < 5)).float()
    assert model(x).shape == (200,)
    opt = (LazyAdam if sparse else torch.optim.Adam)(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
    if sparse:
        assert model.gmf.user.weight.grad.is_sparse and not model.out.weight.grad.is_sparse
    assert ((model(x) > 0).float() == y).float().mean() > 0.95


def test_lazy_adam_is_adam_on_dense_and_sparse_adam_on_sparse_gradients():
    """Against torch's own: Adam on a dense gradient; on an embedding whose every row is looked
    up each step, dense Adam; on one whose batches touch some rows, SparseAdam (the rows not
    looked up do not move); an empty sparse gradient (a rank with no batch left) moves nothing."""
    from deepmine.deep.lazy_adam import LazyAdam, empty_sparse_grad
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    theirs, ours = torch.optim.Adam([a], lr=0.01), LazyAdam([b], lr=0.01)
    for _ in range(5):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        theirs.step()
        ours.step()
    assert torch.allclose(a, b, atol=1e-6)
    for reference, rows in ((torch.optim.Adam, lambda: torch.tensor([0, 1, 2, 3, 4, 5, 2, 2])),
                            (torch.optim.SparseAdam, lambda: torch.randint(0, 6, (3,)))):
        mine = torch.nn.Embedding(6, 4, sparse=True)
        peer = torch.nn.Embedding(6, 4, sparse=reference is torch.optim.SparseAdam)
        peer.weight.data.copy_(mine.weight.data)
        opts = LazyAdam(mine.parameters(), lr=0.01), reference(list(peer.parameters()), lr=0.01)
        for _ in range(6):
            idx = rows()
            for e, o in zip((mine, peer), opts):
                o.zero_grad()
                e(idx).sin().sum().backward()
                o.step()
        assert torch.allclose(mine.weight, peer.weight, atol=1e-6), reference
    before = mine.weight.detach().clone()
    mine.weight.grad = empty_sparse_grad(mine.weight)
    opts[0].step()
    assert torch.equal(mine.weight, before)


def test_pretrained_neumf_starts_from_the_parts_with_the_alpha_weighted_output():
    from deepmine.deep.models import build
    from deepmine.deep.models.ncf import neumf_state_from_parts
    torch.manual_seed(0)
    shape = {"n_users": 7, "n_items": 5, "factors": 4, "mlp_layers": [8, 4]}
    gmf, mlp = build({**shape, "kind": "gmf"}), build({**shape, "kind": "mlp"})
    neumf = build({**shape, "kind": "neumf"})
    neumf.load_state_dict(neumf_state_from_parts(gmf.state_dict(), mlp.state_dict(), 0.3))
    x = torch.stack([torch.arange(7).repeat_interleave(5), torch.arange(5).repeat(7)], 1).float()
    with torch.no_grad():  # the start is the alpha-weighted sum of the parts' logits
        assert torch.allclose(neumf(x), 0.3 * gmf(x) + 0.7 * mlp(x), atol=1e-6)
    assert torch.equal(neumf.gmf.user.weight, gmf.user.weight)
    assert torch.equal(neumf.mlp.tower[0].weight, mlp.tower[0].weight)


def test_sgd_step_is_a_plain_step_on_the_averaged_gradients():
    from deepmine.deep.ncf_loop import sgd_step

    class Averaging:  # stands in for Horovod's optimizer: synchronize averages across ranks
        def __init__(self, params):
            self.params, self.synchronized = params, 0

        def zero_grad(self):
            for p in self.params:
                p.grad = None

        def synchronize(self):
            self.synchronized += 1
            for p in self.params:
                p.grad.mul_(0.5)  # as if the other rank's gradient were 0

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Averaging([w])
    sgd_step(opt, [w], (w * torch.tensor([3.0, 4.0])).sum(), lr=0.1)
    assert opt.synchronized == 1 and torch.allclose(w.detach(), torch.tensor([0.85, -2.2]))
    sgd_step(opt, [w], None, lr=0.1)  # a rank with no batch left: zero gradient, no move
    assert opt.synchronized == 2 and torch.allclose(w.detach(), torch.tensor([0.85, -2.2]))


# --------------------------------------------------------------------------- the stage

STAGE_SETTINGS = ["spark.ui_enabled=false", "features.row_groups=2", "ncf.epochs=5",
                  "ncf.negative_sets=2", "ncf.batch_size=512", "ncf.lr=0.003",
                  "train.patience=3", "train.budget_seconds=0", "recommend.tune=false",
                  "ncf.recall_users=300"]


@pytest.fixture(scope="module")
def ncf_run(spark, tmp_path_factory):
    """`train --model ncf` on generated purchases (planted taste groups), 2 Horovod ranks."""
    from deepmine.core.config import load_config
    from deepmine.core.lake import Lake
    from deepmine.data.generate import generate_transactions
    from deepmine.data.ingest import run_ingest
    from deepmine.deep.train import run_train
    root = tmp_path_factory.mktemp("ncf")
    generate_transactions(root / "in", lines=12000, seed=7, dirty_rate=0.0)
    # sparse embedding gradients through the ranks (lazy Adam; Horovod gathers their rows), as
    # on large data; the pretraining test below trains the same lake with dense ones
    config = load_config(None, [f"lake.root={root / 'lake'}", *STAGE_SETTINGS,
                                "ncf.sparse_embeddings_above=0"])
    run_ingest(spark, config, "2026-11-22", str(root / "in" / "transactions.csv"),
               "transactions")
    run_train(spark, config, "2026-11-22", "ncf", None)
    lake = Lake(spark, config.lake.root)
    return lake, lake.read_manifest("2026-11-22")["stages"]["train_ncf"], root


def test_ncf_beats_popularity_and_publishes_unseen_top_n(spark, ncf_run):
    lake, record, root = ncf_run
    m = record["metrics"]
    assert record["status"] == "ok", record.get("degraded_reasons")
    for prefix in ("", "baseline_", "als_"):
        for name in ("hr_at_10", "ndcg_at_10", "recall_at_10"):
            assert 0.0 <= m[f"{prefix}{name}"] <= 1.0
    assert m["hr_at_10"] > m["baseline_hr_at_10"]
    assert m["epochs_run"] >= 1 and m["spec"]["kind"] == "neumf" and m["spec"]["sparse_embeddings"]
    recs = lake.read("predictions/ncf", "run_date=2026-11-22")
    assert recs.columns == ["customer_id", "product_id", "rank", "score"]
    owned = lake.read("clean/transactions").select("customer_id", "product_id").distinct()
    assert recs.join(owned, ["customer_id", "product_id"]).count() == 0
    per_customer = recs.groupBy("customer_id").agg(F.count("*").alias("n"),
                                                    F.min("rank").alias("first"))
    assert per_customer.where("n != 10 or first != 1").count() == 0
    assert per_customer.count() == record["counts"]["customers"]
    spec = json.loads(lake.read_text(f"{record['outputs']['model']}/spec.json"))
    assert spec == m["spec"]


def test_pretrained_neumf_starts_from_the_trained_parts_and_records_them(spark, ncf_run):
    """ncf.pretrain on the same lake and date: the sampled sets are reused, GMF and MLP train one
    epoch each, NeuMF starts from their trained weights (one SGD epoch)."""
    from deepmine.core.config import load_config
    from deepmine.deep.models import build
    from deepmine.deep.ncf import model_scorer, protocol_metrics
    from deepmine.deep.train import run_train
    from deepmine.deep.trainer import CheckpointStore, load_state
    lake, _, root = ncf_run
    config = load_config(None, [f"lake.root={root / 'lake'}", *STAGE_SETTINGS, "ncf.epochs=1",
                                "ncf.pretrain=true", "ncf.pretrain_alpha=0.4",
                                "mlflow.enabled=false"])
    run_train(spark, config, "2026-11-22", "ncf", None)
    record = lake.read_manifest("2026-11-22")["stages"]["train_ncf"]
    m, parts = record["metrics"], record["metrics"]["pretrain"]
    assert {"training_gmf", "training_mlp", "training"} <= set(m["phase_seconds"])
    for kind in ("gmf", "mlp"):
        for name in ("val_hr_at_10", "val_ndcg_at_10", "hr_at_10", "ndcg_at_10", "recall_at_10"):
            assert 0.0 <= parts[kind][name] <= 1.0
        assert parts[kind]["epochs_run"] == 1 and parts[kind]["seconds"] > 0
    checkpoints = record["outputs"]["checkpoints"]
    gmf, mlp = (CheckpointStore(f"{checkpoints}/{kind}").load_latest()["model"]
                for kind in ("gmf", "mlp"))
    start = load_state(parts["start_weights"])
    for name in ("user.weight", "item.weight"):
        assert torch.equal(start[f"gmf.{name}"], gmf[name])
        assert torch.equal(start[f"mlp.{name}"], mlp[name])
    towers = [key for key in mlp if key.startswith("tower.")]
    assert towers and all(torch.equal(start[f"mlp.{key}"], mlp[key]) for key in towers)
    assert torch.allclose(start["out.weight"],
                          torch.cat([0.4 * gmf["out.weight"], 0.6 * mlp["out.weight"]], dim=1))
    assert torch.allclose(start["out.bias"], 0.4 * gmf["out.bias"] + 0.6 * mlp["out.bias"])
    # the ranks trained from these weights: their validation score is what the lists give them
    neumf = build(m["spec"])
    neumf.load_state_dict(start)
    validation = lake.read("features/ncf_validation", "run_date=2026-11-22").toPandas()
    expected = protocol_metrics(model_scorer(neumf), validation, 10)
    assert parts["start_val_hr_at_10"] == pytest.approx(expected["hr"], abs=1e-6)
    assert parts["start_val_ndcg_at_10"] == pytest.approx(expected["ndcg"], abs=1e-6)
    assert m["spec"]["kind"] == "neumf" and "optimizer" not in m["spec"]
