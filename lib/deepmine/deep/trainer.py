"""The training loop every Horovod rank runs: `train(args)`. It knows nothing of Spark.

Launched by `deepmine.deep.launch.run_on_spark` (horovod.spark.run, from `deepmine train`) or by
`horovodrun ... python -m deepmine.deep.trainer ARGS.json` (scripts/train_horovodrun.sh). Each rank:
`hvd.init()`, seeds, takes the GPU of its local rank when there is one (Horovod's collectives then
run over NCCL if it was built with it; Gloo on CPU), reads its shard through `open_loader`,
broadcasts parameters and optimizer state from rank 0, wraps the optimizer in
`DistributedOptimizer` and scales the learning rate by the number of ranks. Only rank 0 logs and
writes checkpoints (every epoch) under `args.checkpoint_dir`.

Tasks:
  cnn   cross-entropy on the labelled rows of the `train` files (a label of -1, unknown, is for
        clustering and scoring only); test accuracy after every epoch.
  dec   deep clustering: up to `pretrain_epochs` of reconstruction; then cluster centres from the
        embeddings of every row (gathered on rank 0): K-means on them (`dec_init` kmeans), or
        a Gaussian mixture on their UMAP manifold with each centre the mean embedding of its
        cluster (`dec_init` umap, the manifold step of N2D, McConville et al. 2020). With
        `dec_init_choice` input, K-means' `kmeans_n_init` restarts are kept apart and the one
        whose partition has the smallest within-cluster sum of squares of the *input* vectors
        starts DEC (summed across ranks), instead of the smallest in the embedding (K-means' own
        choice, `embedding`): an embedding can make a wrong partition and the right one near
        equals (customers, issue 13: 265.0 against 265.9 in the embedding, 420 against 385 in
        the input vectors; accuracy 0.62 against 0.97), and which one won was a coin flip; then
        `dec_warm_epochs` epochs whose target is that starting partition itself (0.9 on its
        cluster: a partition found on the manifold is not the nearest-centre partition of the
        embedding space, and these epochs teach it to the encoder and the centres); then DEC/IDEC
        epochs: at the start of each, the soft assignments Q of every row give the target P
        (cluster frequencies summed across ranks) and the hard assignments; training stops when
        fewer than `dec_tolerance` of the assignments changed since the previous epoch, or after
        `dec_max_epochs` (warm epochs included). With `augment_shift` (images), every training
        input is shifted by up to that many pixels, as DEC-DA does (Guo et al. 2018); the
        target P comes from the clean images.

  ncf   neural collaborative filtering (deepmine.deep.ncf_loop): binary cross-entropy on the
        positives and sampled negatives of one pre-sampled set per epoch; validated by HR@k and
        NDCG@k on held-out leave-one-out lists.

Train until learned, within a budget. A seeded `validation_fraction` of the training rows (by a
hash of row_id and seed, the same on every rank and every epoch) is held out of the gradient. The
CNN and the autoencoder's pretraining are scored on it after every epoch (CNN: accuracy, ties to
the lower loss; pretraining: reconstruction loss); each stops when the score has not improved for
`patience` epochs, at its most epochs, or when the next epoch would overrun `budget_seconds`
(pretraining gets PRETRAIN_BUDGET_SHARE of it, DEC the rest), and goes on from its best epoch's
weights. DEC/IDEC's own epochs have no fixed objective to validate (the target moves every epoch):
they stop on `dec_tolerance`, `dec_max_epochs` or the budget. The summary (`summary` in the final
checkpoint) says how many epochs ran, the best epoch and why each phase stopped.

Detect failure, then recover. An attempt fails when a loss is not finite (`nan_loss`); when the
best validation loss is no better than STALL_RATIO x the loss of a model that learned nothing
(`stalled`: the mean row for an autoencoder, the class frequencies for the CNN; judged when
patience ran out, or at the most epochs after more than the patience, never on a budget stop:
slow is not dead, and the quality gate judges that model); when the embeddings of every row have
(near) zero spread (`embedding_collapsed`); or when one cluster holds
more than COLLAPSE_SHARE of the rows (`one_cluster`). Then, up to `max_retries` times, it starts
again from a fresh initialization (seed + RETRY_SEED_STEP x attempt) at `recovery_lr_factor` times
the previous learning rate, with a fresh budget; every attempt is in the summary (`attempts`) and
the log. After the last retry the last attempt is kept with its `failure` named: the stage
publishes it as degraded.

Ranks in lockstep: every step is an allreduce, so every rank must take the same number of steps.
Row groups are equal to within a row, but a rank can still end up with one batch more than
another; before each step the ranks agree (a one-int allreduce) whether anyone still has data,
and a rank that has run out takes a zero-gradient step. No row is dropped or read twice.

Resume: the newest checkpoint whose input fingerprint matches is loaded (on rank 0, broadcast to
the others) and training continues with the next epoch. Everything random is re-seeded at each
epoch from (seed, epoch, rank) and the reader's order is fixed by (seed, epoch), so a resumed run
retraces the uninterrupted one: same final weights (a stop on `budget_seconds` is the one
decision taken from the clock; the time already spent is in the checkpoint).
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from deepmine.deep.models.contrastive import nt_xent, random_view

CHECKPOINT = re.compile(r"^epoch-(\d{4})\.pt$")


@dataclass
class TrainArgs:
    # "cnn" (classifiers: the image CNN and the text models), "dec" or "ncf" (recommenders)
    task: str
    # the model's name in the lake: cnn, textcnn, textrnn, autoencoder_customers,
    # autoencoder_images
    name: str
    spec: dict[str, Any]  # deepmine.deep.models.build(spec)
    train_urls: list[str]  # Parquet files read for training (row_id, features[, label])
    checkpoint_dir: str  # URL; rank 0 writes epoch-NNNN.pt there
    eval_urls: list[str] = field(default_factory=list)  # cnn: the test files
    n_rows: int = 0  # dec: rows in train_urls (row_id is 0..n_rows-1)
    epochs: int = 30  # cnn: most epochs (early stopping usually ends it sooner)
    pretrain_epochs: int = 30  # dec: most pretraining epochs
    patience: int = 3  # epochs without a better validation score before a phase stops
    min_delta: float = 0.001  # a validation loss must fall by this share to count as better
    validation_fraction: float = 0.1  # of the training rows, held out of the gradient (seeded)
    budget_seconds: float = 0.0  # wall-clock seconds of training per attempt; 0 = no limit
    # a warm start: the URL of a state_dict (the champion's weights.pt) every attempt starts
    # from instead of a fresh initialisation; empty = from scratch
    init_weights_url: str = ""
    # pruning's fine-tune (deepmine.deep.prune): this share of the conv and linear weights,
    # smallest in magnitude across all of them, masked to zero from the start; 0 = no pruning
    prune_sparsity: float = 0.0
    max_retries: int = 2  # fresh starts after a detected failure
    recovery_lr_factor: float = 0.3  # each retry's learning rate: the previous one's times this
    pretrain_noise: float = 0.0  # dec: std of Gaussian noise added to the inputs while pretraining
    augment_shift: int = 0  # dec on images: random shift of up to this many pixels per input
    contrastive_weight: float = 0.0  # dec on images: NT-Xent of two views beside reconstruction
    # dec: centres from "kmeans" on the embeddings or "umap" (N2D); "weights" keeps the centres
    # of init_weights_url (a warm start: the champion's clusters, each row in its nearest)
    dec_init: str = "kmeans"
    # dec, kmeans: the restart kept: smallest within-cluster sum of squares in the "embedding"
    # (K-means' own choice) or of the "input" vectors
    dec_init_choice: str = "embedding"
    dec_warm_epochs: int = 0  # dec: first DEC epochs whose target is the starting partition
    dec_max_epochs: int = 4
    batch_size: int = 128
    lr: float = 0.001
    seed: int = 42
    device: str = "auto"
    reader_pool: str = "read_ahead"
    shuffle_buffer: int = 2048
    dec_variant: str = "idec"
    dec_gamma: float = 0.1
    dec_tolerance: float = 0.001
    kmeans_n_init: int = 10
    # ncf (deepmine.deep.ncf_loop): the training files of each pre-sampled negative set (epoch e
    # reads set e mod their number) and the cut-off of the validation HR/NDCG
    negative_sets: list[list[str]] = field(default_factory=list)
    top_k: int = 10
    fingerprint: str = ""  # of the inputs and settings: a checkpoint of other inputs is not resumed
    log_prefix: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainArgs":
        return cls(**json.loads(text))


# --------------------------------------------------------------------------- checkpoints

class CheckpointStore:
    """epoch-NNNN.pt files under a URL (pyarrow file systems); written whole, then renamed."""

    def __init__(self, url: str, keep: int = 2):
        import pyarrow.fs as pafs
        self.url = url
        self.fs, self.root = pafs.FileSystem.from_uri(url)
        self.keep = keep

    def epochs(self) -> list[int]:
        import pyarrow.fs as pafs
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return sorted(int(m.group(1)) for i in infos if (m := CHECKPOINT.match(i.base_name)))

    def _path(self, epoch: int) -> str:
        return f"{self.root}/epoch-{epoch:04d}.pt"

    def load(self, epoch: int) -> dict[str, Any]:
        with self.fs.open_input_stream(self._path(epoch)) as f:
            return torch.load(io.BytesIO(f.read()), weights_only=True)

    def load_latest(self) -> dict[str, Any] | None:
        epochs = self.epochs()
        return self.load(epochs[-1]) if epochs else None

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self.fs.create_dir(self.root, recursive=True)
        tmp = f"{self.root}/.epoch-{epoch:04d}.pt.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(buf.getvalue())
        self.fs.move(tmp, self._path(epoch))
        for old in self.epochs()[:-self.keep]:
            self.fs.delete_file(self._path(old))

    def clear(self) -> None:
        for epoch in self.epochs():
            self.fs.delete_file(self._path(epoch))


# --------------------------------------------------------------------------- helpers

def load_state(url: str) -> dict[str, torch.Tensor]:
    """A state_dict at a URL (a warm start's weights.pt), loaded as weights only."""
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(url)
    with fs.open_input_stream(path) as f:
        return torch.load(io.BytesIO(f.read()), weights_only=True)


def load_matrix(url: str) -> torch.Tensor:
    """A NumPy .npy file at a URL (pretrained embeddings), as a float32 tensor."""
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(url)
    with fs.open_input_stream(path) as f:
        return torch.from_numpy(np.load(io.BytesIO(f.read())).astype(np.float32))


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but torch sees no GPU on this host")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Everything random in an epoch (dropout, the loader's row shuffle) from (seed, epoch, rank)."""
    torch.manual_seed(seed * 100_003 + epoch * 1_009 + rank)
    np.random.seed((seed * 7919 + epoch * 31 + rank) % 2 ** 32)


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    return buf.getvalue()


class Rank:
    """This process's place in the job and the collectives the loop uses."""

    def __init__(self, hvd):
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()

    def log(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    def sum(self, values: list[float] | torch.Tensor, name: str) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=torch.float64).cpu()
        return self.hvd.allreduce(t, op=self.hvd.Sum, name=name)

    def lockstep(self, batches: Iterator[dict]) -> Iterator[dict | None]:
        """Batches of this rank until every rank is out; None where this rank is out early."""
        it = iter(batches)
        while True:
            batch = next(it, None)
            if self.sum([0.0 if batch is None else 1.0], "lockstep").item() == 0:
                return
            yield batch


def _batches(args: TrainArgs, urls: list[str], r: Rank, epoch: int, columns: list[str],
             shuffle: bool, shuffle_rows: bool | None = None) -> Iterator[dict]:
    """This rank's batches of `epoch`; `shuffle` orders row groups by (seed, epoch), and
    `shuffle_rows` (default: `shuffle`) also mixes rows across them."""
    from deepmine.deep.loader import open_loader
    rows = shuffle if shuffle_rows is None else shuffle_rows
    with open_loader(urls, r.rank, r.size, columns, args.batch_size, seed=args.seed, epoch=epoch,
                     shuffle=shuffle, shuffle_buffer=args.shuffle_buffer if rows else 0,
                     pool=args.reader_pool) as loader:
        yield from loader


def shift_images(x: torch.Tensor, height: int, width: int, max_shift: int) -> torch.Tensor:
    """Flat images, each moved by its own random (dy, dx) in [-max_shift, max_shift] pixels,
    zeros shifted in (the background of Fashion-MNIST-like images)."""
    if max_shift <= 0:
        return x
    n = x.shape[0]
    pad = F.pad(x.view(n, 1, height, width), (max_shift,) * 4)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (n,), device=x.device) for _ in range(2))
    rows = (dy[:, None] + torch.arange(height, device=x.device)[None, :])  # n x height
    cols = (dx[:, None] + torch.arange(width, device=x.device)[None, :])  # n x width
    out = pad[torch.arange(n, device=x.device)[:, None, None], 0, rows[:, :, None],
              cols[:, None, :]]
    return out.reshape(n, height * width)


