"""Synthetic retail transactions with planted truth (``deepmine generate``).

:func:`generate_transactions` writes, into one directory:

``transactions.csv``
    the canonical transaction input (``invoice_id,customer_id,product_id,quantity,unit_price,
    invoice_ts,country``), UTF-8 except for the planted ``bad_encoding`` lines;
``products.csv``
    ``product_id,category_id,category,list_price``, the category being a Fashion-MNIST class so
    that product images can be joined later;
``customers_truth.csv``
    ``customer_id,group,taste_category_0..9,purchase_rate_per_day``: the planted behaviour group of
    each customer, the category weights actually used to pick that customer's non-bundle products
    and the rate at which the customer goes on buying after ``as_of`` (0 for the groups that have
    stopped; see :data:`GROUPS`);
``truth.json``
    everything else that was planted (groups, bundles, returns, dirty lines, demand per category)
    and what was realized (counts, bundle support/confidence over the lines that survive cleaning,
    background pairs).

How the data is made
--------------------
1. *Plan* (held in memory, a few bytes per line): customers (group, taste, country), their purchase
   invoices (timestamp, number of ordinary lines, which bundles the basket contains) and the return
   invoices. Basket sizes are then nudged so that the file has exactly ``lines`` data lines. All
   invoices (purchases ``I...`` and returns ``C...``) are sorted by time and numbered in that order.
2. *Stream*: invoices are rendered in blocks of about :data:`CHUNK_LINES` lines (numpy to pick
   products, quantities and prices; pyarrow string kernels to format the CSV), the planted dirty
   lines are substituted and the block is appended to the file. Realized statistics are counted
   while streaming, so memory does not grow with the number of lines written.

Every random draw comes from ``numpy.random.default_rng`` seeded from ``seed`` (one stream for the
plan, one per block), so the same arguments give byte-identical files.

Planted structure
-----------------
* Four customer groups (:data:`GROUPS`) that differ in recency (days from the last purchase to
  ``as_of``), frequency (distinct purchase invoices) and spend; they are well separated on
  log-scaled RFM.
* A few product bundles: when a basket holds a bundle's trigger (a planted share of baskets), the
  rest of the bundle is added with a planted probability. Bundle products are bought only this way,
  so the realized support of every other pair stays far below the bundles' (recorded in
  ``truth["background"]``).
* Returns: about 1% of lines; each is a one-line invoice ``C...`` by the same customer, 1-30 days
  after the purchase it returns, with the same product and unit price and a negative quantity.
* Demand per category (``truth["demand"]``): a purchase line of category ``k`` on day ``t`` has
  the expected quantity ``max(quantity_g * f_k(t), 1)`` (``quantity_g`` its customer's group's),
  ``f_k`` a log-linear growth times a yearly cycle times a weekday profile, each category with
  its own parameters (:func:`planted_demand_factor`). Only quantities carry it: invoice times,
  baskets, products and every other draw are those of a file without it (the quantities come
  from their own random stream), so the groups' recency and frequency, the bundles and the
  returns' timing keep their planted values.
* A behaviour shift (``shift_date``, off by default; ``truth["behaviour_shift"]``): a win-back
  campaign brings every customer of the ``at_risk`` group back for one more purchase invoice on a
  day drawn uniformly from ``[shift_date, as_of)``. Their earlier invoices, and everything else,
  keep their planted spans; ``customers_truth.csv`` keeps the planted group, and the campaign's
  invoice is the group's last (its ``purchase_rate_per_day`` stays 0: it stops again after it).
  Every customer feature built on recency and frequency moves for a fifth of the customers, a
  drift the nightly's drift stage must flag (the multi-day drill, ``deepmine.ops.drill``).
* Dirty lines (``dirty_rate``): each has exactly one defect, one of :data:`DIRTY_KINDS`. Only
  ordinary purchase lines that are not returned later are broken, so bundles and returns stay
  intact.
"""

from __future__ import annotations

import datetime as _dt
import json
import operator
import os
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "FASHION_MNIST_CLASSES",
    "TRANSACTION_COLUMNS",
    "PRODUCT_COLUMNS",
    "DIRTY_KINDS",
    "GROUPS",
    "generate_transactions",
    "planted_demand_factor",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

TRANSACTION_COLUMNS = [
    "invoice_id",
    "customer_id",
    "product_id",
    "quantity",
    "unit_price",
    "invoice_ts",
    "country",
]
PRODUCT_COLUMNS = ["product_id", "category_id", "category", "list_price"]

#: Reason codes of the planted defects; each broken line has exactly one.
DIRTY_KINDS = (
    "bad_timestamp",
    "nonpositive_price",
    "missing_customer_id",
    "bad_quantity",
    "wrong_column_count",
    "duplicate_line",
    "bad_encoding",
)

#: Customer groups. ``invoices``: mean number of purchase invoices (scaled so that the file has the
#: requested number of lines; ``one_off`` always has exactly one). ``recency``/``first``: range of
#: the last / first purchase, as a share of the period, counted back from ``as_of`` / forward from
#: ``start_date``. ``basket``: mean number of ordinary (non-bundle) lines per invoice.
#: ``quantity``: mean quantity per line. ``taste_alpha``: Dirichlet concentration of the taste.
#: ``active``: the group keeps buying after ``as_of`` as it bought before (its invoices fall
#: uniformly over its buying span, a Poisson process given their number, so it goes on at
#: ``purchase_rate_per_day`` = invoices over span); the other groups have stopped for good. The
#: planted probability of no purchase in the ``h`` days after ``as_of`` is then
#: ``exp(-purchase_rate_per_day * h)`` for an active customer and 1 for the others
#: (``customers_truth.csv``; the churn stage is checked against it).
GROUPS = (
    {
        "name": "champions",
        "active": True,
        "description": "recent, frequent, high spend",
        "share": 0.15,
        "invoices": 18.0,
        "recency": (0.0, 0.04),
        "first": (0.0, 0.15),
        "basket": 4.5,
        "quantity": 3.0,
        "taste_alpha": 0.6,
    },
    {
        "name": "loyal",
        "active": True,
        "description": "regular buyers, moderately recent, medium spend",
        "share": 0.30,
        "invoices": 6.0,
        "recency": (0.07, 0.17),
        "first": (0.0, 0.35),
        "basket": 3.0,
        "quantity": 2.0,
        "taste_alpha": 0.4,
    },
    {
        "name": "at_risk",
        "active": False,
        "description": "used to buy often, nothing for a long time",
        "share": 0.20,
        "invoices": 6.0,
        "recency": (0.38, 0.60),
        "first": (0.0, 0.15),
        "basket": 3.5,
        "quantity": 2.2,
        "taste_alpha": 0.4,
    },
    {
        "name": "one_off",
        "active": False,
        "description": "a single small purchase long ago",
        "share": 0.35,
        "invoices": 1.0,
        "recency": (0.62, 0.98),
        "first": None,
        "basket": 2.0,
        "quantity": 1.3,
        "taste_alpha": 0.3,
    },
)

#: The group a behaviour shift (``shift_date``) brings back for one purchase each.
SHIFT_GROUP = "at_risk"
SHIFT_GROUP_INDEX = [g["name"] for g in GROUPS].index(SHIFT_GROUP)

#: Lines per streamed block (whole invoices, so a block may be slightly longer).
CHUNK_LINES = 100_000

