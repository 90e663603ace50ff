"""The NCF task of the training loop (`TrainArgs.task` "ncf", run by deepmine.deep.trainer.train
on every Horovod rank) and the leave-one-out ranking metrics. Knows nothing of Spark.

Each epoch reads one pre-sampled training set (`args.negative_sets[epoch % len]`: the positives
and their sampled negatives, written by Spark as Petastorm shards, deepmine.deep.ncf), this rank's
row groups of it, and minimizes binary cross-entropy of the pair's logit against its label. After
every epoch the validation lists (`args.eval_urls`: per user one held-out positive among sampled
items the user never touched) give HR@k and NDCG@k, summed across ranks; early stopping keeps the
best epoch by HR@k (ties: the higher NDCG@k), as the CNN keeps its best validation accuracy. The
rest is the shared loop's: lockstep batches, checkpoints every epoch with resume, the budget,
retries after a NaN loss (`failure` nan_loss).

A NeuMF started from pretrained GMF and MLP weights (`args.init_weights_url`, deepmine.deep.ncf
with ncf.pretrain) is trained as He et al. do, with plain SGD (`spec["optimizer"]` "sgd": the
trainer's distributed optimizer averages the gradients across ranks, the step is
w -= lr x gradient, and the trainer's Adam never steps, so it gathers no momentum the
pretrained weights do not have); its starting weights are scored on the validation lists first
and count as the best so far (`best_epoch` -1), so training keeps them unless an epoch beats them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F


def ranks_of_targets(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target candidate among its candidates (rows of `scores`), by
    score descending; a tie with another candidate counts against the target when that candidate
    comes first in the list (the lists are in a seeded random order, so ties are broken at
    random, neither always for nor always against the target)."""
    scores = np.asarray(scores, dtype=np.float64)
    target = np.asarray(target, dtype=np.int64)
    rows = np.arange(len(scores))
    mine = scores[rows, target][:, None]
    before = np.arange(scores.shape[1])[None, :] < target[:, None]
    return ((scores > mine) | ((scores == mine) & before)).sum(axis=1)


