"""ALS hyperparameters chosen on a validation split, on the driver: a numpy ALS with Spark ALS's
objective, fit and scored for every grid point in well under a second on the nightly's data.

Why not Spark ALS per point: on the default 20,000-line nightly (2 cores) one Spark ALS fit takes
about 3.5 s and scoring it (top-N lists, ranking metrics) about 3 s more, so a 4-point grid made
the recommend stage about 65% slower; fitting the points in threads gained nothing. The same
grid in numpy costs a fraction of a second per point, so the grid can be wider and on by default.

The objective is Spark's (ALS-WR): each user's and item's regularization is reg_param times its
number of ratings (implicit: of positive signals), and implicit feedback is Hu, Koren and
Volinsky's: preference 1 for every pair with a signal, confidence 1 + alpha * signal, every other
pair preference 0 at confidence 1. Factors start as Gaussian unit vectors, as Spark's do; the
items are solved first in each sweep, as in Spark. The point chosen here is then fit by Spark.

Scores, per validation unit, so that two points can be compared paired:
  explicit  the squared error of each validation rating whose user and item are both in the fit
            part (prediction clipped to the fit part's rating range): RMSE = sqrt(mean)
  implicit  NDCG@k of each validation customer with a relevant product (products it had not
            bought in the fit part), over the top k products it had not bought, binary relevance
            (`recommend.ranking_metrics`' definition); a customer the fit part does not know
            scores 0

For ratings, `search_explicit` also fits ALS on the residual of Koren's baseline predictors
(`Baseline`) at every point and scores blends of the two models on the same validation ratings:
it chooses recommend.explicit_model (docs/recommend-tuning.md).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

# entries of the per-entity normal-equation blocks built at once (entities x rank^2 doubles)
BLOCK_CELLS = 4_000_000
# how many paired standard errors the best point must beat the configured one by: on 20,000
# generated lines a point 2.0 standard errors better on validation ranked worse on the test split
# (docs/recommend-tuning.md); on MovieLens the point chosen was 4.5 standard errors better
SEPARATION = 3.0


@dataclass
class Coded:
    """(customer_id, product_id, strength) rows coded as a users x items sparse matrix."""
    matrix: sp.csr_matrix
    users: pd.Index  # customer_id by row
    items: pd.Index  # product_id by column

    @classmethod
    def of(cls, frame: pd.DataFrame) -> "Coded":
        users = pd.Index(np.sort(frame["customer_id"].unique()))
        items = pd.Index(np.sort(frame["product_id"].unique()))
        matrix = sp.csr_matrix(
            (frame["strength"].to_numpy(np.float64),
             (users.get_indexer(frame["customer_id"]), items.get_indexer(frame["product_id"]))),
            shape=(len(users), len(items)))
        return cls(matrix, users, items)


@dataclass
class _Side:
    """One side of the fit (users or items), the rows of `signal` to solve, with what its
    half-sweeps share whatever the other side's factors: the weights (confidence - 1, implicit;
    1, explicit), the targets (confidence * preference; the rating) and the rows' counts that the
    regularization scales with (implicit: of positive signals)."""
    weight: sp.csr_matrix
    target: sp.csr_matrix
    counts: np.ndarray
    implicit: bool

    @classmethod
    def of(cls, signal: sp.csr_matrix, alpha: float, implicit: bool) -> "_Side":
        counts = np.diff(signal.indptr).astype(np.float64)
        if implicit:
            weight = signal.copy()
            weight.data = alpha * np.abs(signal.data)  # confidence - 1
            target = signal.copy()
            target.data = np.where(signal.data > 0, 1.0 + weight.data, 0.0)
            counts = np.diff(sp.csr_matrix((signal.data > 0, signal.indices, signal.indptr),
                                           shape=signal.shape).indptr).astype(np.float64)
        else:
            weight = signal.copy()
            weight.data = np.ones_like(signal.data)
            target = signal
        return cls(weight, target, counts, implicit)


def _solve_side(side: _Side, fixed: np.ndarray, reg: float) -> np.ndarray:
    """One half-sweep: the least-squares factors of every row of `side` given the other side's
    `fixed` factors (Spark's NormalEquation, regularization reg * count on the diagonal)."""
    rank = fixed.shape[1]
    outer = (fixed[:, :, None] * fixed[:, None, :]).reshape(len(fixed), rank * rank)
    gram = fixed.T @ fixed if side.implicit else None
    out = np.zeros((side.weight.shape[0], rank))
    step = max(1, BLOCK_CELLS // (rank * rank))
    eye = np.eye(rank)
    for start in range(0, side.weight.shape[0], step):
        rows = slice(start, start + step)
        a = np.asarray((side.weight[rows] @ outer)).reshape(-1, rank, rank)
        if gram is not None:
            a += gram
        n = side.counts[rows]
        # a row without signal gets the zero vector (Spark has no factors for it)
        a += (reg * n + (n == 0))[:, None, None] * eye
        b = np.asarray(side.target[rows] @ fixed)
        out[rows] = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    return out


def fit(coded: Coded, rank: int, reg: float, alpha: float, implicit: bool, max_iter: int,
        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Alternating least squares -> (user factors, item factors), rows in `coded`'s order."""
    rng = np.random.default_rng(seed)

    def start(n: int) -> np.ndarray:
        f = rng.normal(size=(n, rank))
        return f / np.linalg.norm(f, axis=1, keepdims=True)
    matrix = coded.matrix
    by_user = _Side.of(matrix, alpha, implicit)
    by_item = _Side.of(matrix.T.tocsr(), alpha, implicit)
    users, items = start(matrix.shape[0]), start(matrix.shape[1])
    for _ in range(max_iter):
        items = _solve_side(by_item, users, reg)
        users = _solve_side(by_user, items, reg)
    return users, items


def squared_errors(coded: Coded, factors: tuple[np.ndarray, np.ndarray],
                   valid: pd.DataFrame) -> np.ndarray:
    """Squared error of each validation rating whose user and item the fit part knows, the
    prediction clipped to the fit part's rating range."""
    u = coded.users.get_indexer(valid["customer_id"])
    i = coded.items.get_indexer(valid["product_id"])
    known = (u >= 0) & (i >= 0)
    users, items = factors
    predicted = np.einsum("nk,nk->n", users[u[known]], items[i[known]])
    data = coded.matrix.data
    predicted = np.clip(predicted, data.min(), data.max())
    return (predicted - valid["strength"].to_numpy(np.float64)[known]) ** 2


def ndcg_per_customer(coded: Coded, factors: tuple[np.ndarray, np.ndarray],
                      relevant: pd.DataFrame, k: int) -> np.ndarray:
    """NDCG@k of each customer in `relevant` (customer_id, product_id: products it had not bought
    in the fit part), over its top k products not bought in the fit part."""
    users, items = factors
    groups = relevant.groupby("customer_id")["product_id"]
    customers = pd.Index(groups.size().index)
    n_relevant = groups.size().to_numpy()
    rows = coded.users.get_indexer(customers)
    # a relevant product the fit part never saw counts in the ideal DCG but cannot be a hit
    product = coded.items.get_indexer(relevant["product_id"])
    known_product = product >= 0
    rel = sp.csr_matrix((np.ones(int(known_product.sum())),
                         (customers.get_indexer(relevant["customer_id"])[known_product],
                          product[known_product])),
                        shape=(len(customers), len(coded.items)))
    take = min(k, len(coded.items))
    discount = 1.0 / np.log2(np.arange(2, take + 2))
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))[np.minimum(n_relevant, k) - 1]
    dcg = np.zeros(len(customers))
    known = np.flatnonzero(rows >= 0)
    step = max(1, BLOCK_CELLS // max(1, len(coded.items)))
    for start in range(0, len(known), step):
        part = known[start:start + step]
        scores = users[rows[part]] @ items.T
        seen = coded.matrix[rows[part]]
        scores[seen.nonzero()] = -np.inf
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)  # score desc, then product asc
        top = np.take_along_axis(top, order, axis=1)
        hits = np.asarray(rel[part][np.arange(len(part))[:, None], top].todense()) > 0
        hits &= np.isfinite(np.take_along_axis(top_scores, order, axis=1))
        dcg[part] = hits @ discount
    return dcg / ideal


def _one_blas_thread(search_fn):
    """Runs `search_fn` with the BLAS (OpenBLAS under numpy) on one thread. The grid's products
    and solves are small (rank x rank systems, users x rank blocks): a second BLAS thread buys
    nothing, and on the driver, beside Spark's JVM and its Python workers on the same cores, the
    spinning BLAS threads slowed the 1M-line grid about fourfold (8 points: 35 s in the stage,
    3.9 s on one thread, 8.5-17 s on two alone). One thread or two give the same numbers."""
    @functools.wraps(search_fn)
    def run(*args, **kwargs):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # scikit-learn brings it; without it, the BLAS as configured
            return search_fn(*args, **kwargs)
        with threadpool_limits(limits=1, user_api="blas"):
            return search_fn(*args, **kwargs)
    return run


@dataclass(frozen=True)
class Point:
    """One grid point."""
    rank: int
    reg_param: float
    alpha: float


def losses(fit_part: pd.DataFrame, valid: pd.DataFrame, point: Point, implicit: bool, k: int,
           max_iter: int, seed: int) -> np.ndarray:
    """Fit `point` on `fit_part` (customer_id, product_id, strength) and return one loss per
    validation unit, lower is better: squared errors (explicit; `valid` holds the ratings) or
    -NDCG@k per customer (implicit; `valid` holds the relevant pairs)."""
    return _losses(Coded.of(fit_part), valid, point, implicit, k, max_iter, seed)


def _losses(coded: Coded, valid: pd.DataFrame, point: Point, implicit: bool, k: int,
            max_iter: int, seed: int) -> np.ndarray:
    factors = fit(coded, point.rank, point.reg_param, point.alpha, implicit, max_iter, seed)
    if implicit:
        return -ndcg_per_customer(coded, factors, valid, k)
    return squared_errors(coded, factors, valid)


def _summary(values: np.ndarray, implicit: bool) -> float | None:
    if not len(values):
        return None
    return float(-values.mean()) if implicit else float(math.sqrt(values.mean()))


def _paired_error(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """The mean per-unit loss difference (ours - theirs) and its standard error."""
    difference = ours - theirs
    units = len(difference)
    error = float(difference.std(ddof=1) / math.sqrt(units)) if units > 1 else math.inf
    return float(difference.mean()), error


def _choose(ordered: list[Point], per_point: list[np.ndarray], implicit: bool,
            k: int) -> tuple[Point, list[dict], dict]:
    """The choice among `ordered` (the configured point first) given each point's per-unit
    losses: see `search`."""
    key = f"ndcg_at_{k}" if implicit else "rmse"
    units = len(per_point[0])
    rows = []
    for point, values in zip(ordered, per_point):
        row = {"rank": point.rank, "reg_param": point.reg_param}
        if implicit:
            row["alpha"] = point.alpha
        rows.append({**row, key: _summary(values, implicit)})
    if not units:  # nothing to validate on: keep the configured point
        return ordered[0], rows, {"point": rows[0], key: None, "validation_units": 0,
                                  "kept_configured": True, "standard_error": None}
    best = min(range(len(ordered)), key=lambda i: (per_point[i].mean(), i))
    mean, error = _paired_error(per_point[best], per_point[0])
    chosen = best if best and mean < -SEPARATION * error else 0
    error = error if best and math.isfinite(error) else None
    choice = {"point": {x: v for x, v in rows[chosen].items() if x != key},
              key: rows[chosen][key], "validation_units": units,
              "kept_configured": chosen == 0,
              # of the mean per-unit loss difference, best point minus configured point
              "standard_error": error, "best": rows[best]}
    return ordered[chosen], rows, choice


@_one_blas_thread
def search(fit_part: pd.DataFrame, valid: pd.DataFrame, points: list[Point], configured: Point,
           implicit: bool, k: int, max_iter: int, seed: int) -> tuple[Point, list[dict], dict]:
    """Score every point (and the configured one, first) on the validation part; returns the
    chosen point, one row per point, and the choice.

    The best point replaces the configured one only when it is better by more than SEPARATION
    standard errors of the paired per-unit difference (the same ratings or customers under both
    points): on a small validation split the best of many points is partly luck, and the
    configured point is the one to keep when the evidence does not separate them."""
    ordered = [configured] + [p for p in points if p != configured]
    coded = Coded.of(fit_part)  # the same matrix for every point
    per_point = [_losses(coded, valid, p, implicit, k, max_iter, seed) for p in ordered]
    return _choose(ordered, per_point, implicit, k)


# ======================================================= explicit: baseline predictors, blend

# the blend weights tried on the validation split: the share of the baseline model's prediction
BLEND_WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 21))
MODELS = ("auto", "als", "baseline_als", "blend")