N_BUNDLES = 5
BUNDLE_SIZES = (2, 3, 2, 3, 2)
BUNDLE_TRIGGER_SHARE = (0.05, 0.09)  # share of purchase baskets holding the trigger
BUNDLE_CONFIDENCE = (0.60, 0.90)  # P(rest of the bundle | trigger)
RETURN_INVOICE_RATE = 0.045  # share of purchase invoices that have one line returned later
RETURN_DELAY_DAYS = (1.0, 30.0)
# Planted demand per category (truth["demand"]; see planted_demand_factor): the weekday
# multipliers are exp(uniform(-spread, spread)) scaled to mean 1; the yearly cycle's amplitude
# and the log growth per year are drawn uniformly from these ranges, the peak day uniformly.
DEMAND_WEEKDAY_SPREAD = 0.45
DEMAND_YEARLY_AMPLITUDE = (0.2, 0.45)
DEMAND_GROWTH_PER_YEAR = (-0.5, 0.5)
_DAYS_PER_YEAR = 365.25
TASTE_UNIFORM_MIX = 0.15  # effective taste = (1 - mix) * Dirichlet draw + mix / 10
MAX_BASKET = 30
MIN_PRODUCTS = 40
_PLAN_BLOCK = 1 << 18  # customers / invoices per block while planning

COUNTRIES = [
    "United Kingdom",
    "Germany",
    "France",
    "Netherlands",
    "Spain",
    "Ireland",
    "Belgium",
    "Portugal",
]
COUNTRY_WEIGHTS = [0.55, 0.10, 0.10, 0.06, 0.06, 0.05, 0.04, 0.04]
# Latin-1 bytes: none of them is valid UTF-8.
_LATIN1_COUNTRIES = [b"Espa\xf1a", b"Fran\xe7a", b"Belgi\xeb", b"\xd6sterreich", b"R\xe9union"]
# Typical list price per category (EUR), before per-product noise.
_CATEGORY_PRICE = [15.0, 40.0, 35.0, 45.0, 90.0, 30.0, 30.0, 65.0, 55.0, 75.0]
_DISCOUNT_LEVELS = (1.0, 0.9, 0.8, 0.7)
_DISCOUNT_P = (0.70, 0.12, 0.10, 0.08)

_BAD_QUANTITY_WORDS = ["two", "three", "ten", "one"]
_EXTRA_FIELDS = ["", "extra", "promo", "1"]
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SECONDS_PER_DAY = 86_400
_MAX_DAYS = 10_000


# --------------------------------------------------------------------------------------------
# arguments


