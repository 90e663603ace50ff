"""Training throughput: samples/s of one CNN epoch with 1 and 2 Horovod ranks (horovodrun, Gloo).

    .venv/bin/python scripts/bench/train.py [--images 60000] [--ranks 1,2]
        [--model cnn|conv_dec|dense_dec|textcnn|textrnn] [--contrastive 0.1]

Writes synthetic 28x28 images (for the text models: reviews of random token ids, 200 per row, a
vocabulary of 20,000, the real length uniform in 20..200, the rest padding; `--images` is then
the number of reviews) as a feature table (equal row groups, like features/images) with pyarrow,
runs `deepmine.deep.trainer.train` for one epoch per rank count through `horovodrun`, and
prints samples/s and the scaling efficiency (samples/s with N ranks / (N x with 1 rank)). On a
machine with a GPU (train device auto) the same command measures the GPU, loader included.
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from results import publish


def write_images(path: Path, n: int, row_groups: int) -> None:
    from deepmine.deep.features import synthetic_images
    path.mkdir(parents=True, exist_ok=True)
    pixels, labels = synthetic_images(n, 28, 28, seed=0)
    flat = (pixels.reshape(n, -1) / np.float32(255)).astype(np.float32)
    per = -(-n // row_groups)
    for g in range(row_groups):
        s, e = g * per, min(n, (g + 1) * per)
        offsets = pa.array(np.arange(0, (e - s) * 784 + 1, 784, dtype=np.int32))
        table = pa.table({"row_id": pa.array(np.arange(s, e, dtype=np.int64)),
                          "label": pa.array(labels[s:e]),
                          "features": pa.ListArray.from_arrays(offsets, pa.array(flat[s:e].ravel()))})
        pq.write_table(table, path / f"part-{g:05d}.parquet", row_group_size=e - s)


TEXT_TOKENS, TEXT_VOCAB = 200, 20_000


def write_reviews(path: Path, n: int, row_groups: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, TEXT_VOCAB + 2, size=(n, TEXT_TOKENS)).astype(np.float32)
    ids[np.arange(TEXT_TOKENS)[None, :] >= rng.integers(20, TEXT_TOKENS + 1, size=(n, 1))] = 0
    labels = rng.integers(0, 2, n)
    per = -(-n // row_groups)
    for g in range(row_groups):
        s, e = g * per, min(n, (g + 1) * per)
        offsets = pa.array(np.arange(0, (e - s) * TEXT_TOKENS + 1, TEXT_TOKENS, dtype=np.int32))
        table = pa.table({"row_id": pa.array(np.arange(s, e, dtype=np.int64)),
                          "label": pa.array(labels[s:e]),
                          "features": pa.ListArray.from_arrays(offsets, pa.array(ids[s:e].ravel()))})
        pq.write_table(table, path / f"part-{g:05d}.parquet", row_group_size=e - s)


def main() -> None:
    from deepmine.deep.train import horovodrun_command
    from deepmine.deep.trainer import CheckpointStore, TrainArgs
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=60000)
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--model", default="cnn",
                   choices=["cnn", "conv_dec", "dense_dec", "textcnn", "textrnn"])
    p.add_argument("--contrastive", type=float, default=0.0,
                   help="autoencoders: train.contrastive_weight (conf/full.yaml: 0.1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dir", default="/tmp/deepmine-bench-train")
    a = p.parse_args()
    text = a.model in ("textcnn", "textrnn")
    data = Path(a.dir) / f"{'reviews' if text else 'images'}{a.images}"
    if not data.exists():
        (write_reviews if text else write_images)(data, a.images, 8)
    urls = [f.as_uri() for f in sorted(data.glob("*.parquet"))]
    if text:  # as deepmine.deep.train_text.text_spec builds it with the default text config
        spec = {"kind": a.model, "vocab_size": TEXT_VOCAB + 2, "embedding_dim": 64,
                "n_classes": 2, "max_tokens": TEXT_TOKENS}
        extra = {"task": "cnn", "epochs": 1}
    elif a.model == "cnn":
        spec = {"kind": "cnn", "height": 28, "width": 28, "n_classes": 10}
        extra = {"task": "cnn", "epochs": 1}
    else:  # the image autoencoder as the trainer builds it (train.image_autoencoder)
        from deepmine.core.config import load_config
        from deepmine.deep.train import image_autoencoder_spec
        kind = {"conv_dec": "conv", "dense_dec": "dense"}[a.model]
        spec = image_autoencoder_spec(load_config(None, [
            f"train.image_autoencoder={kind}", f"train.contrastive_weight={a.contrastive}"]))
        extra = {"task": "dec", "pretrain_epochs": 1, "dec_max_epochs": 0, "n_rows": a.images,
                 "contrastive_weight": a.contrastive}
    rows = []
    for ranks in [int(x) for x in a.ranks.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainArgs(name="bench", spec=spec, train_urls=urls, batch_size=a.batch,
                             checkpoint_dir=Path(tmp, "ckpt").as_uri(), device=a.device, **extra)
            Path(tmp, "args.json").write_text(args.to_json())
            subprocess.run(horovodrun_command(str(Path(tmp, "args.json")), ranks), check=True,
                           stdout=subprocess.DEVNULL)
            entry = CheckpointStore(args.checkpoint_dir).load_latest()["history"][-1]
        rows.append((ranks, entry["samples"], entry["seconds"], entry["samples_per_s"]))
    base = rows[0][3] / rows[0][0]
    name = a.model + ("_contrastive" if a.contrastive else "")
    print(f"{name}, {a.images} {'reviews' if text else 'images'}, batch {a.batch} per rank, "
          f"device {a.device}")
    publish(f"train_{name}", [
        {"ranks": ranks, "samples": n, "seconds": s, "samples_per_s": rate,
         "efficiency": round(rate / (ranks * base), 3)} for ranks, n, s, rate in rows],
        meta={"model": a.model, "contrastive_weight": a.contrastive, "images": a.images,
              "batch_per_rank": a.batch,
              "device": a.device})


if __name__ == "__main__":
    main()