@dataclass
class Baseline:
    """Baseline predictors (Koren 2008, "Factorization meets the neighborhood", section 2.1; Koren
    2009, "The BellKor solution to the Netflix Grand Prize"): rating ~ mean + user bias + item
    bias, each bias shrunk towards 0 by `damping` pseudo-ratings:
      item bias = sum over its ratings of (r - mean) / (n_item + damping)
      user bias = sum over its ratings of (r - mean - item bias) / (n_user + damping)
    The numpy twin of recommend.Biases (the same estimates, in Spark)."""
    mean: float
    users: pd.Series  # bias by customer_id
    items: pd.Series  # bias by product_id

    @classmethod
    def fit(cls, frame: pd.DataFrame, damping: float) -> "Baseline":
        mean = float(frame["strength"].mean())
        centred = frame["strength"] - mean
        by_item = centred.groupby(frame["product_id"])
        items = by_item.sum() / (by_item.count() + damping)
        rest = centred - frame["product_id"].map(items).to_numpy()
        by_user = rest.groupby(frame["customer_id"])
        users = by_user.sum() / (by_user.count() + damping)
        return cls(mean, users, items)

    def of(self, customers: pd.Series, products: pd.Series) -> np.ndarray:
        """mean + user bias + item bias (a bias the fit did not see counts 0)."""
        return (self.mean + customers.map(self.users).fillna(0.0).to_numpy()
                + products.map(self.items).fillna(0.0).to_numpy())