def _as_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_args(lines, seed, dirty_rate, start_date, days, customers, products):
    lines = _as_int("lines", lines)
    if lines <= 0:
        raise ValueError(f"lines must be > 0, got {lines}")
    seed = _as_int("seed", seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if isinstance(dirty_rate, bool):
        raise ValueError(f"dirty_rate must be a number in [0, 0.5], got {dirty_rate!r}")
    try:
        dirty_rate = float(dirty_rate)
    except (TypeError, ValueError):
        raise ValueError(f"dirty_rate must be a number in [0, 0.5], got {dirty_rate!r}") from None
    if not (0.0 <= dirty_rate <= 0.5):
        raise ValueError(f"dirty_rate must be in [0, 0.5], got {dirty_rate}")
    days = _as_int("days", days)
    if days <= 0 or days > _MAX_DAYS:
        raise ValueError(f"days must be between 1 and {_MAX_DAYS}, got {days}")
    if not isinstance(start_date, str) or not _DATE_RE.match(start_date):
        raise ValueError(f"start_date must be a date as YYYY-MM-DD, got {start_date!r}")
    try:
        start = _dt.date.fromisoformat(start_date)
    except ValueError:
        raise ValueError(f"start_date is not a valid date (YYYY-MM-DD): {start_date!r}") from None
    customers = _as_int("customers", customers)
    if customers < 0:
        raise ValueError(f"customers must be >= 0 (0 = derive from lines), got {customers}")
    products = _as_int("products", products)
    if products < 0 or 0 < products < MIN_PRODUCTS:
        raise ValueError(
            f"products must be 0 (derive from lines) or >= {MIN_PRODUCTS}, got {products}"
        )
    return lines, seed, dirty_rate, start, days, customers, products


def _shift_day(shift_date: str | None, start: _dt.date, days: int) -> int | None:
    """The behaviour shift's first day, in days from ``start``; None when there is none."""
    if shift_date is None:
        return None
    try:
        day = (_dt.date.fromisoformat(str(shift_date)) - start).days
    except ValueError:
        raise ValueError(f"shift_date is not a valid date (YYYY-MM-DD): {shift_date!r}") from None
    if not 0 < day < days:
        raise ValueError(f"shift_date {shift_date} is outside the period: expected after "
                         f"{start} and before {start + _dt.timedelta(days=days)}")
    return day


def _default_customers(lines: int) -> int:
    return max(50, int(round(lines / 25)))


def _default_products(lines: int) -> int:
    return max(200, int(200 * (lines / 100_000) ** 0.3))


def _split_exact(total: int, shares) -> np.ndarray:
    """Largest-remainder split of ``total`` by ``shares`` (deterministic)."""
    shares = np.asarray(shares, dtype=np.float64)
    raw = shares / shares.sum() * total
    out = np.floor(raw).astype(np.int64)
    rest = total - int(out.sum())
    if rest > 0:
        out[np.argsort(-(raw - out), kind="stable")[:rest]] += 1
    return out


# --------------------------------------------------------------------------------------------
# planted demand


def _draw_demand(seed: int) -> list[dict]:
    """Per category: weekday profile (Monday first, mean 1), yearly amplitude and peak day of the
    year, log growth per year. Its own random stream: the rest of the file does not move."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    out = []
    for k in range(len(FASHION_MNIST_CLASSES)):
        weekday = np.exp(rng.uniform(-DEMAND_WEEKDAY_SPREAD, DEMAND_WEEKDAY_SPREAD, 7))
        out.append({
            "category_id": k,
            "category": FASHION_MNIST_CLASSES[k],
            "growth_per_year": round(float(rng.uniform(*DEMAND_GROWTH_PER_YEAR)), 4),
            "yearly_amplitude": round(float(rng.uniform(*DEMAND_YEARLY_AMPLITUDE)), 4),
            "yearly_peak_day": int(rng.integers(1, 366)),
            "weekday_profile": [round(float(x), 4) for x in weekday / weekday.mean()],
        })
    return out


def planted_demand_factor(demand: dict, category: int | str, dates) -> np.ndarray:
    """The planted demand multiplier ``f_k(t)`` of one category on ``dates`` (anything
    ``numpy.asarray(..., "datetime64[D]")`` takes), from ``truth["demand"]``::

        f_k(t) = exp(growth_per_year * (t - start_date) / 365.25)
                 * (1 + yearly_amplitude * cos(2 pi (day_of_year(t) - yearly_peak_day) / 365.25))
                 * weekday_profile[weekday(t)]          (Monday = 0)

    A purchase line of the category on that day has the expected quantity
    ``max(quantity_g * f_k(t), 1)``, ``quantity_g`` being its customer's group's mean quantity.
    """
    params = next(c for c in demand["categories"]
                  if category in (c["category_id"], c["category"]))
    days = np.asarray(dates, dtype="datetime64[D]")
    since = (days - np.datetime64(demand["start_date"], "D")).astype(np.float64)
    day_of_year = (days - days.astype("datetime64[Y]").astype("datetime64[D]")).astype(
        np.float64) + 1
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    return (np.exp(params["growth_per_year"] * since / _DAYS_PER_YEAR)
            * (1 + params["yearly_amplitude"]
               * np.cos(2 * np.pi * (day_of_year - params["yearly_peak_day"]) / _DAYS_PER_YEAR))
            * np.asarray(params["weekday_profile"])[weekday])


# --------------------------------------------------------------------------------------------
# plan


class _Catalog:
    """Products, their categories and prices, and the bundles."""

    def __init__(self, rng: np.random.Generator, n_products: int):
        P = n_products
        self.n = P
        self.category = rng.permutation(np.arange(P) % 10).astype(np.int8)
        base = np.asarray(_CATEGORY_PRICE)[self.category]
        price = base * np.exp(rng.normal(0.0, 0.35, P))
        self.list_cents = (np.maximum(np.round(price), 2.0) * 100 - 1).astype(np.int64)  # x.99

        # bundles: items spread over categories so every category keeps ordinary products
        n_items = sum(BUNDLE_SIZES)
        cat_cycle = np.resize(rng.permutation(10), n_items)
        items = []
        taken = set()
        for cat in cat_cycle:
            cands = [p for p in np.flatnonzero(self.category == cat).tolist() if p not in taken]
            p = cands[int(rng.integers(len(cands)))]
            taken.add(p)
            items.append(p)
        self.bundles = []
        pos = 0
        for b, size in enumerate(BUNDLE_SIZES):
            members = items[pos : pos + size]
            pos += size
            share = round(float(rng.uniform(*BUNDLE_TRIGGER_SHARE)), 3)
            conf = round(float(rng.uniform(*BUNDLE_CONFIDENCE)), 3)
            self.bundles.append(
                {"trigger": members[0], "rest": members[1:], "share": share, "confidence": conf}
            )
        self.bundle_of = np.full(P, -1, dtype=np.int64)
        for b, bd in enumerate(self.bundles):
            self.bundle_of[[bd["trigger"], *bd["rest"]]] = b

        # ordinary products, grouped by category, with a mild popularity per product
        ordinary = np.flatnonzero(self.bundle_of < 0)
        ordinary = ordinary[np.lexsort((ordinary, self.category[ordinary]))]
        weight = rng.gamma(3.0, 1.0, len(ordinary))
        cats = self.category[ordinary].astype(np.int64)
        cum = np.empty(len(ordinary))
        for k in range(10):
            sel = np.flatnonzero(cats == k)
            c = np.cumsum(weight[sel])
            c = c / c[-1]
            c[-1] = 1.0
            cum[sel] = k + c
        self.ordinary = ordinary
        self.ordinary_cum = cum  # category k occupies (k, k + 1]
        self.max_basket = int(min(MAX_BASKET, len(ordinary) // 2))

        self.bundle_extra_mean = sum(
            bd["share"] * (1 + bd["confidence"] * len(bd["rest"])) for bd in self.bundles
        )

    def pick(self, cat: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Ordinary product for category ``cat`` by popularity, ``u`` uniform in [0, 1)."""
        target = cat + np.minimum(u, 1.0 - 1e-9)
        idx = np.searchsorted(self.ordinary_cum, target, side="right")
        return self.ordinary[np.minimum(idx, len(self.ordinary) - 1)]


def _expected_lines_per_customer(s: float, shares, extra: float) -> float:
    total = 0.0
    for g, share in zip(GROUPS, shares):
        if g["name"] == "one_off":
            inv = 1.0
        else:
            inv = 2.0 + max(s * g["invoices"] - 2.0, 0.0)
        total += share * inv * (g["basket"] + extra + RETURN_INVOICE_RATE * 0.95)
    return total


def _solve_scale(lines: int, customers: int, shares, extra: float) -> float:
    target = lines / customers
    if _expected_lines_per_customer(0.0, shares, extra) >= target:
        return 0.0
    lo, hi = 0.0, 1.0
    while _expected_lines_per_customer(hi, shares, extra) < target:
        hi *= 2.0
        if hi > 1e9:
            break
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _expected_lines_per_customer(mid, shares, extra) < target:
            lo = mid
        else:
            hi = mid
    return hi


class _Plan:
    """Customers and invoices, held in memory in compact arrays (about 7 bytes per line), with
    basket sizes adjusted so that the file has exactly ``lines`` lines.

    Purchases are indexed by ``p`` (grouped by customer), returns by ``r`` (in the order of the
    purchase they return). ``order`` lists all invoices by time: ``order < n_purchases`` is a
    purchase, otherwise the return ``order - n_purchases``.
    """

    def __init__(self, rng, lines, n_customers, catalog: _Catalog, days: int,
                 shift_day: int | None = None, shift_rng=None):
        C = n_customers
        D = days
        shares = [g["share"] for g in GROUPS]
        gp = lambda key: np.array([grp[key] for grp in GROUPS], dtype=np.float64)  # noqa: E731
        self.group_sizes = _split_exact(C, shares)
        self.group = rng.permutation(np.repeat(np.arange(len(GROUPS)), self.group_sizes)).astype(
            np.int8
        )

        # tastes (effective weights used to pick ordinary products), in blocks of customers
        alpha_g = gp("taste_alpha")
        self.taste = np.empty((C, 10), dtype=np.float32)
        for c0 in range(0, C, _PLAN_BLOCK):
            c1 = min(C, c0 + _PLAN_BLOCK)
            alpha = np.repeat(alpha_g[self.group[c0:c1]][:, None], 10, axis=1)
            raw = rng.standard_gamma(alpha)
            tot = raw.sum(axis=1, keepdims=True)
            raw = np.where(tot > 0, raw / np.where(tot > 0, tot, 1.0), 0.1)
            self.taste[c0:c1] = (1.0 - TASTE_UNIFORM_MIX) * raw + TASTE_UNIFORM_MIX / 10.0
        self.country = rng.choice(
            len(COUNTRIES), size=C, p=np.asarray(COUNTRY_WEIGHTS) / sum(COUNTRY_WEIGHTS)
        ).astype(np.int8)

        # invoices per customer, first and last purchase (days from start)
        g = self.group
        self.scale = _solve_scale(lines, C, shares, catalog.bundle_extra_mean)
        one_off = np.array([grp["name"] == "one_off" for grp in GROUPS])[g]
        lam = np.maximum(self.scale * gp("invoices")[g] - 2.0, 0.0)
        n_inv = np.where(one_off, 1, 2 + rng.poisson(lam)).astype(np.int64)
        del one_off, lam
        rlo = np.array([grp["recency"][0] for grp in GROUPS])[g]
        rhi = np.array([grp["recency"][1] for grp in GROUPS])[g]
        last = D * (1.0 - rng.uniform(rlo, rhi))
        del rlo, rhi
        flo = np.array([(grp["first"] or (0, 0))[0] for grp in GROUPS])[g]
        fhi = np.array([(grp["first"] or (0, 0))[1] for grp in GROUPS])[g]
        first = np.minimum(D * rng.uniform(flo, fhi), last)
        del flo, fhi
        basket_lam = np.maximum(gp("basket") - 1.0, 0.0)
        # the behaviour shift: one more invoice for each shifted customer, at a time drawn (from
        # its own stream, so that the plan's draws are those of a file without it) in the last
        # days; it is that customer's last invoice
        shifted = np.zeros(C, dtype=bool)
        shift_t = None
        if shift_day is not None:
            shifted = g == SHIFT_GROUP_INDEX
            shift_t = shift_day + shift_rng.random(C) * (D - shift_day)
            n_inv = n_inv + shifted
        self.shifted = shifted

        M = int(n_inv.sum())
        self.cust = np.empty(M, dtype=np.int32)
        self.ts = np.empty(M, dtype=np.int32)  # seconds from start
        self.b = np.empty(M, dtype=np.int16)  # ordinary lines
        self.extra = np.zeros(M, dtype=np.int16)  # bundle lines
        self.trig = np.zeros(M, dtype=np.uint8)  # bit k: basket holds bundle k's trigger
        self.comp = np.zeros(M, dtype=np.uint8)  # bit k: ... and the rest of bundle k
        self.ret_ts = np.full(M, -1, dtype=np.int32)  # >= 0: one line returned at that time
        end_s = D * _SECONDS_PER_DAY

        inv_end = np.cumsum(n_inv)
        c0 = 0
        while c0 < C:
            i0 = int(inv_end[c0] - n_inv[c0])
            c1 = int(np.searchsorted(inv_end, i0 + _PLAN_BLOCK, side="right"))
            c1 = max(c1, c0 + 1)
            i1 = int(inv_end[c1 - 1])
            m = i1 - i0
            cst = np.repeat(np.arange(c0, c1, dtype=np.int32), n_inv[c0:c1])
            t = first[cst] + rng.random(m) * (last - first)[cst]
            t[inv_end[c0:c1] - 1 - i0] = last[c0:c1]
            if shift_t is not None:  # the campaign's invoice last, the planted last before it
                moved = np.flatnonzero(shifted[c0:c1])
                ends = inv_end[c0:c1][moved] - 1 - i0
                t[ends - 1] = last[c0:c1][moved]
                t[ends] = shift_t[c0:c1][moved]
            day = np.clip(np.floor(t), 0, D - 1).astype(np.int64)
            ts = day * _SECONDS_PER_DAY + 8 * 3600 + np.floor(rng.random(m) * 14 * 3600).astype(
                np.int64
            )
            self.cust[i0:i1] = cst
            self.ts[i0:i1] = ts
            self.b[i0:i1] = np.minimum(1 + rng.poisson(basket_lam[g[cst]]), catalog.max_basket)
            for k, bd in enumerate(catalog.bundles):
                tk = rng.random(m) < bd["share"]
                ck = tk & (rng.random(m) < bd["confidence"])
                self.trig[i0:i1] |= tk.astype(np.uint8) << k
                self.comp[i0:i1] |= ck.astype(np.uint8) << k
                self.extra[i0:i1] += (tk + ck * len(bd["rest"])).astype(np.int16)
            has_ret = rng.random(m) < RETURN_INVOICE_RATE
            delay = np.round(_SECONDS_PER_DAY * rng.uniform(*RETURN_DELAY_DAYS, m)).astype(np.int64)
            rts = ts + delay
            self.ret_ts[i0:i1] = np.where(has_ret & (rts < end_s), rts, -1)
            c0 = c1
        # kept for the truth: the span over which each customer bought
        self.first_day = first.astype(np.float32)
        self.last_day = last.astype(np.float32)
        del first, last, inv_end

        self._adjust(rng, lines, catalog)
        kept = self.b > 0
        if not kept.all():
            for name in ("cust", "ts", "b", "extra", "trig", "comp", "ret_ts"):
                setattr(self, name, getattr(self, name)[kept])
        del kept
        M = len(self.cust)
        assert self._total() == lines
        self.n_purchases = M
        self.n_inv_per_customer = np.bincount(self.cust, minlength=C)
        self.ret_inv = np.flatnonzero(self.ret_ts >= 0).astype(np.int32)
        R = len(self.ret_inv)
        self.n_returns = R

        # all invoices in time order (stable: ties keep purchases first, by index)
        all_ts = np.concatenate([self.ts, self.ret_ts[self.ret_inv]])
        self.order = np.argsort(all_ts, kind="stable").astype(np.int32)
        del all_ts
        is_ret = self.order >= M
        pi = np.where(is_ret, 0, self.order)
        n_lines = np.where(is_ret, 1, self.b[pi] + self.extra[pi]).astype(np.int32)
        starts = np.cumsum(n_lines, dtype=np.int64) - n_lines
        n_chunks = int(starts[-1] // CHUNK_LINES) + 1
        bounds = np.searchsorted(starts, np.arange(n_chunks, dtype=np.int64) * CHUNK_LINES)
        del starts, n_lines
        eligible = np.where(is_ret, 0, self.b[pi] - (self.ret_ts[pi] >= 0)).astype(np.int32)
        self.chunk_eligible = np.add.reduceat(eligible, bounds).astype(np.int64)
        self.chunk_bounds = np.append(bounds, len(self.order)).astype(np.int64)

    def _total(self) -> int:
        return int(
            self.b.sum(dtype=np.int64)
            + self.extra.sum(dtype=np.int64)
            + np.count_nonzero(self.ret_ts >= 0)
        )

    def _spread(self, rng, delta: int, capacity, sign: int) -> int:
        """Add ``sign`` to ``b`` of random invoices, ``delta`` times, at most ``capacity(b)`` per
        invoice; returns what could not be placed."""
        while delta > 0:
            cand = np.flatnonzero(capacity(self.b) > 0)
            if len(cand) == 0:
                break
            idx, cnt = np.unique(cand[rng.integers(0, len(cand), delta)], return_counts=True)
            take = np.minimum(cnt, capacity(self.b[idx]))
            self.b[idx] += (sign * take).astype(np.int16)
            delta -= int(take.sum())
        return delta

    def _adjust(self, rng, lines: int, catalog: _Catalog) -> None:
        """Change basket sizes (and, only when unavoidable, drop returns, invoices or bundles) so
        that the total number of lines is exactly ``lines``. A dropped invoice gets ``b = 0``."""
        T = self._total()
        if T > lines:
            self._spread(rng, T - lines, lambda b: b.astype(np.int64) - 1, -1)
            T = self._total()
        if T > lines:  # drop returns
            rets = np.flatnonzero(self.ret_ts >= 0)
            self.ret_ts[rng.permutation(rets)[: T - lines]] = -1
            T = self._total()
        if T > lines:  # tiny outputs only: drop whole invoices, then bundles
            size = self.b.astype(np.int64) + self.extra
            perm = rng.permutation(len(size))
            n_drop = int(np.searchsorted(np.cumsum(size[perm]), T - lines, side="right"))
            drop = perm[:n_drop]
            T -= int(size[drop].sum())
            self.b[drop] = 0
            self.extra[drop] = 0
            self.trig[drop] = 0
            self.comp[drop] = 0
            for i in perm[n_drop:].tolist():
                if T == lines:
                    break
                if T - int(size[i]) >= lines:
                    T -= int(size[i])
                    self.b[i] = self.extra[i] = self.trig[i] = self.comp[i] = 0
            for i in perm[n_drop:].tolist():
                if T <= lines:
                    break
                if self.b[i] > 0 and self.extra[i] > 0:
                    T -= int(self.extra[i])
                    self.extra[i] = self.trig[i] = self.comp[i] = 0
            T = self._total()
        if T < lines:
            def cap(b):
                return np.where(b > 0, catalog.max_basket - b.astype(np.int64), 0)

            if self._spread(rng, lines - T, cap, +1) > 0:
                raise ValueError(
                    f"lines={lines} is too many for the number of customers; "
                    "pass a larger customers= (or 0 to derive it from lines)"
                )


# --------------------------------------------------------------------------------------------
# rendering


def _id_array(prefix: str, n: int, width: int) -> pa.Array:
    nums = pc.cast(pa.array(np.arange(1, n + 1, dtype=np.int64)), pa.string())
    padded = pc.utf8_lpad(nums, width=width, padding="0")
    return pc.cast(pc.binary_join_element_wise(prefix, padded, ""), pa.binary())


def _cents_str(c: int) -> str:
    return f"{c // 100}.{c % 100:02d}"


class _Writer:
    """Generates and writes one block of invoices at a time."""

    def __init__(self, seed, plan: _Plan, catalog: _Catalog, start, dirty_per_chunk, demand):
        self.seed = seed
        self.plan = plan
        self.cat = catalog
        self.start64 = np.datetime64(start.isoformat(), "s")
        self.dirty_per_chunk = dirty_per_chunk
        P = catalog.n
        C = len(plan.group)
        M, R = plan.n_purchases, plan.n_returns
        self.inv_width = max(7, len(str(M + R)))
        self.cust_ids = _id_array("C", C, max(6, len(str(C))))
        self.prod_ids = _id_array("P", P, max(5, len(str(P))))
        self.prod_id_str = [s.decode() for s in self.prod_ids.to_pylist()]
        unit = np.maximum(
            np.round(catalog.list_cents[:, None] * np.asarray(_DISCOUNT_LEVELS)[None, :]), 1
        ).astype(np.int64)
        self.price_str = [_cents_str(int(c)) for c in unit.ravel()]
        self.prices = pa.array([s.encode() for s in self.price_str], pa.binary())
        self.countries = pa.array([c.encode() for c in COUNTRIES], pa.binary())
        self.qmean = np.array([grp["quantity"] for grp in GROUPS])
        # planted demand multiplier per category (rows) and day from start (columns)
        last_ts = max(int(plan.ts.max(initial=0)), int(plan.ret_ts.max(initial=0)))
        n_days = last_ts // _SECONDS_PER_DAY + 1
        dates = np.datetime64(start.isoformat(), "D") + np.arange(n_days)
        self.demand = np.stack([planted_demand_factor(demand, k, dates)
                                for k in range(len(FASHION_MNIST_CLASSES))])
        self.ret_prod = np.zeros(R, dtype=np.int32)
        self.ret_qty = np.zeros(R, dtype=np.int32)
        self.ret_level = np.zeros(R, dtype=np.int8)
        # realized statistics
        self.dirty = {k: 0 for k in DIRTY_KINDS}
        self.lines = 0
        self.return_lines = 0
        self.bundle_lines = 0
        self.clean_invoices = 0
        self.trig_count = np.zeros(len(catalog.bundles), dtype=np.int64)
        self.full_count = np.zeros(len(catalog.bundles), dtype=np.int64)
        self.item_count = np.zeros(P, dtype=np.int64)
        self.pair_count = np.zeros(P * P, dtype=np.int64) if P <= 4000 else None

    # -- one block ------------------------------------------------------------------------
    def chunk(self, k: int) -> bytes:
        plan, cat = self.plan, self.cat
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1, k)))
        r0, r1 = int(plan.chunk_bounds[k]), int(plan.chunk_bounds[k + 1])
        M = plan.n_purchases
        order = plan.order[r0:r1]
        n_rows = r1 - r0
        is_ret_row = order >= M
        ridx = np.where(is_ret_row, order - M, 0)  # return index (0 for purchases)
        # purchase index; for a return row, the purchase it returns
        pidx = np.where(is_ret_row, plan.ret_inv[ridx] if plan.n_returns else 0, order)
        row_cust = plan.cust[pidx].astype(np.int64)
        row_b = np.where(is_ret_row, 0, plan.b[pidx]).astype(np.int64)
        row_n = np.where(is_ret_row, 1, row_b + plan.extra[pidx]).astype(np.int64)
        row_ts = np.where(is_ret_row, plan.ret_ts[pidx], plan.ts[pidx]).astype(np.int64)
        row_trig = np.where(is_ret_row, 0, plan.trig[pidx]).astype(np.uint8)
        row_comp = np.where(is_ret_row, 0, plan.comp[pidx]).astype(np.uint8)

        L = int(row_n.sum())
        row = np.repeat(np.arange(n_rows), row_n)
        row_start = np.concatenate([[0], np.cumsum(row_n)[:-1]])
        pos = np.arange(L) - row_start[row]
        line_ret = is_ret_row[row]
        base = ~line_ret & (pos < row_b[row])
        bundle = ~line_ret & ~base
        cust = row_cust[row]
        grp = plan.group[cust].astype(np.int64)

        prod = np.zeros(L, dtype=np.int64)
        # ordinary lines: category by taste, product by popularity, distinct within an invoice
        bi = np.flatnonzero(base)
        bprod = self._pick(rng, cust[bi])
        brow = row[bi]
        for attempt in range(200):
            key = brow * cat.n + bprod
            o = np.argsort(key, kind="stable")
            ks = key[o]
            dup = o[1:][ks[1:] == ks[:-1]]
            if len(dup) == 0:
                break
            if attempt < 50:
                bprod[dup] = self._pick(rng, cust[bi[dup]])
            else:
                bprod[dup] = cat.ordinary[rng.integers(0, len(cat.ordinary), len(dup))]
        else:  # pragma: no cover - baskets are capped well below the number of products
            raise RuntimeError("could not draw distinct products for a basket")
        prod[bi] = bprod

        # bundle lines, in bundle order within each invoice
        if bundle.any():
            e_row, e_prod = [], []
            for kb, bd in enumerate(cat.bundles):
                t_rows = np.flatnonzero((row_trig >> kb) & 1)
                c_rows = np.flatnonzero((row_comp >> kb) & 1)
                e_row.append(t_rows)
                e_prod.append(np.full(len(t_rows), bd["trigger"]))
                for item in bd["rest"]:
                    e_row.append(c_rows)
                    e_prod.append(np.full(len(c_rows), item))
            e_row = np.concatenate(e_row)
            e_prod = np.concatenate(e_prod)
            prod[bundle] = e_prod[np.argsort(e_row, kind="stable")]

        qty = 1 + rng.poisson(np.maximum(self.qmean[grp] - 1.0, 0.0))  # keeps rng's stream
        # the planted demand: own stream, so every other draw stays that of a file without it
        qrng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(3, k)))
        day = row_ts[row] // _SECONDS_PER_DAY
        factor = self.demand[cat.category[prod].astype(np.int64), np.maximum(day, 0)]
        qty = 1 + qrng.poisson(np.maximum(self.qmean[grp] * factor - 1.0, 0.0))
        level = rng.choice(len(_DISCOUNT_LEVELS), size=L, p=_DISCOUNT_P)

        # remember what will be returned
        returned = np.zeros(L, dtype=bool)
        rrows = np.flatnonzero(~is_ret_row & (plan.ret_ts[pidx] >= 0))
        if len(rrows):
            j = np.floor(rng.random(len(rrows)) * row_b[rrows]).astype(np.int64)
            li = row_start[rrows] + j
            returned[li] = True
            rid = np.searchsorted(plan.ret_inv, pidx[rrows])
            self.ret_prod[rid] = prod[li]
            self.ret_qty[rid] = qty[li]
            self.ret_level[rid] = level[li]
        # return lines
        ri = np.flatnonzero(line_ret)
        if len(ri):
            rid = ridx[row[ri]]
            prod[ri] = self.ret_prod[rid]
            orig_q = self.ret_qty[rid].astype(np.int64)
            qty[ri] = -(1 + np.floor(rng.random(len(ri)) * orig_q).astype(np.int64))
            level[ri] = self.ret_level[rid]

        # lines sorted by product within each invoice
        perm = np.lexsort((prod, row))
        row, prod, qty, level, cust = row[perm], prod[perm], qty[perm], level[perm], cust[perm]
        base, bundle, line_ret, returned = base[perm], bundle[perm], line_ret[perm], returned[perm]

        # dirty lines
        eligible = np.flatnonzero(base & ~returned)
        n_dirty = int(self.dirty_per_chunk[k])
        dirty_pos = np.sort(eligible[rng.choice(len(eligible), size=n_dirty, replace=False)])
        kinds = rng.integers(0, len(DIRTY_KINDS), size=n_dirty)
        dirty = np.zeros(L, dtype=bool)
        dirty[dirty_pos] = True
        # duplicates copy an earlier clean line of this block
        dup_k = DIRTY_KINDS.index("duplicate_line")
        src_row, src_prod, src_qty, src_level, src_cust = row.copy(), prod, qty, level, cust
        dsel = np.flatnonzero(kinds == dup_k)
        if len(dsel):
            clean_pos = np.flatnonzero(~dirty)
            p = dirty_pos[dsel]
            n_before = np.searchsorted(clean_pos, p)
            no_src = n_before == 0
            kinds[dsel[no_src]] = DIRTY_KINDS.index("bad_quantity")
            dsel, p, n_before = dsel[~no_src], p[~no_src], n_before[~no_src]
            src = clean_pos[np.floor(rng.random(len(p)) * n_before).astype(np.int64)]
            src_prod, src_qty = prod.copy(), qty.copy()
            src_level, src_cust = level.copy(), cust.copy()
            for arr_dst, arr_src in (
                (src_row, row),
                (src_prod, prod),
                (src_qty, qty),
                (src_level, level),
                (src_cust, cust),
            ):
                arr_dst[p] = arr_src[src]

        # realized statistics (clean purchase lines only)
        cp = ~dirty & ~line_ret
        clean_rows = np.zeros(n_rows, dtype=bool)
        clean_rows[row[cp]] = True
        self.clean_invoices += int(clean_rows.sum())
        for kb in range(len(cat.bundles)):
            self.trig_count[kb] += int(((row_trig >> kb) & 1).sum())
            self.full_count[kb] += int(((row_comp >> kb) & 1).sum())
        crow, cprod = row[cp], prod[cp]
        self.item_count += np.bincount(cprod, minlength=cat.n)
        if self.pair_count is not None:
            P = cat.n
            keys = []
            lag = 1
            while lag < len(crow):
                same = crow[lag:] == crow[:-lag]
                if not same.any():
                    break
                keys.append(cprod[:-lag][same] * P + cprod[lag:][same])
                lag += 1
            if keys:
                self.pair_count += np.bincount(np.concatenate(keys), minlength=P * P)
        self.lines += L
        self.return_lines += int(line_ret.sum())
        self.bundle_lines += int(bundle.sum())
        for kk in range(len(DIRTY_KINDS)):
            self.dirty[DIRTY_KINDS[kk]] += int((kinds == kk).sum())

        return self._render(rng, r0, n_rows, is_ret_row, row_ts, src_row, src_cust, src_prod,
                            src_qty, src_level, dirty_pos, kinds, L)

    def _pick(self, rng, cust):
        u = rng.random(len(cust))
        cum = np.cumsum(self.plan.taste[cust], axis=1)
        cat_idx = (u[:, None] >= cum[:, :9]).sum(axis=1)
        return self.cat.pick(np.minimum(cat_idx, 9), rng.random(len(cust)))

    def _render(self, rng, r0, n_rows, is_ret_row, ts_sec, row, cust, prod, qty, level,
                dirty_pos, kinds, L) -> bytes:
        plan = self.plan
        nums = np.arange(r0 + 1, r0 + n_rows + 1, dtype=np.int64)
        padded = pc.utf8_lpad(
            pc.cast(pa.array(nums), pa.string()), width=self.inv_width, padding="0"
        )
        prefix = pc.take(pa.array(["I", "C"]), pa.array(is_ret_row.astype(np.int8)))
        inv_ids = pc.cast(pc.binary_join_element_wise(prefix, padded, ""), pa.binary())
        ts_str = pc.cast(
            pc.strftime(
                pa.array(self.start64 + ts_sec.astype("timedelta64[s]")),
                format="%Y-%m-%d %H:%M:%S",
            ),
            pa.binary(),
        )
        row_a = pa.array(row)
        cols = [
            pc.take(inv_ids, row_a),
            pc.take(self.cust_ids, pa.array(cust)),
            pc.take(self.prod_ids, pa.array(prod)),
            pc.cast(pc.cast(pa.array(qty), pa.string()), pa.binary()),
            pc.take(self.prices, pa.array(prod * len(_DISCOUNT_LEVELS) + level)),
            pc.take(ts_str, row_a),
            pc.take(self.countries, pa.array(plan.country[cust].astype(np.int64))),
        ]
        if len(dirty_pos):
            cols = self._break(rng, cols, row, prod, qty, level, ts_sec, dirty_pos, kinds, L)
        joined = pc.binary_join_element_wise(*cols, b",", null_handling="skip")
        joined = pc.binary_join_element_wise(joined, pa.scalar(b"\n"), b"")
        bufs = joined.buffers()
        offsets = np.frombuffer(bufs[1], dtype=np.int32)[joined.offset : joined.offset + L + 1]
        return memoryview(bufs[2])[int(offsets[0]) : int(offsets[-1])].tobytes()

    def _break(self, rng, cols, row, prod, qty, level, ts_sec, dirty_pos, kinds, L):
        """Substitute the planted defects (one per dirty line)."""
        col_idx = {c: i for i, c in enumerate(TRANSACTION_COLUMNS)}

        def replace(col, positions, values):
            mask = np.zeros(L, dtype=bool)
            mask[positions] = True
            cols[col_idx[col]] = pc.replace_with_mask(
                cols[col_idx[col]], pa.array(mask), pa.array(values, pa.binary())
            )

        K = {name: np.sort(dirty_pos[kinds == i]) for i, name in enumerate(DIRTY_KINDS)}

        pos = K["bad_timestamp"]
        if len(pos):
            when = self.start64 + ts_sec[row[pos]].astype("timedelta64[s]")
            text = np.datetime_as_string(when, unit="s")
            pattern = rng.integers(0, 5, len(pos))
            vals = []
            for t, pat in zip(text.tolist(), pattern.tolist()):
                d, tm = t.split("T")
                y, m, dd = d.split("-")
                vals.append(
                    (
                        f"{y}-13-{dd} {tm}",
                        f"{y}-{m}-45 {tm}",
                        f"{d} 99:99:99",
                        "yesterday",
                        f"{d} 25:{tm[3:]}",
                    )[pat].encode()
                )
            replace("invoice_ts", pos, vals)

        pos = K["nonpositive_price"]
        if len(pos):
            pattern = rng.integers(0, 3, len(pos))
            idx = (prod[pos] * len(_DISCOUNT_LEVELS) + level[pos]).tolist()
            vals = [
                ("0.00", "-" + self.price_str[i], "0")[pat].encode()
                for i, pat in zip(idx, pattern.tolist())
            ]
            replace("unit_price", pos, vals)

        pos = K["missing_customer_id"]
        if len(pos):
            replace("customer_id", pos, [b""] * len(pos))

        pos = K["bad_quantity"]
        if len(pos):
            pattern = rng.integers(0, 4, len(pos))
            word = rng.integers(0, len(_BAD_QUANTITY_WORDS), len(pos))
            vals = []
            for q, pat, w in zip(qty[pos].tolist(), pattern.tolist(), word.tolist()):
                vals.append(
                    (_BAD_QUANTITY_WORDS[w], f"{q}x", f"x{q}", f"{q} pcs")[pat].encode()
                )
            replace("quantity", pos, vals)

        pos = K["bad_encoding"]
        if len(pos):
            which = rng.integers(0, len(_LATIN1_COUNTRIES), len(pos))
            replace("country", pos, [_LATIN1_COUNTRIES[w] for w in which.tolist()])

        pos = K["wrong_column_count"]
        if len(pos):
            drop = rng.random(len(pos)) < 0.5
            # appended field
            add = pos[~drop]
            if len(add):
                which = rng.integers(0, len(_EXTRA_FIELDS), len(add))
                country = cols[col_idx["country"]]
                base = pc.take(country, pa.array(add)).to_pylist()
                replace(
                    "country",
                    add,
                    [c + b"," + _EXTRA_FIELDS[w].encode() for c, w in zip(base, which.tolist())],
                )
            # dropped field: a null is skipped by the join, separator included. invoice_id and
            # product_id stay, so that no two broken lines can be identical.
            rem = pos[drop]
            if len(rem):
                droppable = np.array([1, 3, 4, 5, 6])
                field = droppable[rng.integers(0, len(droppable), len(rem))]
                for f in droppable.tolist():
                    sel = rem[field == f]
                    if len(sel):
                        mask = np.zeros(L, dtype=bool)
                        mask[sel] = True
                        cols[f] = pc.if_else(pa.array(mask), pa.scalar(None, pa.binary()), cols[f])
        # duplicate_line: already a copy of an earlier clean line (see chunk())
        return cols