def pretrain_loss(model, x: torch.Tensor, noise: float, contrastive_weight: float,
                  spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reconstruction loss, contrastive loss) of a pretraining batch `x` for a
    ClusteringModel: a denoising autoencoder (as DEC pretrains: reconstruct x from a copy with
    Gaussian `noise`), plus, with `contrastive_weight`, NT-Xent between two random views of each
    image through the model's projection head (`models.contrastive`)."""
    noisy = x + noise * torch.randn_like(x) if noise else x
    recon, _ = model.autoencoder(noisy)
    recon_loss = F.mse_loss(recon, x)
    if not contrastive_weight:
        return recon_loss, recon_loss, torch.zeros(())
    contrast = nt_xent(*(model.projection(model.autoencoder.encode(
        random_view(x, spec["height"], spec["width"]))) for _ in range(2)))
    return recon_loss + contrastive_weight * contrast, recon_loss, contrast


def gradients(opt, params: list[torch.nn.Parameter], loss: torch.Tensor | None) -> None:
    """This step's gradients in `params`; `loss` None = this rank has no batch left: zero
    gradients, so that the collective averaging still has this rank's part."""
    opt.zero_grad()
    if loss is None:
        from deepmine.deep.lazy_adam import empty_sparse_grad, has_sparse_grad
        for p in params:
            p.grad = empty_sparse_grad(p) if has_sparse_grad(p) else torch.zeros_like(p)
    else:
        loss.backward()


