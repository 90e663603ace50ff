"""Reading feature tables into PyTorch: Petastorm, sharded by Horovod rank, in batches.

`open_loader` is the one place a rank's reader is opened: `make_batch_reader` over the table's
Parquet files with `cur_shard=rank, shard_count=size` (Petastorm deals row groups to shards, which
is why features.py writes row groups of equal size; the deal is by row-group index, i % size, so a
rank keeps its row groups every epoch), their order and the rows shuffled with a seed that changes
per epoch, behind
`petastorm.pytorch.BatchedDataLoader` (column-wise, ~25x the rows/s of the row-wise DataLoader).
Across the ranks of one epoch, every row is read exactly once.

Petastorm 0.12.1 turns a list column into a matrix row by row (to pandas, one array per row, then
`np.vstack`): two thirds of an epoch's time in scripts/bench/loader.py. `open_loader` gives the
reader `ColumnarBatches` instead, which reshapes Arrow's flat buffer of values (a list column of
equal-length lists is one buffer plus offsets) and leaves every other column to pandas as
Petastorm does; the batches hold the same values (tests/test_train.py compares them).

With `pool="dummy"` the reader runs in the calling thread; with `pool="read_ahead"` (training's
default) one worker thread decodes the next row groups meanwhile and hands them over in the order
they were dealt. Either way the order of row groups and hence of batches is fixed by the seed: the
condition for a resumed training to retrace an uninterrupted one. Without a shuffling buffer the
batches are sliced from each row group in order (`batches_in_order`), not copied.

`parquet_parts` lists a table partition's files with their row-group sizes (and the `split` each
holds), read from Parquet footers only, through pyarrow's file systems (file://, hdfs://, s3://).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass(frozen=True)
class ParquetPart:
    url: str  # file URL, as Petastorm takes it
    row_group_rows: tuple[int, ...]
    split: str | None  # the single `split` value of the file, when the table has that column

    @property
    def rows(self) -> int:
        return sum(self.row_group_rows)


def _url_of(fs: pafs.FileSystem, path: str, scheme_url: str) -> str:
    if isinstance(fs, pafs.LocalFileSystem):
        return "file://" + path
    scheme, _, rest = scheme_url.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}{path}"


def parquet_parts(table_url: str) -> list[ParquetPart]:
    """The data files under `table_url` (a table partition), sorted by name."""
    fs, root = pafs.FileSystem.from_uri(table_url)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    parts = []
    for info in sorted(infos, key=lambda i: i.path):
        name = info.base_name
        if info.type != pafs.FileType.File or name.startswith(("_", ".")) or not name.endswith(".parquet"):
            continue
        with fs.open_input_file(info.path) as handle:
            meta = pq.ParquetFile(handle).metadata
            rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
            split = None
            names = [meta.schema.column(i).name for i in range(meta.num_columns)]
            if "split" in names and meta.num_row_groups:
                values = pq.ParquetFile(handle).read_row_group(0, columns=["split"]).column(0)
                distinct = set(values.to_pylist())
                split = distinct.pop() if len(distinct) == 1 else None
        parts.append(ParquetPart(_url_of(fs, info.path, table_url), rows, split))
    return parts


def split_urls(parts: list[ParquetPart], split: str | None = None) -> list[str]:
    """File URLs of the non-empty parts (of one split, if given)."""
    return [p.url for p in parts if p.rows and (split is None or p.split == split)]


def column_to_numpy(column: pa.ChunkedArray | pa.Array, shape: tuple = ()) -> np.ndarray:
    """One column of a row group as the array a Petastorm batch holds: list columns as
    (rows, length) (or (rows, *shape)) from the flat values, strings as a NumPy str array, others
    through pandas."""
    if isinstance(column, pa.ChunkedArray):  # one chunk (a row group): no copy to combine
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    else:
        array = column
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = pc.list_value_length(array)
        widths = pc.min_max(lengths).as_py()
        if array.null_count or widths["min"] != widths["max"]:
            raise RuntimeError(f"list column of {len(array)} rows: expected lists of one length "
                               f"and no nulls, found lengths {widths['min']}..{widths['max']} and "
                               f"{array.null_count} nulls")
        values = array.flatten().to_numpy(zero_copy_only=False)
        width = widths["max"] or 0
        matrix = values.reshape(len(array), width)
        return matrix.reshape((len(array), *shape)) if len(shape) > 1 else matrix
    values = array.to_pandas()
    values = values.values if hasattr(values, "values") else values
    return values.astype(np.str_) if pa.types.is_string(array.type) else values


class ColumnarBatches:
    """The reader's results-queue reader (what turns each row group the workers read into a
    batch), with list columns converted by `column_to_numpy`."""
    batched_output = True

    def read_next(self, workers_pool, schema, ngram):
        from petastorm.workers_pool import EmptyResultError
        if ngram:
            raise ValueError("batched reading has no n-grams")
        try:
            table = workers_pool.get_results()
        except EmptyResultError:
            raise StopIteration
        return schema.make_namedtuple(**{
            name: column_to_numpy(table.column(name), tuple(schema.fields[name].shape or ()))
            for name in table.column_names})


# "dummy": row groups read in the calling thread; "read_ahead": one worker thread reads the next
# row groups (at most READ_AHEAD_GROUPS decoded) while the caller trains on this one, in the same
# order, since a single worker takes them as they were dealt; "thread": `workers` threads, faster
# still, but the order of row groups then depends on which thread finishes first
POOLS = ("dummy", "read_ahead", "thread")
READ_AHEAD_GROUPS = 2


@contextlib.contextmanager
def open_loader(urls: list[str], rank: int, size: int, columns: list[str], batch_size: int,
                seed: int | None = None, epoch: int = 0, shuffle: bool = True,
                shuffle_buffer: int = 0, pool: str = "read_ahead", workers: int = 4,
                columnar: bool = True) -> Iterator:
    """A batched PyTorch loader over this rank's shard of `urls`, for one epoch.

    Yields dicts of tensors, one entry per column in `columns` (list columns become 2-D). With
    `shuffle`, the row-group order is shuffled (seed + epoch) and, if `shuffle_buffer` > 0, rows
    (torch's global generator: seed it per epoch for a reproducible order). The last batch may be
    smaller than `batch_size`. `columnar` False leaves list columns to Petastorm's own conversion
    (the same values, slower).
    """
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    if not urls:
        raise ValueError("open_loader: no Parquet files to read (is the feature table empty?)")
    if pool not in POOLS:
        raise ValueError(f"open_loader: pool {pool!r}, expected one of {POOLS}")
    ahead = pool == "read_ahead"
    reader = make_batch_reader(
        urls, schema_fields=columns, reader_pool_type="thread" if ahead else pool,
        workers_count=1 if pool in ("dummy", "read_ahead") else workers,
        results_queue_size=READ_AHEAD_GROUPS if ahead else 50,
        seed=(seed + epoch) if (shuffle and seed is not None) else None,
        shuffle_row_groups=shuffle, shuffle_rows=False, num_epochs=1,
        cur_shard=rank, shard_count=size)
    if columnar:
        reader._results_queue_reader = ColumnarBatches()
    if shuffle and shuffle_buffer > 0:
        with BatchedDataLoader(reader, batch_size=batch_size,
                               shuffling_queue_capacity=shuffle_buffer) as loader:
            yield loader
        return
    try:
        yield batches_in_order(reader, batch_size)
    finally:
        reader.stop()
        reader.join()


def batches_in_order(blocks: Iterable, batch_size: int) -> Iterator[dict]:
    """Batches of `batch_size` rows (the last may be smaller) in the order of `blocks`, the
    reader's row groups as namedtuples of arrays: what Petastorm's BatchedDataLoader gives with
    no shuffling buffer, without its copy of every row group (it concatenates the rest of one row
    group with the whole next one). Within a row group a batch is a view; only a batch that spans
    two row groups is joined, from its own rows."""
    import torch
    from petastorm.pytorch import _sanitize_pytorch_types
    pending: list[dict] = []
    held = 0
    for row in blocks:
        block = row._asdict()
        _sanitize_pytorch_types(block)  # the type promotions Petastorm's loaders make
        block = {k: torch.as_tensor(v) for k, v in block.items()}
        n = len(next(iter(block.values()))) if block else 0
        start = 0
        if held:
            start = min(batch_size - held, n)
            pending.append({k: v[:start] for k, v in block.items()})
            held += start
            if held < batch_size:
                continue
            yield {k: torch.cat([p[k] for p in pending]) for k in block}
            pending, held = [], 0
        while n - start >= batch_size:
            yield {k: v[start:start + batch_size] for k, v in block.items()}
            start += batch_size
        if start < n:
            pending, held = [{k: v[start:] for k, v in block.items()}], n - start
    if held:
        yield {k: torch.cat([p[k] for p in pending]) for k in pending[0]}


def rows_seen(urls: list[str], epochs: int, seed: int, batch_size: int = 64,
              shuffle_buffer: int = 128) -> dict:
    """Rank function (under Horovod): the row_ids this rank reads in each of `epochs` epochs.
    Checks the sharding: across ranks, each epoch's lists together hold every row once."""
    import horovod.torch as hvd
    hvd.init()
    seen = []
    for epoch in range(epochs):
        ids: list[int] = []
        with open_loader(urls, hvd.rank(), hvd.size(), ["row_id"], batch_size, seed=seed,
                         epoch=epoch, shuffle_buffer=shuffle_buffer) as loader:
            for batch in loader:
                ids += batch["row_id"].tolist()
        seen.append(ids)
    return {"rank": hvd.rank(), "seen": seen}