# --------------------------------------------------------------------------------------------
# main entry point


def _atomic_write_bytes(path: Path, parts) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for part in parts:
            f.write(part)
    os.replace(tmp, path)


def generate_transactions(
    out_dir: str | Path,
    lines: int,
    seed: int,
    dirty_rate: float = 0.0,
    start_date: str = "2025-11-23",
    days: int = 365,
    customers: int = 0,
    products: int = 0,
    progress: bool = False,
    shift_date: str | None = None,
) -> dict:
    """Writes out_dir/transactions.csv, out_dir/products.csv, out_dir/truth.json; returns the
    truth dict.

    Also writes out_dir/customers_truth.csv
    (``customer_id,group,taste_category_0..9,purchase_rate_per_day``).

    ``lines``: number of data lines (header excluded) in transactions.csv, exactly.
    ``seed``: the same arguments give byte-identical files.
    ``dirty_rate``: share of lines (0 to 0.5) that carry exactly one planted defect
    (see :data:`DIRTY_KINDS`); they replace clean lines, so clean lines = lines - dirty.
    ``start_date``/``days``: every timestamp lies in [start_date, start_date + days);
    ``start_date + days`` is ``as_of`` in the truth.
    ``customers``/``products``: 0 derives them from ``lines`` (about lines/25 customers, at least
    50; 200 products growing slowly with lines).
    ``progress``: print a progress line per block to stderr.
    ``shift_date``: plant a behaviour shift from this day (YYYY-MM-DD, within the period; see
    the module's "Planted structure"); None (the default) plants none, and the files are those
    of the same arguments without it.

    Raises ValueError naming the argument when one is out of range.
    """
    lines, seed, dirty_rate, start, days, customers, products = _check_args(
        lines, seed, dirty_rate, start_date, days, customers, products
    )
    n_customers = customers or _default_customers(lines)
    n_products = products or _default_products(lines)
    as_of = start + _dt.timedelta(days=days)
    shift_day = _shift_day(shift_date, start, days)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    plan_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    catalog = _Catalog(plan_rng, n_products)
    plan = _Plan(plan_rng, lines, n_customers, catalog, days, shift_day,
                 np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,))))

    n_chunks = len(plan.chunk_bounds) - 1
    eligible_total = int(plan.chunk_eligible.sum())
    dirty_requested = int(round(dirty_rate * lines))
    dirty_total = min(dirty_requested, eligible_total)
    if dirty_total > 0:
        dirty_per_chunk = plan_rng.multivariate_hypergeometric(
            plan.chunk_eligible.astype(np.int64), dirty_total, method="marginals"
        )
    else:
        dirty_per_chunk = np.zeros(n_chunks, dtype=np.int64)

    demand = {"start_date": start.isoformat(), "categories": _draw_demand(seed)}
    writer = _Writer(seed, plan, catalog, start, dirty_per_chunk, demand)

    def blocks():
        yield (",".join(TRANSACTION_COLUMNS) + "\n").encode()
        for k in range(n_chunks):
            yield writer.chunk(k)
            if progress:
                print(
                    f"deepmine generate: {writer.lines:,}/{lines:,} lines "
                    f"(block {k + 1}/{n_chunks})",
                    file=sys.stderr,
                    flush=True,
                )

    _atomic_write_bytes(out / "transactions.csv", blocks())
    assert writer.lines == lines, (writer.lines, lines)

    # products.csv
    prod_rows = [",".join(PRODUCT_COLUMNS) + "\n"]
    for p in range(catalog.n):
        c = int(catalog.category[p])
        prod_rows.append(
            f"{writer.prod_id_str[p]},{c},{FASHION_MNIST_CLASSES[c]},"
            f"{_cents_str(int(catalog.list_cents[p]))}\n"
        )
    _atomic_write_bytes(out / "products.csv", ["".join(prod_rows).encode()])

    # customers_truth.csv (customers with at least one purchase invoice in the file)
    cust_width = max(6, len(str(len(plan.group))))
    group_names = [g["name"] for g in GROUPS]
    has_inv = plan.n_inv_per_customer > 0

    def customer_rows():
        yield (
            "customer_id,group,"
            + ",".join(f"taste_category_{i}" for i in range(10))
            + ",purchase_rate_per_day\n"
        ).encode()
        idx = np.flatnonzero(has_inv)
        active = np.array([g["active"] for g in GROUPS])
        for s in range(0, len(idx), 50_000):
            part = idx[s : s + 50_000]
            taste = np.round(plan.taste[part], 6).tolist()
            grp = plan.group[part].tolist()
            rate = np.where(
                active[plan.group[part]],
                plan.n_inv_per_customer[part]
                / np.maximum(plan.last_day[part] - plan.first_day[part], 1.0),
                0.0,
            ).tolist()
            yield "".join(
                f"C{c + 1:0{cust_width}d},{group_names[g]},"
                + ",".join(f"{x:.6f}" for x in t)
                + f",{r:.6f}\n"
                for c, g, t, r in zip(part.tolist(), grp, taste, rate)
            ).encode()

    _atomic_write_bytes(out / "customers_truth.csv", customer_rows())

    # truth.json
    denom = writer.clean_invoices
    bundles = []
    for b, bd in enumerate(catalog.bundles):
        items = [bd["trigger"], *bd["rest"]]
        trig_n, full_n = int(writer.trig_count[b]), int(writer.full_count[b])
        bundles.append(
            {
                "id": f"B{b + 1}",
                "items": [writer.prod_id_str[p] for p in items],
                "trigger": writer.prod_id_str[bd["trigger"]],
                "rest": [writer.prod_id_str[p] for p in bd["rest"]],
                "planted": {
                    "trigger_share": bd["share"],
                    "confidence": bd["confidence"],
                    "support": round(bd["share"] * bd["confidence"], 6),
                },
                "realized": {
                    "invoices_with_trigger": trig_n,
                    "invoices_with_bundle": full_n,
                    "trigger_share": trig_n / denom if denom else 0.0,
                    "support": full_n / denom if denom else 0.0,
                    "confidence": full_n / trig_n if trig_n else 0.0,
                },
            }
        )

    background = {"max_pair": None, "max_pair_count": 0, "max_pair_support": 0.0}
    bundle_of = catalog.bundle_of
    if writer.pair_count is not None:
        P = catalog.n
        pc_ = writer.pair_count.reshape(P, P)
        same_bundle = (bundle_of[:, None] >= 0) & (bundle_of[:, None] == bundle_of[None, :])
        masked = np.where(same_bundle, 0, pc_)
        flat = int(np.argmax(masked))
        a, c = divmod(flat, P)
        if masked[a, c] > 0:
            background["max_pair"] = [writer.prod_id_str[a], writer.prod_id_str[c]]
            background["max_pair_count"] = int(masked[a, c])
            background["max_pair_support"] = int(masked[a, c]) / denom if denom else 0.0
    ordinary_counts = np.where(bundle_of < 0, writer.item_count, 0)
    top = int(np.argmax(ordinary_counts))
    background["max_item"] = writer.prod_id_str[top]
    background["max_item_count"] = int(ordinary_counts[top])
    background["max_item_support"] = int(ordinary_counts[top]) / denom if denom else 0.0

    n_dirty = int(sum(writer.dirty.values()))
    groups = []
    for gi, g in enumerate(GROUPS):
        params = {
            k: v for k, v in g.items() if k not in ("name", "description", "share", "active")
        }
        params["recency"] = list(g["recency"])
        params["first"] = list(g["first"]) if g["first"] else None
        params["invoices_scaled"] = (
            1.0 if g["name"] == "one_off" else 2.0 + max(plan.scale * g["invoices"] - 2.0, 0.0)
        )
        members = plan.group == gi
        groups.append(
            {
                "name": g["name"],
                "description": g["description"],
                "share": g["share"],
                "active": g["active"],
                "size": int((members & has_inv).sum()),
                "params": params,
                "mean_invoices": float(plan.n_inv_per_customer[members & has_inv].mean())
                if (members & has_inv).any()
                else 0.0,
            }
        )

    truth = {
        "generator": "deepmine.data.generate",
        "format_version": 1,
        "args": {
            "lines": lines,
            "seed": seed,
            "dirty_rate": dirty_rate,
            "start_date": start.isoformat(),
            "days": days,
            "customers": customers,
            "products": products,
        },
        "seed": seed,
        "start_date": start.isoformat(),
        "as_of": as_of.isoformat(),
        "days": days,
        "files": {
            "transactions": "transactions.csv",
            "products": "products.csv",
            "customers_truth": "customers_truth.csv",
        },
        "columns": list(TRANSACTION_COLUMNS),
        "timestamp_format": "yyyy-MM-dd HH:mm:ss",
        "counts": {
            "lines": writer.lines,
            "clean_lines": writer.lines - n_dirty,
            "dirty_lines": n_dirty,
            "invoices": plan.n_purchases + plan.n_returns,
            "purchase_invoices": plan.n_purchases,
            "return_invoices": plan.n_returns,
            "clean_purchase_invoices": denom,
            "returns": writer.return_lines,
            "bundle_lines": writer.bundle_lines,
            "customers": int(has_inv.sum()),
            "products": catalog.n,
        },
        "dirty": dict(writer.dirty),
        "dirty_requested": dirty_requested,
        "groups": groups,
        "bundles": bundles,
        "dirty_lines_note": (
            "each broken line has exactly one defect; only ordinary purchase lines that are not "
            "returned later are broken; broken lines are all distinct from each other and from "
            "the clean lines, except duplicate_line, an exact copy of an earlier clean line"
        ),
        "bundle_stats_basis": (
            "realized values count purchase invoices (id starting with I) over the clean lines; "
            "the denominator is counts.clean_purchase_invoices (invoices with at least one clean "
            "line); bundle lines are never broken"
        ),
        "background": background,
        "returns": {
            "invoice_rate": RETURN_INVOICE_RATE,
            "delay_days": list(RETURN_DELAY_DAYS),
            "invoice_prefix": "C",
            "lines_per_return_invoice": 1,
        },
        "taste": {
            "categories": list(FASHION_MNIST_CLASSES),
            "uniform_mix": TASTE_UNIFORM_MIX,
            "dirichlet_alpha_by_group": {g["name"]: g["taste_alpha"] for g in GROUPS},
            "file": "customers_truth.csv",
            "note": "file weights are the effective tastes used to pick ordinary products",
        },
        "countries": list(COUNTRIES),
        "demand": {
            **demand,
            "model": (
                "a purchase line of category k on day t has the expected quantity "
                "max(quantity_g * f_k(t), 1), quantity_g its group's params.quantity; "
                "f_k(t) = exp(growth_per_year * (t - start_date) / 365.25) * (1 + "
                "yearly_amplitude * cos(2 pi (day_of_year(t) - yearly_peak_day) / 365.25)) * "
                "weekday_profile[weekday(t)], Monday first (deepmine.data.generate."
                "planted_demand_factor)"
            ),
            "note": (
                "quantities only: the number of lines per day follows the customer groups "
                "(more lines early in the period, fewer once at_risk and loyal stop), so the "
                "demand per period is that line count times the planted multiplier"
            ),
        },
    }
    if shift_day is not None:
        members = plan.shifted & has_inv
        truth["args"]["shift_date"] = str(shift_date)
        truth["behaviour_shift"] = {
            "kind": "win_back",
            "group": SHIFT_GROUP,
            "from_date": (start + _dt.timedelta(days=shift_day)).isoformat(),
            "to_date": as_of.isoformat(),
            "customers": int(members.sum()),
            "description": (
                f"every {SHIFT_GROUP} customer makes one more purchase invoice on a day drawn "
                "uniformly from [from_date, to_date), its last; its earlier invoices keep the "
                "group's planted span"
            ),
        }
    _atomic_write_bytes(
        out / "truth.json", [(json.dumps(truth, indent=2, sort_keys=False) + "\n").encode()]
    )
    return truth