def _step(opt, params: list[torch.nn.Parameter], loss: torch.Tensor | None) -> None:
    """One optimizer step (`gradients`, then the optimizer's own step)."""
    gradients(opt, params, loss)
    opt.step()


# --------------------------------------------------------------------------- stopping and failure

PRETRAIN_BUDGET_SHARE = 0.6  # of budget_seconds, for pretraining when DEC epochs follow it
STALL_RATIO = 0.9  # best validation loss at or above this share of the learned-nothing loss
# embedding variance / mean squared norm below this: collapsed (a dead image autoencoder measured
# 3e-4 to 4e-4, healthy ones 0.5 to 0.95)
EMBEDDING_SPREAD_MIN = 1e-3
COLLAPSE_SHARE = 0.9  # one cluster holding more than this share of the rows: collapsed
RETRY_SEED_STEP = 1009  # a retry's weights come from seed + RETRY_SEED_STEP x attempt


def validation_mask(row_id: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """True for the rows held out for validation: a multiplicative hash of (row_id, seed) below
    `fraction` of its range. The same rows on every rank and every epoch, whatever the shard."""
    if fraction <= 0:
        return torch.zeros(row_id.shape, dtype=torch.bool)
    h = ((row_id.long() + seed * 7919) * 2654435761) % (2 ** 32)
    return h.double() / 2 ** 32 < fraction


class EarlyStop:
    """The best validation score so far, its epoch and the epochs since; `better` for a lower loss
    (by `min_delta` of it) or, with `accuracy`, a higher accuracy (ties: the lower loss)."""

    def __init__(self, patience: int, min_delta: float, state: dict | None = None):
        self.patience, self.min_delta = patience, min_delta
        s = state or {}
        self.best_loss = s.get("best_loss", math.inf)
        self.best_accuracy = s.get("best_accuracy", -math.inf)
        self.best_epoch = s.get("best_epoch", -1)
        self.since_best = s.get("since_best", 0)

    def update(self, epoch: int, loss: float, accuracy: float | None = None) -> bool:
        if accuracy is not None:
            better = accuracy > self.best_accuracy or (
                accuracy == self.best_accuracy and loss < self.best_loss)
        else:
            better = loss < self.best_loss * (1 - self.min_delta) if math.isfinite(
                self.best_loss) else math.isfinite(loss)
        if better:
            self.best_loss, self.best_epoch, self.since_best = loss, epoch, 0
            if accuracy is not None:
                self.best_accuracy = accuracy
        else:
            self.since_best += 1
        return better

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def state(self) -> dict:
        return {"best_loss": self.best_loss, "best_accuracy": self.best_accuracy,
                "best_epoch": self.best_epoch, "since_best": self.since_best}


def stalled(best_loss: float, trivial_loss: float) -> bool:
    """The best validation loss is no better than STALL_RATIO of a model that learned nothing."""
    return trivial_loss > 0 and best_loss >= STALL_RATIO * trivial_loss


def embedding_spread(z: torch.Tensor) -> float:
    """Total variance of the embeddings over their mean squared norm (scale-free; 0 = one point)."""
    z = z.double()
    return float(z.var(0, unbiased=False).sum() / (z.pow(2).sum(1).mean() + 1e-12))


def largest_cluster_share(assign: torch.Tensor, n_clusters: int) -> float:
    if len(assign) == 0:
        return 0.0
    return float(torch.bincount(assign.long(), minlength=n_clusters).max()) / len(assign)


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _out_of_time(r: "Rank", budget: float, elapsed: float, epoch_seconds: float) -> bool:
    """Would one more epoch overrun `budget` (0 = none)? Agreed by every rank (clocks differ)."""
    if budget <= 0:
        return False
    return r.sum([1.0 if elapsed + epoch_seconds > budget else 0.0], "budget").item() > 0


def _epoch_stop(args, r: "Rank", stop, failure, epoch: int, elapsed: float, t0: float) -> str:
    """Why training ends after `epoch`: patience, budget (one more epoch would overrun it), or
    max_epochs (it goes on when nothing failed and epochs remain)."""
    if failure is None and stop.exhausted:
        return "patience"
    if failure is None and epoch + 1 < args.epochs and _out_of_time(
            r, args.budget_seconds, elapsed, time.perf_counter() - t0):
        return "budget"
    return "max_epochs"


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


# --------------------------------------------------------------------------- entry

def attempt_settings(args: TrainArgs, attempt: int) -> tuple[float, int]:
    """(learning rate per rank, weight seed) of attempt 0, 1, ...: the documented recovery."""
    return args.lr * args.recovery_lr_factor ** attempt, args.seed + RETRY_SEED_STEP * attempt


def train(args: TrainArgs | dict) -> dict[str, Any]:
    """Run on every rank. Returns a summary (rank 0: the history; the weights are in the final
    checkpoint, `checkpoint_dir/epoch-NNNN.pt`, key `model`, its `summary` says how training
    ended)."""
    import horovod.torch as hvd
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if isinstance(args, dict):
        args = TrainArgs(**args)
    hvd.init()
    r = Rank(hvd)
    device = pick_device(args.device, hvd.local_rank())
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, hvd.local_size())))

    store = CheckpointStore(args.checkpoint_dir)
    state = None
    if r.rank == 0:
        state = store.load_latest()
        if state is not None and state.get("fingerprint") != args.fingerprint:
            r.log(f"{args.log_prefix} checkpoints in {args.checkpoint_dir} are of other inputs: "
                  "starting afresh")
            store.clear()
            state = None
    # a fixed name: the default (the type's name) differs between a rank holding a dict and one
    # holding None, and mismatched names deadlock
    state = hvd.broadcast_object(state, root_rank=0, name="checkpoint")
    attempt = int(state.get("attempt", 0)) if state else 0
    attempts: list[dict] = list(state.get("attempts", [])) if state else []
    from deepmine.deep.models import build
    while True:
        lr, seed = attempt_settings(args, attempt)
        torch.manual_seed(seed)
        model = build(args.spec)
        if args.spec.get("embeddings_url") and state is None:
            model.load_embeddings(load_matrix(args.spec["embeddings_url"]))
        if args.init_weights_url and state is None:
            model.load_state_dict(load_state(args.init_weights_url))
        if args.prune_sparsity > 0:  # masks from the starting weights; a resume loads its own
            from deepmine.deep.prune import apply_global_pruning
            apply_global_pruning(model, args.prune_sparsity)
        model = model.to(device)
        # frozen weights (static pretrained embeddings) have no gradient to average
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        # lr scaled by the number of ranks; sparse embedding gradients (NCF's large tables)
        # update only their rows, and Horovod gathers only those (deepmine.deep.lazy_adam)
        from deepmine.deep.lazy_adam import LazyAdam, has_sparse_grad
        adam = LazyAdam if any(has_sparse_grad(p) for p in params) else torch.optim.Adam
        optimizer = adam(params, lr=lr * r.size)
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=named)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            r.log(f"{args.log_prefix} resuming after epoch {state['epoch']} from "
                  f"{args.checkpoint_dir}")
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        ctx = {"attempt": attempt, "attempts": attempts, "lr": lr, "seed": seed}
        if args.task == "ncf":
            from deepmine.deep.ncf_loop import train_ncf as loop
        else:
            loop = _train_cnn if args.task == "cnn" else _train_dec
        result = loop(args, r, model, params, optimizer, store, state, device, ctx)
        failure = result["summary"].get("failure")
        if failure is None or attempt >= args.max_retries:
            if failure:
                r.log(f"{args.log_prefix} attempt {attempt + 1} failed ({failure}); no retries "
                      f"left (train.max_retries {args.max_retries}): keeping it, marked failed")
            return result
        attempts.append({k: v for k, v in result["summary"].items() if k != "attempts"})
        next_lr, next_seed = attempt_settings(args, attempt + 1)
        r.log(f"{args.log_prefix} attempt {attempt + 1} failed ({failure}): retrying from a fresh "
              f"initialization (seed {next_seed}) at learning rate {next_lr:g} per rank")
        if r.rank == 0:
            store.clear()
        attempt, state = attempt + 1, None