def _predictions(coded: Coded, point: Point, known: tuple[np.ndarray, np.ndarray],
                 max_iter: int, seed: int) -> np.ndarray:
    users, items = fit(coded, point.rank, point.reg_param, point.alpha, False, max_iter, seed)
    return np.einsum("nk,nk->n", users[known[0]], items[known[1]])


@_one_blas_thread
def search_explicit(fit_part: pd.DataFrame, valid: pd.DataFrame, points: list[Point],
                    configured: Point, model: str, damping: float, max_iter: int,
                    seed: int) -> tuple[Point, list[dict], dict, list[dict], dict]:
    """`search` for ratings, and the choice of the explicit model (`model`: auto, baseline_als or
    blend; als is `search` alone). Returns plain ALS's chosen point, its rows and choice (as
    `search`), then one row per point of ALS fit on the residual of the baseline predictors
    (`Baseline`, `damping`), and the model choice.

    The blend predicts (1 - w) * plain ALS + w * baseline ALS (clipped to the fit part's rating
    range); every pair of points (plain, baseline) and every w of BLEND_WEIGHTS (blend: 0 < w < 1;
    baseline_als: w = 1) is scored on the same validation ratings, and the best is kept. With
    auto, that best (w = 0 is plain ALS, w = 1 the baseline model alone) replaces plain ALS at its
    chosen point only when it is better by more than SEPARATION paired standard errors."""
    ordered = [configured] + [p for p in points if p != configured]
    coded = Coded.of(fit_part)
    u = coded.users.get_indexer(valid["customer_id"])
    i = coded.items.get_indexer(valid["product_id"])
    mask = (u >= 0) & (i >= 0)
    known = (u[mask], i[mask])
    truth = valid["strength"].to_numpy(np.float64)[mask]
    data = coded.matrix.data
    low, high = data.min(), data.max()

    def loss(predicted: np.ndarray) -> np.ndarray:
        return (np.clip(predicted, low, high) - truth) ** 2
    plain = [_predictions(coded, p, known, max_iter, seed) for p in ordered]
    point, rows, choice = _choose(ordered, [loss(p) for p in plain], False, 0)
    baseline = Baseline.fit(fit_part, damping)
    base = baseline.of(valid["customer_id"][mask], valid["product_id"][mask])
    residual = Coded(coded.matrix.copy(), coded.users, coded.items)
    by_row = np.repeat(np.arange(residual.matrix.shape[0]), np.diff(residual.matrix.indptr))
    residual.matrix.data = data - (baseline.mean
                                   + baseline.users.reindex(coded.users).to_numpy()[by_row]
                                   + baseline.items.reindex(coded.items).to_numpy()[
                                       residual.matrix.indices])
    on_residual = [base + _predictions(residual, p, known, max_iter, seed) for p in ordered]
    baseline_rows = [{"rank": p.rank, "reg_param": p.reg_param,
                      "rmse": _summary(loss(q), False)} for p, q in zip(ordered, on_residual)]
    weights = {"auto": BLEND_WEIGHTS, "baseline_als": (1.0,),
               "blend": tuple(w for w in BLEND_WEIGHTS if 0.0 < w < 1.0)}[model]
    chosen_plain = plain[ordered.index(point)]
    if not len(truth):  # nothing to validate on
        return point, rows, choice, baseline_rows, {
            "model": "als" if model == "auto" else model, "weight": None, "rmse": None,
            "validation_units": 0}
    best = None
    for a, p in enumerate(plain):
        for b, q in enumerate(on_residual):
            for w in weights:
                if w == 0.0 and b:  # plain ALS alone: once is enough
                    continue
                if w == 1.0 and a:
                    continue
                mse = loss((1.0 - w) * p + w * q).mean()
                if best is None or mse < best[0] - 1e-15:
                    best = (mse, a, b, w)
    _, a, b, w = best
    best_losses = loss((1.0 - w) * plain[a] + w * on_residual[b])
    mean, error = _paired_error(best_losses, loss(chosen_plain))
    name = model
    if model == "auto":
        name = "als" if w == 0.0 else "baseline_als" if w == 1.0 else "blend"
        if name != "als" and not mean < -SEPARATION * error:
            name = "als"
    out = {"model": name, "validation_units": len(truth),
           "rmse_als": rows[ordered.index(point)]["rmse"],
           # of the mean per-rating loss difference, the best model minus plain ALS
           "standard_error": error if math.isfinite(error) else None,
           "best": {"weight": w, "rmse": _summary(best_losses, False)}}
    if name == "als":
        out.update(weight=0.0, rmse=out["rmse_als"])
    else:
        out.update(weight=w, rmse=_summary(best_losses, False),
                   als_point={"rank": ordered[a].rank, "reg_param": ordered[a].reg_param},
                   baseline_point={"rank": ordered[b].rank, "reg_param": ordered[b].reg_param})
    return point, rows, choice, baseline_rows, out
