"""Regularisation experiments for the text models, in one process (not the product path).

Reads a lake's features/reviews and the Word2Vec matrix the features stage wrote, holds out the
trainer's validation split (trainer.validation_mask, seed 42, 10%), trains models/text.py's TextCNN
or BiGRU with Adam until the validation loss stops falling (patience 3; the best epoch's weights
kept, as the trainer does) and prints validation and test AUC per setting. One process and one
thread, batch 160 at lr 0.002: what 2 Horovod ranks of batch 80 at lr 0.001 each see.

    .venv/bin/python scripts/bench/text_regularisation.py --lake lake/samples/fine_food \
        --date 2026-11-22 '{}' '{"word_dropout": 0.25}' '{"static": true}'

Settings (JSON, one per argument): kind (textcnn|textrnn), seed, word_dropout (a real token
replaced by the unknown id with this probability while training), weight_decay (AdamW), static
(frozen embeddings), epochs, lr, batch. --embeddings swaps in another matrix (same vocabulary).
docs/text-quality.md holds what it measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))
from deepmine.deep.models import build  # noqa: E402
from deepmine.deep.trainer import validation_mask  # noqa: E402


def load(lake: str, date: str, embeddings: str | None):
    t = pq.read_table(f"{lake}/features/reviews/run_date={date}").to_pandas()
    x = torch.tensor(np.stack(t["features"].to_numpy()), dtype=torch.float32)
    matrix = np.load(embeddings or f"{lake}/features/reviews_vocabulary/run_date={date}/embeddings.npy")
    return (x, torch.tensor(t["label"].to_numpy()), torch.tensor(t["row_id"].to_numpy()),
            torch.tensor((t["split"] == "train").to_numpy()), torch.tensor(matrix))


def run(data, kind="textcnn", seed=42, epochs=20, patience=3, lr=0.002, batch=160,
        weight_decay=0.0, word_dropout=0.0, static=False) -> dict:
    x, y, row_id, train, matrix = data
    held = validation_mask(row_id, 0.1, 42)
    fit, valid, test = train & (y >= 0) & ~held, train & (y >= 0) & held, ~train & (y >= 0)
    torch.manual_seed(seed)
    model = build({"kind": kind, "vocab_size": matrix.shape[0], "embedding_dim": matrix.shape[1],
                   "n_classes": 2, "max_tokens": x.shape[1], "freeze_embeddings": static})
    model.load_embeddings(matrix)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay
                 else torch.optim.Adam(params, lr=lr))

    @torch.no_grad()
    def score(mask):
        model.eval()
        logits = torch.cat([model(x[mask][i:i + 500]) for i in range(0, int(mask.sum()), 500)])
        p = torch.softmax(logits, 1)[:, 1].numpy()
        return (float(F.cross_entropy(logits, y[mask])), roc_auc_score(y[mask].numpy(), p),
                float(np.mean((p >= 0.5) == (y[mask].numpy() == 1))))

    best, best_state, since, epoch, t0 = float("inf"), None, 0, 0, time.time()
    for epoch in range(epochs):
        model.train()
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(int(fit.sum()), generator=g)
        xf, yf = x[fit], y[fit]
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            xb = xf[idx]
            if word_dropout:
                xb = xb.masked_fill((torch.rand(xb.shape, generator=g) < word_dropout) & (xb > 0), 1.0)
            loss = F.cross_entropy(model(xb), yf[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        loss = score(valid)[0]
        if loss < best * (1 - 0.001):
            best, best_state, since = loss, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            since += 1
            if since >= patience:
                break
    model.load_state_dict(best_state)
    val_loss, val_auc, _ = score(valid)
    _, test_auc, test_acc = score(test)
    return {"val_loss": round(val_loss, 4), "val_auc": round(val_auc, 4),
            "test_auc": round(test_auc, 4), "test_accuracy": round(test_acc, 4),
            "epochs": epoch + 1, "seconds": round(time.time() - t0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--date", required=True)
    parser.add_argument("--embeddings", default=None)
    parser.add_argument("settings", nargs="*", default=["{}"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load(args.lake, args.date, args.embeddings)
    for setting in args.settings:
        print(json.dumps({"setting": json.loads(setting), **run(data, **json.loads(setting))}),
              flush=True)


if __name__ == "__main__":
    main()