def _save(args: TrainArgs, r: Rank, store: CheckpointStore, epoch: int, model, optimizer,
          extra: dict[str, Any]) -> None:
    if r.rank == 0:
        store.save(epoch, {"epoch": epoch, "fingerprint": args.fingerprint,
                           "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                           "optimizer": optimizer.state_dict(), **extra})


def _summary(ctx: dict, history: list[dict], **fields) -> dict[str, Any]:
    out = {"attempt": ctx["attempt"], "lr": ctx["lr"], "seed": ctx["seed"],
           "epochs_run": len(history), **fields}
    out["attempts"] = [*ctx["attempts"], {k: v for k, v in out.items() if k != "attempts"}]
    return out


def _train_cnn(args, r, model, params, optimizer, store, state, device, ctx) -> dict[str, Any]:
    history: list[dict] = list(state["history"]) if state else []
    if state and state.get("finished"):
        return {"rank": r.rank, "size": r.size, "summary": state["summary"],
                "history": history if r.rank == 0 else []}
    start = state["epoch"] + 1 if state else 0
    stop = EarlyStop(args.patience, args.min_delta, state.get("early_stop") if state else None)
    best_model = state.get("best_model") if state else None
    elapsed = float(state.get("elapsed", 0.0)) if state else 0.0
    trivial = float(state.get("trivial_loss", 0.0)) if state else 0.0
    stop_reason, failure, epoch = "max_epochs", None, start - 1
    for epoch in range(start, args.epochs):
        seed_epoch(args.seed, epoch, r.rank)
        model.train()
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        for batch in r.lockstep(_batches(args, args.train_urls, r, epoch,
                                         ["row_id", "features", "label"], shuffle=True)):
            keep = None
            if batch is not None:
                y = batch["label"]
                # unlabelled images (-1) are for clustering and scoring, not this loss
                keep = (y >= 0) & ~validation_mask(batch["row_id"], args.validation_fraction,
                                                   args.seed)
            if keep is None or int(keep.sum()) < 2:  # batch norm needs two rows
                _step(optimizer, params, None)
                continue
            x, y = batch["features"][keep].to(device), batch["label"][keep].to(device)
            loss = F.cross_entropy(model(x), y)
            _step(optimizer, params, loss)
            loss_sum += loss.item() * len(y)
            seen += len(y)
        seconds = time.perf_counter() - t0
        total_loss, total_seen = r.sum([loss_sum, seen], "train_loss").tolist()
        _average_buffers(r, model)
        val = _validate_cnn(args, r, model, device)
        trivial = val["prior_loss"]
        correct, tested = _evaluate_cnn(args, r, model, device)
        elapsed += time.perf_counter() - t0
        entry = {"epoch": epoch, "loss": total_loss / max(total_seen, 1), "samples": int(total_seen),
                 "seconds": round(seconds, 3), "samples_per_s": round(total_seen / seconds, 1),
                 "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                 "test_accuracy": correct / max(tested, 1), "attempt": ctx["attempt"]}
        history.append(entry)
        improved = False
        if not _finite(entry["loss"], entry["val_loss"]):
            failure = stop_reason = "nan_loss"
        else:
            # no validation rows (validation_fraction 0): the training loss decides
            improved = stop.update(epoch, *((val["loss"], val["accuracy"]) if val["rows"]
                                            else (entry["loss"], None)))
            if improved:
                best_model = _clone(model.state_dict())
        r.log(f"{args.log_prefix} epoch {epoch + 1}/{args.epochs} loss={entry['loss']:.4f} "
              f"val_loss={entry['val_loss']:.4f} val_accuracy={entry['val_accuracy']:.4f} "
              f"test_accuracy={entry['test_accuracy']:.4f} {entry['samples_per_s']:.0f} samples/s"
              f"{' *' if improved else ''}")
        stop_reason = _epoch_stop(args, r, stop, failure, epoch, elapsed, t0)
        done = failure is not None or stop_reason != "max_epochs" or epoch + 1 >= args.epochs
        if not done:
            _save(args, r, store, epoch, model, optimizer,
                  {"history": history, "early_stop": stop.state(), "best_model": best_model,
                   "elapsed": elapsed, "trivial_loss": trivial, "attempt": ctx["attempt"],
                   "attempts": ctx["attempts"]})
        else:
            break
    # judged when the loss stopped moving (patience ran out) or after more epochs than the
    # patience; not when the budget cut it short (slow is not dead: the gate judges that model)
    if failure is None and (stop_reason == "patience" or (
            stop_reason == "max_epochs" and len(history) > args.patience)) \
            and stalled(stop.best_loss, trivial):
        failure = "stalled"
    if best_model is not None and failure != "nan_loss":
        model.load_state_dict(best_model)
    summary = _summary(ctx, history, best_epoch=stop.best_epoch, stop_reason=stop_reason,
                       best_val_loss=stop.best_loss, best_val_accuracy=stop.best_accuracy,
                       trivial_val_loss=trivial, failure=failure, seconds=round(elapsed, 3))
    if failure:
        r.log(f"{args.log_prefix} FAILURE {failure}: best val_loss {stop.best_loss:.4f}, the "
              f"class frequencies' {trivial:.4f}")
    r.log(f"{args.log_prefix} stopped ({stop_reason}) after {len(history)} epochs; best epoch "
          f"{stop.best_epoch + 1}, val_accuracy {stop.best_accuracy:.4f}")
    _save(args, r, store, max(epoch, 0), model, optimizer,
          {"history": history, "finished": True, "summary": summary, "attempt": ctx["attempt"],
           "attempts": ctx["attempts"]})
    return {"rank": r.rank, "size": r.size, "summary": summary,
            "history": history if r.rank == 0 else []}


@torch.no_grad()
def _average_buffers(r: Rank, model) -> None:
    """Batch-norm running statistics differ per rank (each saw its own shard): average them, so
    every rank evaluates, and rank 0 saves, the same model."""
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            buf.copy_(r.hvd.allreduce(buf.cpu(), op=r.hvd.Average, name=f"buffer.{name}").to(buf.device))


@torch.no_grad()
def _validate_cnn(args, r, model, device) -> dict[str, float]:
    """Loss and accuracy on the held-out labelled training rows, and `prior_loss`: the
    cross-entropy of predicting their class frequencies (a model that learned nothing)."""
    model.eval()
    n_classes = args.spec["n_classes"]
    loss_sum, correct, counts = 0.0, 0, torch.zeros(n_classes, dtype=torch.float64)
    for batch in _batches(args, args.train_urls, r, 0, ["row_id", "features", "label"],
                          shuffle=False):
        y = batch["label"]
        keep = (y >= 0) & validation_mask(batch["row_id"], args.validation_fraction, args.seed)
        if not bool(keep.any()):
            continue
        y = y[keep].to(device)
        logits = model(batch["features"][keep].to(device))
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        counts += torch.bincount(y.cpu().long(), minlength=n_classes).double()
    loss_sum, correct = r.sum([loss_sum, correct], "validation").tolist()
    counts = r.sum(counts, "validation_classes")
    rows = float(counts.sum())
    share = counts[counts > 0] / max(rows, 1.0)
    return {"loss": loss_sum / max(rows, 1.0), "accuracy": correct / max(rows, 1.0),
            "rows": int(rows), "prior_loss": float(-(share * share.log()).sum()) if rows else 0.0}


@torch.no_grad()
def _evaluate_cnn(args, r, model, device) -> tuple[float, float]:
    if not args.eval_urls:
        return 0.0, 0.0
    model.eval()
    correct = tested = 0
    for batch in _batches(args, args.eval_urls, r, 0, ["features", "label"], shuffle=False):
        keep = batch["label"] >= 0  # unlabelled test images are not scored
        y = batch["label"][keep].to(device)
        if len(y):
            correct += int((model(batch["features"][keep].to(device)).argmax(1) == y).sum())
        tested += len(y)
    c, t = r.sum([correct, tested], "test_accuracy").tolist()
    return c, t


@torch.no_grad()
def _validate_reconstruction(args, r, model, device) -> dict[str, float]:
    """Reconstruction loss (clean inputs) on the held-out rows, and `mean_loss`: that of
    reconstructing every row as their mean vector (a model that learned nothing)."""
    model.eval()
    loss_sum, rows, total, squares = 0.0, 0, None, None
    for batch in _batches(args, args.train_urls, r, 0, ["row_id", "features"], shuffle=False,
                          shuffle_rows=False):
        keep = validation_mask(batch["row_id"], args.validation_fraction, args.seed)
        if not bool(keep.any()):
            continue
        x = batch["features"][keep].to(device)
        recon, _ = model.autoencoder(x)
        loss_sum += float(F.mse_loss(recon, x, reduction="sum")) / x.shape[1]
        rows += len(x)
        xd = x.double().cpu()
        total = xd.sum(0) if total is None else total + xd.sum(0)
        squares = xd.pow(2).sum(0) if squares is None else squares + xd.pow(2).sum(0)
    loss_sum, rows = r.sum([loss_sum, rows], "validation").tolist()
    dim = args.spec.get("in_dim") or args.spec["height"] * args.spec["width"]
    total = r.sum(total if total is not None else torch.zeros(dim), "validation_sum")
    squares = r.sum(squares if squares is not None else torch.zeros(dim), "validation_squares")
    mean = total / max(rows, 1.0)
    variance = (squares / max(rows, 1.0) - mean.pow(2)).clamp_min(0).mean()
    return {"loss": loss_sum / max(rows, 1.0), "rows": int(rows), "mean_loss": float(variance)}


@torch.no_grad()
def _soft_assignments(args, r, model, device, epoch: int, shuffle: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row_id, embedding, q) of every row of this rank's shard (its row groups)."""
    model.eval()
    ids, zs, qs = [], [], []
    for batch in _batches(args, args.train_urls, r, epoch, ["row_id", "features"], shuffle,
                          shuffle_rows=False):
        _, z, q = model(batch["features"].to(device))
        ids.append(batch["row_id"].long())
        zs.append(z.cpu())
        qs.append(q.cpu())
    return torch.cat(ids), torch.cat(zs), torch.cat(qs)


def _gather_by_row(r: Rank, hvd, ids: torch.Tensor, values: torch.Tensor, n_rows: int,
                   name: str) -> torch.Tensor:
    """Every rank's (row_id -> value) rows, as one tensor indexed by row_id, on every rank."""
    all_ids = hvd.allgather(ids, name=f"{name}.ids")
    all_values = hvd.allgather(values, name=f"{name}.values")
    out = torch.zeros((n_rows, *values.shape[1:]), dtype=values.dtype)
    out[all_ids] = all_values
    return out


UMAP_NEIGHBORS = 20  # N2D's settings: a local manifold, tightly packed clusters
WARM_TARGET = 0.9  # warm epochs: the target's weight on a row's starting cluster (rest spread)


def initial_partition(embeddings: np.ndarray, n_clusters: int, how: str, n_init: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres in the embedding space, cluster of every row): K-means on the embeddings
    (`kmeans`), or a Gaussian mixture on their UMAP manifold (n_clusters dimensions), each centre
    the mean embedding of its cluster (`umap`; N2D's choice of mixture: on one embedding of the
    70,000 Fashion-MNIST images its partitions scored 0.583-0.635 accuracy over ten seeds, K-means
    on the same manifold 0.585; scripts/bench/manifold.py)."""
    from sklearn.cluster import KMeans
    embeddings = embeddings.astype(np.float64)
    if how == "kmeans":
        km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(embeddings)
        return km.cluster_centers_, km.labels_
    if how != "umap":
        raise ValueError(f"dec_init {how!r}: expected kmeans or umap")
    manifold = umap_manifold(embeddings, n_clusters, seed)
    labels = manifold_mixture(manifold, n_clusters, n_init, seed).predict(manifold)
    # a component left empty keeps a centre at the overall mean rather than a NaN
    centers = np.stack([embeddings[labels == j].mean(0) if (labels == j).any()
                        else embeddings.mean(0) for j in range(n_clusters)])
    return centers, labels


def kmeans_restarts(embeddings: np.ndarray, n_clusters: int, n_init: int, seed: int
                    ) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """`n_init` K-means fits of the embeddings, each from its own k-means++ start (their seeds
    drawn from `seed`), kept apart: (centres, cluster of every row, within-cluster sum of squares
    in the embedding) of each."""
    from sklearn.cluster import KMeans
    embeddings = embeddings.astype(np.float64)
    out = []
    for start in np.random.RandomState(seed).randint(0, 2 ** 31 - 1, size=max(n_init, 1)):
        km = KMeans(n_clusters=n_clusters, n_init=1, random_state=int(start)).fit(embeddings)
        out.append((km.cluster_centers_, km.labels_, float(km.inertia_)))
    return out


def within_cluster_sums(x: torch.Tensor, partitions: torch.Tensor, n_clusters: int
                        ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """What the within-cluster sums of squares of rows `x` under each of `partitions` (one row
    per partition: the cluster of each row of x) are made of, addable across ranks and batches:
    the sum of each cluster's rows (partitions x clusters x dim), their counts (partitions x
    clusters) and the rows' total squared norm."""
    x = x.double().cpu()
    partitions = partitions.long().cpu()
    sums = torch.zeros((partitions.shape[0], n_clusters, x.shape[1]), dtype=torch.float64)
    counts = torch.zeros((partitions.shape[0], n_clusters), dtype=torch.float64)
    for i, labels in enumerate(partitions):
        sums[i].index_add_(0, labels, x)
        counts[i] += torch.bincount(labels, minlength=n_clusters).double()
    return sums, counts, float(x.pow(2).sum())


def within_cluster_ss(sums: torch.Tensor, counts: torch.Tensor, squares: float) -> np.ndarray:
    """Within-cluster sum of squares of each partition: sum |x|^2 - sum_j |S_j|^2 / n_j."""
    between = (sums.pow(2).sum(2) / counts.clamp_min(1.0)).sum(1)
    return (squares - between).numpy()


def restart_choice(embedding_ss: list[float], input_ss: np.ndarray | None, choice: str) -> int:
    """The restart that starts DEC: the smallest within-cluster sum of squares in the embedding
    (`embedding`), or of the input vectors (`input`; ties: the embedding's)."""
    if choice == "embedding" or input_ss is None:
        return int(np.argmin(embedding_ss))
    if choice != "input":
        raise ValueError(f"dec_init_choice {choice!r}: expected embedding or input")
    return int(np.lexsort((np.asarray(embedding_ss), np.asarray(input_ss)))[0])


@torch.no_grad()
def _input_within_ss(args, r, partitions: torch.Tensor, n_clusters: int) -> np.ndarray:
    """Within-cluster sum of squares of the input vectors of every row under each partition
    (rows of `partitions`, indexed by row_id), summed across ranks: the same on every rank."""
    dim = args.spec.get("in_dim") or args.spec["height"] * args.spec["width"]
    sums = torch.zeros((partitions.shape[0], n_clusters, dim), dtype=torch.float64)
    counts = torch.zeros((partitions.shape[0], n_clusters), dtype=torch.float64)
    squares = 0.0
    for batch in _batches(args, args.train_urls, r, 0, ["row_id", "features"], shuffle=False,
                          shuffle_rows=False):
        s, c, q = within_cluster_sums(batch["features"], partitions[:, batch["row_id"].long()],
                                      n_clusters)
        sums, counts, squares = sums + s, counts + c, squares + q
    return within_cluster_ss(r.sum(sums, "restart_sums"), r.sum(counts, "restart_counts"),
                             float(r.sum([squares], "restart_squares")[0]))


def umap_manifold(embeddings: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """N2D's local manifold of the embeddings: UMAP to n_components, UMAP_NEIGHBORS, min_dist 0."""
    import umap
    threads = torch.get_num_threads()
    try:
        return umap.UMAP(n_components=n_components, n_neighbors=UMAP_NEIGHBORS, min_dist=0.0,
                         random_state=seed, n_jobs=1).fit_transform(embeddings)
    finally:
        # UMAP leaves the OpenMP pool torch shares at every core: a rank's share must come back,
        # or the ranks' threads fight over the cores (epochs after it were 3-5x slower)
        torch.set_num_threads(threads)


def manifold_mixture(manifold: np.ndarray, n_clusters: int, n_init: int, seed: int):
    """A full-covariance Gaussian mixture fitted on the manifold, the likeliest of n_init fits;
    its `predict` gives every row's cluster."""
    from sklearn.mixture import GaussianMixture
    return GaussianMixture(n_components=n_clusters, covariance_type="full", n_init=n_init,
                           random_state=seed).fit(manifold)


def warm_target(partition: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """The warm epochs' target: WARM_TARGET on each row's cluster, the rest spread evenly."""
    rest = (1.0 - WARM_TARGET) / max(n_clusters - 1, 1)
    target = torch.full((len(partition), n_clusters), rest)
    target[torch.arange(len(partition)), partition.long()] = WARM_TARGET
    return target


def _init_centers(args, r, model, device) -> tuple[torch.Tensor, float, dict | None]:
    """Centres and starting partition from the embeddings of every row (`initial_partition`, on
    rank 0; with `dec_init_choice` input, the K-means restart whose partition is the most compact
    in the input vectors; with `dec_init` weights, a warm start, the centres the model was loaded
    with and each row in its most likely cluster), broadcast; returns the partition (row_id ->
    cluster), the embeddings' spread (`embedding_spread`, the same on every rank) and, for a
    choice among restarts, what each restart scored (rank 0; None otherwise)."""
    import horovod.torch as hvd
    ids, z, q = _soft_assignments(args, r, model, device, 0, shuffle=False)
    embeddings = _gather_by_row(r, hvd, ids, z, args.n_rows, "kmeans_init")
    spread = embedding_spread(embeddings)
    centers = torch.zeros_like(model.centers.data.cpu())
    partition = torch.zeros(args.n_rows, dtype=torch.int64)
    n_clusters, choice = centers.shape[0], None
    t0 = time.perf_counter()
    if args.dec_init == "weights":  # a warm start: the champion's centres, on every rank already
        partition = _gather_by_row(r, hvd, ids, q.argmax(1), args.n_rows, "weights_init")
        r.log(f"{args.log_prefix} centres kept from {args.init_weights_url}")
        return partition, spread, None
    if args.dec_init == "kmeans" and args.dec_init_choice == "input":
        n_init = max(args.kmeans_n_init, 1)
        restarts, partitions = [], torch.zeros((n_init, args.n_rows), dtype=torch.int64)
        if r.rank == 0:
            restarts = kmeans_restarts(embeddings.numpy(), n_clusters, n_init, args.seed)
            partitions = torch.as_tensor(np.stack([labels for _, labels, _ in restarts]),
                                         dtype=torch.int64)
        partitions = hvd.broadcast(partitions, root_rank=0, name="kmeans_restarts")
        input_ss = _input_within_ss(args, r, partitions, n_clusters)
        if r.rank == 0:
            embedding_ss = [inertia for _, _, inertia in restarts]
            best = restart_choice(embedding_ss, input_ss, "input")
            kmeans_pick = restart_choice(embedding_ss, None, "embedding")
            centers = torch.as_tensor(restarts[best][0], dtype=centers.dtype)
            partition = partitions[best].clone()
            choice = {"choice": "input", "chosen": best, "embedding_choice": kmeans_pick,
                      "embedding_ss": [round(v, 4) for v in embedding_ss],
                      "input_ss": [round(float(v), 4) for v in input_ss]}
            r.log(f"{args.log_prefix} {n_init} K-means restarts on the embeddings: restart "
                  f"{best + 1} kept (input sum of squares {input_ss[best]:.1f}, embedding "
                  f"{embedding_ss[best]:.2f}); the embedding's own pick, restart "
                  f"{kmeans_pick + 1}: {input_ss[kmeans_pick]:.1f}, "
                  f"{embedding_ss[kmeans_pick]:.2f}")
    elif r.rank == 0:
        found, labels = initial_partition(embeddings.numpy(), n_clusters, args.dec_init,
                                          args.kmeans_n_init, args.seed)
        centers = torch.as_tensor(found, dtype=centers.dtype)
        partition = torch.as_tensor(labels, dtype=torch.int64)
    r.log(f"{args.log_prefix} centres from {args.dec_init} on {len(embeddings)} embeddings "
          f"in {time.perf_counter() - t0:.1f}s")
    centers = hvd.broadcast(centers, root_rank=0, name="kmeans_centers")
    partition = hvd.broadcast(partition, root_rank=0, name="initial_partition")
    model.centers.data.copy_(centers.to(model.centers.device))
    return partition, spread, choice


def _train_dec(args, r, model, params, optimizer, store, state, device, ctx) -> dict[str, Any]:
    import horovod.torch as hvd
    s = state or {}
    history: list[dict] = list(s.get("history", []))
    if s.get("finished"):
        return {"rank": r.rank, "size": r.size, "summary": s["summary"],
                "history": history if r.rank == 0 else []}
    start = s["epoch"] + 1 if state else 0
    assign, init_assign = s.get("assign"), s.get("init_assign")
    converged = bool(s.get("converged", False))
    # the epoch DEC starts at: None while pretraining (it ends by patience, its most epochs or
    # the budget's share)
    pretrain_end = s.get("pretrain_end", None if args.pretrain_epochs > 0 else 0)
    pretrain_stop = s.get("pretrain_stop_reason", "none" if args.pretrain_epochs <= 0 else None)
    stop = EarlyStop(args.patience, args.min_delta, s.get("early_stop"))
    best_model = s.get("best_model")
    elapsed = float(s.get("elapsed", 0.0))
    trivial = float(s.get("trivial_loss", 0.0))
    spread = s.get("embedding_spread")
    init_choice = s.get("init_choice")
    failure, stop_reason = s.get("failure"), None
    idec = args.dec_variant == "idec"
    n_clusters = args.spec["n_clusters"]
    budget = args.budget_seconds
    pretrain_budget = budget * PRETRAIN_BUDGET_SHARE if args.dec_max_epochs > 0 else budget
    spec = args.spec

    def augment(x: torch.Tensor) -> torch.Tensor:  # images only (train.train_args sets it so)
        return shift_images(x, spec["height"], spec["width"], args.augment_shift) \
            if args.augment_shift else x

    def end_pretraining(next_epoch: int, reason: str) -> None:
        nonlocal pretrain_end, pretrain_stop, failure
        pretrain_end, pretrain_stop = next_epoch, reason
        if best_model is not None and reason != "nan_loss":
            model.load_state_dict(best_model)  # the best epoch's weights, on every rank
        # judged when the loss stopped moving (patience ran out) or after more epochs than the
        # patience; not when the budget cut it short (slow is not dead: the gate judges that model)
        if failure is None and (reason == "patience" or (
                reason == "max_epochs" and next_epoch > args.patience)) \
                and stalled(stop.best_loss, trivial):
            failure = "stalled"
        r.log(f"{args.log_prefix} pretraining stopped ({reason}) after {next_epoch} epochs; "
              f"best epoch {stop.best_epoch + 1}, val reconstruction {stop.best_loss:.5f} (the "
              f"mean row's {trivial:.5f})")

    epoch = start
    while failure is None:
        seed_epoch(args.seed, epoch, r.rank)
        pretrain = pretrain_end is None
        if not pretrain:
            dec_epoch = epoch - pretrain_end
            if converged or dec_epoch >= args.dec_max_epochs:
                stop_reason = "converged" if converged else "max_epochs"
                break
        warm = not pretrain and epoch < pretrain_end + args.dec_warm_epochs
        entry: dict[str, Any] = {"epoch": epoch, "phase": "pretrain" if pretrain else
                                 "warm" if warm else args.dec_variant, "attempt": ctx["attempt"]}
        target = None
        t0 = time.perf_counter()
        if not pretrain:
            if init_assign is None:
                init_assign, spread, init_choice = _init_centers(args, r, model, device)
                assign = init_assign.clone()
                if spread < EMBEDDING_SPREAD_MIN:
                    failure = "embedding_collapsed"
                elif n_clusters > 1 and largest_cluster_share(init_assign, n_clusters) > COLLAPSE_SHARE:
                    failure = "one_cluster"
                if failure:
                    r.log(f"{args.log_prefix} FAILURE {failure}: embedding spread {spread:.2e}, "
                          f"largest starting cluster "
                          f"{largest_cluster_share(init_assign, n_clusters):.1%}")
                    break
            ids, _, q = _soft_assignments(args, r, model, device, epoch, shuffle=True)
            if warm:  # the same on every rank, so the allreduce below stays in step
                target = warm_target(init_assign, q.shape[1])
            else:
                from deepmine.deep.models import target_distribution
                frequency = r.sum(q.sum(0), "cluster_frequency").float()
                target = torch.zeros((args.n_rows, q.shape[1]))
                target[ids] = target_distribution(q, frequency)
            new_assign = _gather_by_row(r, hvd, ids, q.argmax(1), args.n_rows, "assign")
            changed = float((new_assign != assign).float().mean())
            assign = new_assign
            entry["assignments_changed"] = changed
            # not before the first epoch of self-training has run
            if epoch > pretrain_end + args.dec_warm_epochs and changed < args.dec_tolerance:
                converged = True
                entry["converged"] = True
                history.append(entry)
                r.log(f"{args.log_prefix} converged: {changed:.4%} of assignments changed "
                      f"(< {args.dec_tolerance:.4%})")
                stop_reason = "converged"
                break
        model.train()
        sums, seen = [0.0, 0.0, 0.0], 0
        consistency = pretrain and args.contrastive_weight > 0
        for batch in r.lockstep(_batches(args, args.train_urls, r, epoch,
                                         ["row_id", "features"], shuffle=True)):
            x = None
            if batch is not None:
                x = batch["features"]
                if pretrain:  # the held-out rows score pretraining; DEC clusters every row
                    x = x[~validation_mask(batch["row_id"], args.validation_fraction, args.seed)]
            if x is None or len(x) == 0:
                _step(optimizer, params, None)
                continue
            x = augment(x.to(device))
            if pretrain:
                loss, recon_loss, contrast = pretrain_loss(model, x, args.pretrain_noise,
                                                           args.contrastive_weight, spec)
                kl = torch.zeros(())
                sums[2] += contrast.item() * len(x)
            else:
                recon, _, q = model(x)
                p = target[batch["row_id"].long()].to(device)
                kl = F.kl_div(q.clamp_min(1e-12).log(), p, reduction="batchmean")
                recon_loss = F.mse_loss(recon, x)
                loss = recon_loss + args.dec_gamma * kl if idec else kl
            _step(optimizer, params, loss)
            sums[0] += recon_loss.item() * len(x)
            sums[1] += kl.item() * len(x)
            seen += len(x)
        seconds = time.perf_counter() - t0
        recon_sum, kl_sum, contrast_sum, total_seen = r.sum([*sums, seen], "dec_loss").tolist()
        entry.update(reconstruction_loss=recon_sum / max(total_seen, 1),
                     kl_loss=kl_sum / max(total_seen, 1), samples=int(total_seen),
                     seconds=round(seconds, 3), samples_per_s=round(total_seen / seconds, 1))
        if consistency:
            entry["contrastive_loss"] = contrast_sum / max(total_seen, 1)
        improved = False
        if pretrain:
            val = _validate_reconstruction(args, r, model, device)
            trivial = val["mean_loss"]
            entry["val_reconstruction_loss"] = val["loss"]
            if _finite(entry["reconstruction_loss"], val["loss"], entry.get("contrastive_loss", 0.0)):
                improved = stop.update(epoch, val["loss"] if val["rows"] else
                                       entry["reconstruction_loss"])
                if improved:
                    best_model = _clone(model.state_dict())
        epoch_seconds = time.perf_counter() - t0
        elapsed += epoch_seconds
        history.append(entry)
        extra = f" changed={entry['assignments_changed']:.4f} kl={entry['kl_loss']:.4f}" \
            if not pretrain else (f" val={entry['val_reconstruction_loss']:.5f}" + (
                f" contrastive={entry['contrastive_loss']:.4f}" if consistency else ""))
        r.log(f"{args.log_prefix} epoch {epoch + 1} {entry['phase']} "
              f"recon={entry['reconstruction_loss']:.5f}{extra} {entry['samples_per_s']:.0f} "
              f"samples/s{' *' if improved else ''}")
        if not _finite(entry["reconstruction_loss"], entry["kl_loss"],
                       entry.get("contrastive_loss", 0.0), entry.get("val_reconstruction_loss", 0.0)):
            failure = "nan_loss"
            if pretrain:
                pretrain_stop = "nan_loss"
            r.log(f"{args.log_prefix} FAILURE nan_loss at epoch {epoch + 1}")
            break
        if pretrain:
            if stop.exhausted:
                end_pretraining(epoch + 1, "patience")
            elif epoch + 1 >= args.pretrain_epochs:
                end_pretraining(epoch + 1, "max_epochs")
            elif _out_of_time(r, pretrain_budget, elapsed, epoch_seconds):
                end_pretraining(epoch + 1, "budget")
        elif _out_of_time(r, budget, elapsed, epoch_seconds):
            stop_reason = "budget"
            break
        _save_dec(args, r, store, epoch, model, optimizer, locals())
        epoch += 1
    if failure is None and stop_reason is None:
        stop_reason = "converged" if converged else "max_epochs"
    if failure is None and n_clusters > 1 and pretrain_end is not None:
        # the clustering the stage will publish: the assignments of the final weights
        ids, _, q = _soft_assignments(args, r, model, device, 0, shuffle=False)
        final_assign = _gather_by_row(r, hvd, ids, q.argmax(1), args.n_rows, "final_assign")
        share = largest_cluster_share(final_assign, n_clusters)
        if share > COLLAPSE_SHARE:
            failure = "one_cluster"
            r.log(f"{args.log_prefix} FAILURE one_cluster: {share:.1%} of rows in one cluster")
    summary = _summary(ctx, history, best_epoch=stop.best_epoch, stop_reason=stop_reason or failure,
                       pretrain_stop_reason=pretrain_stop, pretrain_epochs_run=pretrain_end,
                       best_val_loss=stop.best_loss, trivial_val_loss=trivial,
                       embedding_spread=spread, init_choice=init_choice, failure=failure,
                       seconds=round(elapsed, 3))
    r.log(f"{args.log_prefix} stopped ({summary['stop_reason']}) after {len(history)} epochs")
    _save(args, r, store, history[-1]["epoch"] if history else 0, model, optimizer,
          {"history": history, "assign": assign, "init_assign": init_assign,
           "converged": converged, "finished": True, "summary": summary,
           "attempt": ctx["attempt"], "attempts": ctx["attempts"]})
    return {"rank": r.rank, "size": r.size, "summary": summary,
            "history": history if r.rank == 0 else []}


def _save_dec(args, r, store, epoch, model, optimizer, v: dict) -> None:
    """The DEC loop's checkpoint of `epoch`, from the loop's variables `v`."""
    _save(args, r, store, epoch, model, optimizer,
          {"history": v["history"], "assign": v["assign"], "init_assign": v["init_assign"],
           "converged": False, "pretrain_end": v["pretrain_end"],
           "pretrain_stop_reason": v["pretrain_stop"], "early_stop": v["stop"].state(),
           "best_model": v["best_model"], "elapsed": v["elapsed"],
           "trivial_loss": v["trivial"], "embedding_spread": v["spread"],
           "init_choice": v["init_choice"], "attempt": v["ctx"]["attempt"],
           "attempts": v["ctx"]["attempts"]})


def main(argv: list[str] | None = None) -> int:
    """`python -m deepmine.deep.trainer ARGS.json` on every rank (what horovodrun starts)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: horovodrun -np N [-H host:slots,...] python -m deepmine.deep.trainer ARGS.json",
              file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        args = TrainArgs.from_json(f.read())
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
