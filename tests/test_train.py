"""Training through Petastorm on 2 Horovod ranks over Gloo, launched from Spark (and horovodrun).

One small lake for the module: ~20k generated transaction lines (800 customers in 4 planted
groups), ingested, RFM-scored, and a small synthetic image table. Then: every row read exactly
once per epoch across ranks; each model trained for an epoch (deep clustering of customers to
convergence, compared with the RFM stage's K-means); a run killed mid-training and resumed ends
with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import time
from dataclasses import replace

import pytest
import torch

from deepmine.deep.launch import run_on_spark
from deepmine.deep.loader import parquet_parts, rows_seen, split_urls

D = "2026-11-22"


@pytest.fixture(scope="module")
def trained_lake(spark, tmp_path_factory):
    """A config and its lake with clean transactions, mining/rfm and both feature tables."""
    from deepmine.core.config import load_config
    from deepmine.deep.features import run_features
    from deepmine.data.generate import generate_transactions
    from deepmine.data.ingest import run_ingest
    from deepmine.mining.rfm import run_rfm

    root = tmp_path_factory.mktemp("train")
    generate_transactions(root / "in", lines=20000, seed=7, dirty_rate=0.0)
    config = load_config(None, [
        f"lake.root={root / 'lake'}", "spark.ui_enabled=false",
        f"input.transactions={root / 'in' / 'transactions.csv'}",
        f"input.products={root / 'in' / 'products.csv'}",
        "features.image_source=synthetic", "features.synthetic_images=1400",
        "features.row_groups=4", "rfm.k_max=5",
        "train.epochs=1", "train.pretrain_epochs=1", "train.dec_max_epochs=1",
        "train.kmeans_n_init=3", "train.shuffle_buffer=256",
        "train.budget_seconds=0"])  # epochs, not the clock, end these runs on a busy machine
    run_ingest(spark, config, D, config.input.transactions, "transactions")
    run_rfm(spark, config, D)
    run_features(spark, config, D)
    return config


def test_every_row_exactly_once_per_epoch(spark, trained_lake):
    from deepmine.core.lake import Lake
    lake = Lake(spark, trained_lake.lake.root)
    parts = parquet_parts(lake.partition_url("features/images", f"run_date={D}"))
    urls = split_urls(parts, "train")
    n = sum(p.rows for p in parts if p.split == "train")
    results = sorted(run_on_spark(rows_seen, num_proc=2, args=(urls, 2, 9)), key=lambda r: r["rank"])
    for epoch in range(2):
        per_rank = [r["seen"][epoch] for r in results]
        everything = sorted(per_rank[0] + per_rank[1])
        assert everything == list(range(n)), f"epoch {epoch}: rows missing or read twice"
        assert abs(len(per_rank[0]) - len(per_rank[1])) <= 2  # equal row groups: a fair share
    # a rank keeps its row groups (Petastorm deals by row-group index) but reads them in another
    # order each epoch (row groups and rows shuffled with seed + epoch)
    assert set(results[0]["seen"][0]) == set(results[0]["seen"][1])
    assert results[0]["seen"][0] != results[0]["seen"][1]


def _load_weights(lake, name):
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(lake.partition_url(f"models/{name}", f"run_date={D}"))
    with fs.open_input_stream(f"{path}/weights.pt") as f:
        state = torch.load(io.BytesIO(f.read()), weights_only=True)
    with fs.open_input_stream(f"{path}/spec.json") as f:
        spec = json.loads(f.read())
    from deepmine.deep.models import build
    model = build(spec)
    model.load_state_dict(state)
    return model, fs, path


def test_cnn_two_ranks_one_epoch(spark, trained_lake):
    from deepmine.core.lake import Lake
    from deepmine.deep.train import run_train
    out = run_train(spark, trained_lake, D, "cnn", "images")
    lake = Lake(spark, trained_lake.lake.root)
    m = lake.read_manifest(D)["stages"]["train_cnn"]["metrics"]
    assert m["ranks"] == 2 and m["epochs_run"] == 1
    assert (m["stop_reason"], m["best_epoch"], m["retries"], m["n_classes"]) == \
        ("max_epochs", 0, 0, 10)
    assert {"majority_class", "logistic_pixels"} <= set(m["baselines"])
    assert 0.3 < m["accuracy"] <= 1.0  # 10 synthetic shapes, one epoch: well above chance
    assert len(m["confusion_matrix"]) == 10
    assert sum(map(sum, m["confusion_matrix"])) == m["test_images"] == 200
    # the synthetic shapes' names label the matrix (label 0 is the horizontal bar)
    from deepmine.deep.features import SHAPE_CLASSES
    assert m["class_names"] == SHAPE_CLASSES and m["class_names"][0] == "horizontal bar"
    assert abs(m["accuracy_int8"] - m["accuracy_float_driver"]) < 0.05
    assert abs(m["accuracy_float_driver"] - m["accuracy"]) < 1e-6
    assert out["predictions"] == 1400
    model, fs, path = _load_weights(lake, "cnn")
    with fs.open_input_stream(f"{path}/model_int8.torchscript.pt") as f:
        scripted = torch.jit.load(io.BytesIO(f.read()))
    assert scripted(torch.zeros(3, 784)).shape == (3, 10)


@pytest.mark.parametrize("autoencoder,contrastive", [("conv", 0.0), ("dense", 0.1)])
def test_image_autoencoder_two_ranks(spark, trained_lake, autoencoder, contrastive):
    """With the full run's recipe: the partition and centres from the UMAP manifold, a warm epoch
    toward that partition, then IDEC; and with shifted inputs (DEC-DA). Both image autoencoders:
    conv (the default) and dense with the augmentation-consistency loss (conf/full.yaml's)."""
    from deepmine.core.lake import Lake
    from deepmine.deep.train import run_train
    config = replace(trained_lake, train=replace(trained_lake.train, augment_shift=2,
                                                 dec_init="umap", dec_warm_epochs=1,
                                                 dec_max_epochs=2, image_autoencoder=autoencoder,
                                                 contrastive_weight=contrastive))
    run_train(spark, config, D, "autoencoder", "images")
    lake = Lake(spark, trained_lake.lake.root)
    m = lake.read_manifest(D)["stages"]["train_autoencoder_images"]["metrics"]
    assert m["spec"]["kind"] == {"conv": "conv_dec", "dense": "dense_dec"}[autoencoder]
    assert [h["phase"] for h in m["history"]] == ["pretrain", "warm", "idec"]
    # the consistency loss runs in pretraining only, its head travels in the spec and weights
    assert ("contrastive_loss" in m["history"][0]) == bool(contrastive)
    assert all("contrastive_loss" not in h for h in m["history"][1:])
    assert m["spec"].get("projection_dim", 0) == (64 if contrastive else 0)
    if contrastive:  # between log(1) (views told apart perfectly) and log(2n - 1) (not at all)
        assert 0 < m["history"][0]["contrastive_loss"] < math.log(2 * config.train.batch_size)
    model, _, _ = _load_weights(lake, "autoencoder_images")
    assert (model.projection is not None) == bool(contrastive)
    for key in ("cluster_acc", "nmi", "ari"):
        assert 0 <= m[key] <= 1 and key in m["kmeans_baseline"] and key in m["ae_umap"]
    predictions = lake.read("predictions/autoencoder_images", f"run_date={D}")
    assert predictions.count() == 1400
    assert {len(r[0]) for r in predictions.select("embedding").collect()} == {10}


def test_warm_epochs_must_leave_dec_epochs(spark, trained_lake):
    from deepmine.core.config import ConfigError
    from deepmine.core.lake import Lake
    from deepmine.deep.train import train_args
    parts = parquet_parts(Lake(spark, trained_lake.lake.root).partition_url(
        "features/images", f"run_date={D}"))
    for warm, most in ((2, 2), (-1, 4)):
        config = replace(trained_lake, train=replace(trained_lake.train, dec_warm_epochs=warm,
                                                     dec_max_epochs=most))
        with pytest.raises(ConfigError, match="train.dec_warm_epochs"):
            train_args(config, "autoencoder_images", parts, D, "file:///tmp/unused")
    ok = replace(trained_lake, train=replace(trained_lake.train, dec_warm_epochs=1,
                                             dec_max_epochs=2))
    assert train_args(ok, "autoencoder_images", parts, D, "file:///tmp/unused").dec_warm_epochs == 1


def test_customer_deep_clustering_beats_rfm_kmeans(spark, trained_lake):
    from deepmine.core.lake import Lake
    from deepmine.deep.train import run_train
    run_train(spark, trained_lake, D, "autoencoder", "customers")
    lake = Lake(spark, trained_lake.lake.root)
    m = lake.read_manifest(D)["stages"]["train_autoencoder_customers"]["metrics"]
    assert m["scored_rows"] == 800 and m["truth"].startswith("planted groups")
    assert m["ari"] >= m["rfm_kmeans"]["ari"] - 1e-9, m
    assert m["ari"] > 0.9, m
    predictions = lake.read("predictions/autoencoder_customers", f"run_date={D}")
    assert predictions.select("customer_id").distinct().count() == 800


def _horovodrun(args_path, log):
    from deepmine.deep.train import horovodrun_command
    return subprocess.Popen(horovodrun_command(str(args_path), 2), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_resume_after_kill_gives_the_same_weights(spark, trained_lake, tmp_path):
    """Standalone horovodrun: kill a run after its second checkpoint, start it again, and compare
    the final weights with an uninterrupted run of the same arguments."""
    from deepmine.core.lake import Lake
    from deepmine.deep.train import train_args
    from deepmine.deep.trainer import CheckpointStore

    lake = Lake(spark, trained_lake.lake.root)
    parts = parquet_parts(lake.partition_url("features/customers", f"run_date={D}"))
    base = train_args(trained_lake, "autoencoder_customers", parts, D, "unused")
    base = replace(base, pretrain_epochs=4, dec_max_epochs=4, dec_tolerance=0.0)
    finals = {}
    for label in ("uninterrupted", "killed"):
        ckpt = tmp_path / label / "ckpt"
        args_path = tmp_path / label / "args.json"
        args_path.parent.mkdir()
        args_path.write_text(replace(base, checkpoint_dir=ckpt.as_uri()).to_json())
        store = CheckpointStore(ckpt.as_uri())
        with open(tmp_path / label / "log.txt", "w") as log:
            if label == "killed":
                proc = _horovodrun(args_path, log)
                deadline = time.time() + 120
                while not [e for e in store.epochs() if e >= 1] and proc.poll() is None:
                    assert time.time() < deadline, "no checkpoint within 120 s"
                    time.sleep(0.05)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed_at = max(store.epochs())
                assert killed_at < 7, "the run finished before it could be killed"
            assert _horovodrun(args_path, log).wait(timeout=300) == 0, \
                (tmp_path / label / "log.txt").read_text()[-3000:]
        final = store.load_latest()
        assert final["epoch"] == 7
        finals[label] = final
    history = finals["killed"]["history"]
    assert [h["epoch"] for h in history] == list(range(8))
    a, b = finals["uninterrupted"]["model"], finals["killed"]["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"


def test_shift_images_moves_each_image_and_fills_with_zeros():
    from deepmine.deep.trainer import shift_images
    torch.manual_seed(0)
    images = torch.rand(64, 5 * 7) + 1  # no zeros of their own
    shifted = shift_images(images, 5, 7, 2)
    assert torch.equal(shift_images(images, 5, 7, 0), images)
    for before, after in zip(images.view(-1, 5, 7), shifted.view(-1, 5, 7)):
        # find this image's (dy, dx): the one placement of `before` that gives `after`
        found = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                expect = torch.zeros(5, 7)
                src = before[max(0, dy):5 + min(0, dy), max(0, dx):7 + min(0, dx)]
                expect[max(0, -dy):5 + min(0, -dy), max(0, -dx):7 + min(0, -dx)] = src
                if torch.equal(expect, after):
                    found.append((dy, dx))
        assert len(found) == 1
    assert len({tuple(a.tolist()) for a in shifted}) > 1


def test_affine_view_mirrors_shifts_and_zooms():
    from deepmine.deep.models.contrastive import affine_view, random_view
    torch.manual_seed(0)
    images = torch.rand(3, 6 * 8)
    one, no, still = torch.ones(3), torch.zeros(3, dtype=torch.bool), torch.zeros(3, 2)
    grid = images.view(3, 6, 8)
    assert torch.allclose(affine_view(images, 6, 8, one, no, still), images, atol=1e-6)
    mirrored = affine_view(images, 6, 8, one, ~no, still).view(3, 6, 8)
    assert torch.allclose(mirrored, grid.flip(-1), atol=1e-6)
    # a shift of 4/8 (one pixel is 2/width) moves the content 2 columns left; zeros come in from
    # the right
    moved = affine_view(images, 6, 8, one, no, torch.tensor([[4 / 8, 0.0]] * 3)).view(3, 6, 8)
    assert torch.allclose(moved[..., :6], grid[..., 2:], atol=1e-6)
    assert torch.equal(moved[..., 6:], torch.zeros(3, 6, 2))
    # zoomed in by 2 a constant image still fills the frame; zoomed out by 2 it sits in the
    # middle of a zero border
    flat = torch.full((1, 6 * 8), 0.7)
    zoomed = affine_view(flat, 6, 8, torch.tensor([2.0]), no[:1], still[:1]).view(6, 8)
    assert torch.allclose(zoomed, torch.full((6, 8), 0.7), atol=1e-6)
    shrunk = affine_view(flat, 6, 8, torch.tensor([0.5]), no[:1], still[:1]).view(6, 8)
    assert shrunk[0, 0] == 0 and torch.isclose(shrunk[3, 4], torch.tensor(0.7))
    torch.manual_seed(1)
    a = random_view(images, 6, 8)
    torch.manual_seed(1)
    assert torch.equal(a, random_view(images, 6, 8))  # seeded: a resumed run draws the same
    assert not torch.equal(a, random_view(images, 6, 8))


def test_nt_xent_against_a_hand_computed_value_and_a_plain_loop():
    from deepmine.deep.models.contrastive import nt_xent
    # two orthogonal images, each view equal to its partner: every view has its partner at
    # similarity 1 and the two other views at 0
    a = torch.eye(2, 5)
    t = 0.5
    assert torch.isclose(nt_xent(a, 3 * a, t), torch.log(1 + 2 * torch.exp(torch.tensor(-1 / t))))
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    views = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    losses = []
    for i in range(12):
        partner = (i + 6) % 12
        others = [j for j in range(12) if j != i]
        logits = torch.stack([views[i] @ views[j] / t for j in others])
        losses.append(-(logits[others.index(partner)] - torch.logsumexp(logits, 0)))
    assert torch.isclose(nt_xent(a, b, t), torch.stack(losses).mean(), atol=1e-6)


def test_initial_partition_finds_planted_blobs_both_ways():
    """Four well separated blobs in 6 dimensions: either init puts one centre in each and one
    cluster on each blob, and leaves torch's thread count as it found it."""
    import numpy as np

    from deepmine.core.metrics import clustering_scores
    from deepmine.deep.trainer import initial_partition
    rng = np.random.default_rng(3)
    truth = rng.normal(0, 10, (4, 6))
    points = np.concatenate([c + rng.normal(0, 0.5, (150, 6)) for c in truth])
    blob = np.repeat(np.arange(4), 150)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a rank of 2 on 2 cores
    try:
        found = {how: initial_partition(points, 4, how, n_init=3, seed=1)
                 for how in ("kmeans", "umap")}
        assert torch.get_num_threads() == 1  # the rank's share of the cores is kept
    finally:
        torch.set_num_threads(threads)
    for how, (centers, labels) in found.items():
        nearest = np.linalg.norm(truth[:, None] - centers[None], axis=2).argmin(1)
        assert sorted(nearest) == [0, 1, 2, 3], how
        assert np.abs(centers[nearest] - truth).max() < 0.5, how
        assert clustering_scores(blob, labels)["ari"] == 1.0, how


def test_warm_target_puts_most_weight_on_the_starting_cluster():
    from deepmine.deep.trainer import WARM_TARGET, warm_target
    target = warm_target(torch.tensor([2, 0, 1]), 4)
    expected = torch.full((3, 4), (1 - WARM_TARGET) / 3)
    expected[[0, 1, 2], [2, 0, 1]] = WARM_TARGET
    assert torch.allclose(target, expected) and torch.allclose(target.sum(1), torch.ones(3))


@pytest.mark.parametrize("shuffle_buffer, pool", [(40, "dummy"), (0, "dummy"), (0, "read_ahead"),
                                                   (40, "read_ahead")])
def test_columnar_batches_equal_petastorms_own(tmp_path, shuffle_buffer, pool):
    """open_loader's batches (its list-column conversion, its read-ahead thread, its in-order
    slicing without a shuffling buffer) are the ones Petastorm's own reader and BatchedDataLoader
    give on the dummy pool, in order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    from deepmine.deep.loader import open_loader
    rng = np.random.default_rng(5)
    urls = []
    for part in range(3):
        n = 50 + part
        values = rng.standard_normal(n * 6).astype(np.float32)
        table = pa.table({
            "row_id": pa.array(np.arange(n, dtype=np.int64) + 100 * part),
            "features": pa.ListArray.from_arrays(pa.array(np.arange(0, n * 6 + 1, 6, dtype=np.int32)),
                                                 pa.array(values)),
            "label": pa.array(rng.integers(0, 10, n))})
        path = tmp_path / f"part-{part}.parquet"
        pq.write_table(table, path, row_group_size=20)
        urls.append(path.as_uri())

    columns = ["row_id", "features", "label"]
    torch.manual_seed(9)
    with open_loader(urls, 0, 1, columns, 16, seed=3, shuffle_buffer=shuffle_buffer,
                     pool=pool) as loader:
        ours = list(loader)
    torch.manual_seed(9)
    reader = make_batch_reader(urls, schema_fields=columns, reader_pool_type="dummy",
                               workers_count=1, seed=3, shuffle_row_groups=True,
                               shuffle_rows=False, num_epochs=1, cur_shard=0, shard_count=1)
    with BatchedDataLoader(reader, batch_size=16,
                           shuffling_queue_capacity=shuffle_buffer) as loader:
        theirs = list(loader)
    assert len(ours) == len(theirs) and sum(len(b["row_id"]) for b in ours) == 153
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_validation_mask_is_seeded_the_share_asked_and_shard_free():
    from deepmine.deep.trainer import validation_mask
    ids = torch.arange(20000)
    mask = validation_mask(ids, 0.1, seed=42)
    assert abs(float(mask.float().mean()) - 0.1) < 0.01
    # a row's fate depends on its id and the seed only, not on the batch it comes in
    assert torch.equal(validation_mask(ids[5000:6000], 0.1, 42), mask[5000:6000])
    assert not torch.equal(validation_mask(ids, 0.1, 43), mask)
    assert not validation_mask(ids, 0.0, 42).any()


def test_early_stop_keeps_the_best_and_counts_patience():
    from deepmine.deep.trainer import EarlyStop
    stop = EarlyStop(patience=2, min_delta=0.01)
    for epoch, loss in enumerate([1.0, 0.5, 0.498, 0.6]):  # 0.498: less than 1% better
        stop.update(epoch, loss)
    assert (stop.best_epoch, stop.best_loss, stop.since_best, stop.exhausted) == (1, 0.5, 2, True)
    again = EarlyStop(2, 0.01, stop.state())  # from a checkpoint
    assert again.state() == stop.state()
    acc = EarlyStop(patience=3, min_delta=0.0)
    for epoch, (loss, accuracy) in enumerate([(1.0, 0.5), (0.8, 0.7), (0.9, 0.7), (0.7, 0.7)]):
        acc.update(epoch, loss, accuracy)
    assert acc.best_epoch == 3 and acc.best_accuracy == 0.7  # a tie goes to the lower loss


def test_failure_signals():
    from deepmine.deep.trainer import embedding_spread, largest_cluster_share, stalled
    torch.manual_seed(0)
    assert embedding_spread(torch.randn(500, 10) + 3) > 0.05  # 10 / (10 + 90)
    assert embedding_spread(torch.ones(500, 10) * 7 + 1e-5 * torch.randn(500, 10)) < 1e-6
    assert stalled(0.0326, 0.0286) and not stalled(0.01, 0.0286)
    assert largest_cluster_share(torch.tensor([0] * 95 + [1] * 5), 4) == 0.95


@pytest.mark.parametrize("kind", ["conv_dec", "dense_dec"])
def test_image_autoencoders_standardize_and_reconstruct_in_data_units(kind):
    """Built with the data's mean and spread, the network sees standardized input and its linear
    output maps back: with zeroed weights the reconstruction is the mean itself."""
    from deepmine.deep.models import build
    spec = {"kind": kind, "height": 8, "width": 8, "in_dim": 64, "hidden": [16], "output": "linear",
            "embedding_dim": 3, "n_clusters": 2, "input_shift": 0.4, "input_scale": 0.2}
    model = build(spec)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    recon, z, q = model(torch.rand(5, 64))
    assert torch.allclose(recon, torch.full((5, 64), 0.4)) and z.shape == (5, 3)
    old = build({"kind": "conv_dec", "height": 8, "width": 8, "embedding_dim": 3, "n_clusters": 2})
    assert old.autoencoder.output == "sigmoid"  # specs published before keep their output


def test_input_stats_reads_every_value(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepmine.deep.train import input_stats
    values = np.random.default_rng(0).random((30, 4)).astype(np.float32)
    table = pa.table({"features": pa.ListArray.from_arrays(
        pa.array(np.arange(0, 121, 4, dtype=np.int32)), pa.array(values.ravel()))})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=7)
    mean, std = input_stats([(tmp_path / "a.parquet").as_uri()])
    assert abs(mean - values.mean()) < 1e-6 and abs(std - values.std()) < 1e-6


def test_customer_truth_comes_from_the_ingested_input(tmp_path, make_config):
    from deepmine.deep.train import customer_truth_path
    beside_config, ingested = tmp_path / "config_input", tmp_path / "ingested"
    for folder in (beside_config, ingested):
        folder.mkdir()
        (folder / "transactions.csv").write_text("x\n")
        (folder / "customers_truth.csv").write_text("customer_id,group\n")
    config = make_config(f"input.transactions={beside_config / 'transactions.csv'}")
    manifest = {"stages": {"ingest": {"counts": {"input": str(ingested / "transactions.csv")}}}}
    assert customer_truth_path(config, manifest) == str(ingested / "customers_truth.csv")
    as_url = {"stages": {"ingest": {"counts": {"input": (ingested / "transactions.csv").as_uri()}}}}
    assert customer_truth_path(config, as_url) == str(ingested / "customers_truth.csv")
    # nothing ingested for the run, or no truth beside what was: no truth at all
    assert customer_truth_path(config, {"stages": {}}) == ""
    (ingested / "customers_truth.csv").unlink()
    assert customer_truth_path(config, manifest) == ""


def test_pixel_baselines_on_separable_classes():
    import numpy as np

    from deepmine.deep.train import pixel_baselines
    rng = np.random.default_rng(0)
    y = rng.choice(3, 400, p=[0.5, 0.3, 0.2])
    x = (np.eye(3)[y] @ rng.random((3, 16)) + 0.05 * rng.random((400, 16))).astype(np.float32)
    out = pixel_baselines(x[:300], y[:300], x[300:], y[300:], seed=0)
    assert out["logistic_pixels"] > 0.9 and out["majority_class"] < 0.6


def test_dec_starts_from_the_kmeans_restart_most_compact_in_the_input_vectors():
    """Issue 13: an embedding can make a wrong partition the lowest within-cluster sum of
    squares (K-means' own pick) while the right one is among its restarts. Here the input has
    three round groups; the embedding stretches one and squeezes the other two together, so
    splitting the first and merging the others is cheaper in the embedding. Judged in the input
    vectors, the right restart wins. The sums of squares add up across ranks and batches."""
    import numpy as np
    from deepmine.core.metrics import cluster_accuracy
    from deepmine.deep.trainer import (kmeans_restarts, restart_choice, within_cluster_ss,
                                  within_cluster_sums)
    rng = np.random.RandomState(0)
    truth = np.repeat(np.arange(3), 200)
    x = np.array([[0.0, 0.0], [12.0, 0.0], [12.0, 6.0]])[truth] + rng.randn(600, 2)
    z = x.copy()
    z[truth == 0] *= [2.0, 0.3]
    z[truth > 0] = [12.0, 0.0] + (z[truth > 0] - [12.0, 0.0]) * [0.3, 0.25]
    restarts = kmeans_restarts(z, 3, 10, seed=42)
    partitions = torch.as_tensor(np.stack([labels for _, labels, _ in restarts]))
    # two "ranks" of unequal size, summed, as _input_within_ss does
    halves = [within_cluster_sums(torch.as_tensor(x[rows]), partitions[:, rows], 3)
              for rows in (slice(0, 250), slice(250, 600))]
    input_ss = within_cluster_ss(halves[0][0] + halves[1][0], halves[0][1] + halves[1][1],
                                 halves[0][2] + halves[1][2])
    for labels, ss in zip(partitions.numpy(), input_ss):
        direct = sum(((x[labels == j] - x[labels == j].mean(0)) ** 2).sum() for j in range(3))
        assert ss == pytest.approx(direct, rel=1e-9)
    embedding_ss = [inertia for _, _, inertia in restarts]
    accuracy = [cluster_accuracy(truth, labels) for labels in partitions.numpy()]
    assert accuracy[restart_choice(embedding_ss, input_ss, "embedding")] < 0.6
    assert accuracy[restart_choice(embedding_ss, input_ss, "input")] == 1.0
    assert restart_choice(embedding_ss, None, "input") == int(np.argmin(embedding_ss))


def test_cnn_pruned_to_80_percent_through_the_trainer(spark, trained_lake):
    """Global magnitude pruning at 0.8, fine-tuned for an epoch on 2 ranks: exactly a fifth of
    the conv and linear weights survive in the published pruned model (zeros kept by the masks
    through the fine-tune), int8 keeps them zero, the zeros show in the gzip size, and the
    pruned model still classifies (one epoch of 10 synthetic shapes: well above chance)."""
    from dataclasses import replace as dc_replace

    from deepmine.core.lake import Lake
    from deepmine.deep.prune import prunable
    from deepmine.deep.train import run_train
    config = dc_replace(trained_lake, prune=dc_replace(trained_lake.prune, sparsity=0.8, epochs=1))
    run_train(spark, config, D, "cnn", "images")
    lake = Lake(spark, trained_lake.lake.root)
    p = lake.read_manifest(D)["stages"]["train_cnn"]["metrics"]["pruning"]
    assert p["sparsity"] == 0.8 and p["epochs_run"] == 1
    assert p["float"]["nonzero_share"] > 0.99
    assert p["pruned"]["nonzero_share"] == pytest.approx(0.2, abs=0.001)
    assert p["pruned_int8"]["nonzero_share"] <= p["pruned"]["nonzero_share"] + 1e-9
    assert p["pruned"]["gzip_bytes"] < 0.6 * p["float"]["gzip_bytes"]
    assert p["pruned"]["accuracy"] > 0.3
    model, fs, path = _load_weights(lake, "cnn")
    with fs.open_input_stream(f"{path}/model_pruned.torchscript.pt") as f:
        scripted = torch.jit.load(io.BytesIO(f.read()))
    weights = {n: w for n, w in scripted.named_parameters() if n.endswith("weight")}
    shapes = {tuple(m.weight.shape) for m, _ in prunable(model)}
    kept = [w for w in weights.values() if tuple(w.shape) in shapes]
    total = sum(w.numel() for w in kept)
    assert sum(int((w != 0).sum()) for w in kept) / total == pytest.approx(0.2, abs=0.001)