def hit_and_ndcg(scores: np.ndarray, target: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: HR@k (1 when the target ranks in the first k) and NDCG@k (1 / log2(rank + 2) when
    it does, rank 0-based; one relevant item, so the ideal DCG is 1): the NCF paper's protocol."""
    rank = ranks_of_targets(scores, target)
    hit = (rank < k).astype(np.float64)
    return hit, hit / np.log2(rank + 2.0)


def pair_input(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The models' input: batch x 2 floats (user index, item index)."""
    return torch.stack([users.reshape(-1).float(), items.reshape(-1).float()], dim=1)


@torch.no_grad()
def score_lists(model, users: torch.Tensor, items: torch.Tensor, device) -> torch.Tensor:
    """Logits of every (user, candidate) of `items` (batch x candidates), same shape."""
    n, c = items.shape
    x = pair_input(users.reshape(-1, 1).expand(n, c), items).to(device)
    return model(x).reshape(n, c).cpu()


@torch.no_grad()
def _validate(args, r, model, device) -> dict[str, float]:
    from deepmine.deep.trainer import _batches
    model.eval()
    hits = ndcg = users = 0.0
    for batch in _batches(args, args.eval_urls, r, 0, ["user", "items", "target"], shuffle=False):
        scores = score_lists(model, batch["user"], batch["items"], device).double().numpy()
        hit, gain = hit_and_ndcg(scores, batch["target"].numpy(), args.top_k)
        hits, ndcg, users = hits + hit.sum(), ndcg + gain.sum(), users + len(hit)
    hits, ndcg, users = r.sum([hits, ndcg, users], "ncf_validation").tolist()
    return {"hr": hits / max(users, 1.0), "ndcg": ndcg / max(users, 1.0), "users": int(users)}


def sgd_step(optimizer, params: list[torch.nn.Parameter], loss: torch.Tensor | None,
             lr: float) -> None:
    """One plain SGD step through the trainer's distributed optimizer: gradients (zeros for a rank
    with no batch left, as the trainer's step does) averaged across ranks by its `synchronize`,
    then w -= lr x gradient; the wrapped optimizer's own step is not taken."""
    from deepmine.deep.trainer import gradients
    gradients(optimizer, params, loss)
    optimizer.synchronize()
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)


def train_ncf(args, r, model, params, optimizer, store, state, device, ctx) -> dict[str, Any]:
    import time
    from deepmine.deep.trainer import (EarlyStop, _batches, _clone, _epoch_stop, _finite, _save,
                                       _step, _summary, seed_epoch)
    history: list[dict] = list(state["history"]) if state else []
    if state and state.get("finished"):
        return {"rank": r.rank, "size": r.size, "summary": state["summary"],
                "history": history if r.rank == 0 else []}
    if not args.negative_sets:
        raise ValueError("task ncf: no training sets (negative_sets) to read")
    start = state["epoch"] + 1 if state else 0
    stop = EarlyStop(args.patience, args.min_delta, state.get("early_stop") if state else None)
    best_model = state.get("best_model") if state else None
    elapsed = float(state.get("elapsed", 0.0)) if state else 0.0
    stop_reason, failure, epoch = "max_epochs", None, start - 1
    k = args.top_k
    if args.spec.get("optimizer") == "sgd":
        sgd_lr = ctx["lr"] * r.size  # per rank, scaled by the number of ranks as Adam's is

        def step(loss):
            sgd_step(optimizer, params, loss, sgd_lr)
    else:
        def step(loss):
            _step(optimizer, params, loss)
    init_val = state.get("init_val") if state else None
    if args.init_weights_url and state is None:  # the starting weights are the best so far
        init_val = _validate(args, r, model, device)
        if init_val["users"]:
            stop.update(-1, 1.0 - init_val["ndcg"], init_val["hr"])
            best_model = _clone(model.state_dict())
        r.log(f"{args.log_prefix} starting weights: val_hr@{k}={init_val['hr']:.4f} "
              f"val_ndcg@{k}={init_val['ndcg']:.4f}")
    for epoch in range(start, args.epochs):
        seed_epoch(args.seed, epoch, r.rank)
        model.train()
        urls = args.negative_sets[epoch % len(args.negative_sets)]
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        for batch in r.lockstep(_batches(args, urls, r, epoch, ["user", "item", "label"],
                                         shuffle=True)):
            if batch is None or len(batch["label"]) == 0:
                step(None)
                continue
            x = pair_input(batch["user"], batch["item"]).to(device)
            y = batch["label"].float().to(device)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            step(loss)
            loss_sum += loss.item() * len(y)
            seen += len(y)
        seconds = time.perf_counter() - t0
        total_loss, total_seen = r.sum([loss_sum, seen], "ncf_train_loss").tolist()
        val = _validate(args, r, model, device)
        elapsed += time.perf_counter() - t0
        entry = {"epoch": epoch, "negative_set": epoch % len(args.negative_sets),
                 "loss": total_loss / max(total_seen, 1), "samples": int(total_seen),
                 "seconds": round(seconds, 3), "samples_per_s": round(total_seen / seconds, 1),
                 f"val_hr_at_{k}": val["hr"], f"val_ndcg_at_{k}": val["ndcg"],
                 "attempt": ctx["attempt"]}
        history.append(entry)
        improved = False
        if not _finite(entry["loss"]):
            failure = stop_reason = "nan_loss"
        else:
            # the validation lists decide (HR, ties by NDCG); none (every user too short to
            # hold one out): the training loss
            improved = stop.update(epoch, *((1.0 - val["ndcg"], val["hr"]) if val["users"]
                                            else (entry["loss"], None)))
            if improved:
                best_model = _clone(model.state_dict())
        r.log(f"{args.log_prefix} epoch {epoch + 1}/{args.epochs} loss={entry['loss']:.4f} "
              f"val_hr@{k}={val['hr']:.4f} val_ndcg@{k}={val['ndcg']:.4f} "
              f"{entry['samples_per_s']:.0f} samples/s{' *' if improved else ''}")
        stop_reason = _epoch_stop(args, r, stop, failure, epoch, elapsed, t0)
        if failure is not None or stop_reason != "max_epochs" or epoch + 1 >= args.epochs:
            break
        _save(args, r, store, epoch, model, optimizer,
              {"history": history, "early_stop": stop.state(), "best_model": best_model,
               "elapsed": elapsed, "attempt": ctx["attempt"], "attempts": ctx["attempts"],
               "init_val": init_val})
    if best_model is not None and failure != "nan_loss":
        model.load_state_dict(best_model)
    summary = _summary(ctx, history, best_epoch=stop.best_epoch, stop_reason=stop_reason,
                       best_val_hr=stop.best_accuracy, failure=failure,
                       seconds=round(elapsed, 3),
                       **({f"init_val_hr_at_{k}": init_val["hr"],
                           f"init_val_ndcg_at_{k}": init_val["ndcg"]} if init_val else {}))
    r.log(f"{args.log_prefix} stopped ({stop_reason}) after {len(history)} epochs; best epoch "
          f"{stop.best_epoch + 1}, val_hr@{k} {stop.best_accuracy:.4f}")
    _save(args, r, store, max(epoch, 0), model, optimizer,
          {"history": history, "finished": True, "summary": summary, "attempt": ctx["attempt"],
           "attempts": ctx["attempts"]})
    return {"rank": r.rank, "size": r.size, "summary": summary,
            "history": history if r.rank == 0 else []}
