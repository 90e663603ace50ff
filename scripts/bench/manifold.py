"""How steady the UMAP manifold's partition is: the image autoencoder's embedding of
Fashion-MNIST, UMAP once, then the Gaussian mixture (`train.dec_init: umap`) with several seeds,
beside K-means on the embedding and on the manifold. A quality study, not a speed benchmark.

    .venv/bin/python scripts/bench/manifold.py [--images 70000] [--autoencoder conv|dense]
        [--contrastive 0.1] [--epochs 15] [--lr 0.002] [--seeds 10]

Pretrains the image autoencoder that `train.image_autoencoder` names (the trainer's own spec) in
this process (batch 256; Adam 0.002 is what 2 ranks of 128 at the default lr train with), so it
needs Fashion-MNIST (`apt-get install -y dataset-fashion-mnist`). On 2 cores, at 70,000 images:
about 50 s per epoch for conv, 12 s for dense (33 s with --contrastive), and 1.5-4 minutes
of UMAP.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from results import publish


def fashion_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` of all 70,000 images (train then test) in a seeded order, as [0, 1] floats."""
    from deepmine.data.samples import read_idx, source_paths
    paths = source_paths("fashion_mnist")  # SampleUnavailable, with the install command, if not

    def load(kind: str) -> np.ndarray:
        return np.concatenate([read_idx(paths[f"{split}_{kind}"]) for split in ("train", "test")])
    images, labels = load("images"), load("labels")
    order = np.random.default_rng(seed).permutation(len(images))[:n]
    return images[order].reshape(len(order), -1).astype(np.float32) / 255, labels[order]


def pretrain(x: np.ndarray, kind: str, contrastive: float, epochs: int, lr: float,
             seed: int) -> np.ndarray:
    """Embeddings of `x` after `epochs` of the trainer's pretraining loss (`pretrain_loss`) for
    the `kind` image autoencoder with `train.contrastive_weight` = `contrastive`."""
    from deepmine.core.config import load_config
    from deepmine.deep.models import build
    from deepmine.deep.train import image_autoencoder_spec
    from deepmine.deep.trainer import pretrain_loss
    config = load_config(None, [f"train.image_autoencoder={kind}",
                                f"train.contrastive_weight={contrastive}"])
    torch.manual_seed(seed)
    data = torch.from_numpy(x)
    spec = image_autoencoder_spec(config)
    model = build(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        t0, total = time.perf_counter(), np.zeros(2)
        for idx in torch.randperm(len(data)).split(256):
            loss, recon, contrast = pretrain_loss(model, data[idx], 0.0, contrastive, spec)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += np.array([recon.item(), contrast.item()]) * len(idx)
        recon_mean, contrast_mean = total / len(data)
        print(f"epoch {epoch + 1}/{epochs} recon={recon_mean:.5f} contrastive={contrast_mean:.4f} "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
    model.eval()
    with torch.no_grad():
        return torch.cat([model.autoencoder.encode(b) for b in data.split(4096)]
                         ).numpy().astype(np.float64)


def main() -> None:
    from sklearn.cluster import KMeans

    from deepmine.core.metrics import clustering_scores
    from deepmine.deep.trainer import manifold_mixture, umap_manifold
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=70000)
    p.add_argument("--autoencoder", default="conv", choices=["conv", "dense"])
    p.add_argument("--contrastive", type=float, default=0.0,
                   help="train.contrastive_weight (conf/full.yaml: 0.1)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x, y = fashion_mnist(a.images, seed=0)
    z = pretrain(x, a.autoencoder, a.contrastive, a.epochs, a.lr, seed=0)
    t0 = time.perf_counter()
    manifold = umap_manifold(z, 10, seed=42)
    umap_seconds = time.perf_counter() - t0
    rows = [{"partition": "K-means on the embedding",
             **clustering_scores(y, KMeans(10, n_init=10, random_state=42).fit_predict(z))},
            {"partition": "K-means on the manifold",
             **clustering_scores(y, KMeans(10, n_init=10, random_state=42).fit_predict(manifold))}]
    for seed in range(a.seeds):
        mixture = manifold_mixture(manifold, 10, n_init=1, seed=seed)  # the trainer's mixture
        labels = mixture.predict(manifold)
        rows.append({"partition": f"mixture on the manifold, seed {seed}",
                     **clustering_scores(y, labels), "lower_bound": float(mixture.lower_bound_),
                     "smallest_cluster": int(np.bincount(labels, minlength=10).min()),
                     "largest_cluster": int(np.bincount(labels, minlength=10).max())})
    publish("manifold", rows, meta={"images": a.images, "autoencoder": a.autoencoder,
                                    "contrastive_weight": a.contrastive, "epochs": a.epochs, "lr": a.lr,
                                    "umap_seconds": round(umap_seconds, 1), "threads": a.threads})


if __name__ == "__main__":
    main()
