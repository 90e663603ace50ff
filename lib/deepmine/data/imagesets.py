"""Image sets unlike each other, for the generalization suite and the quality benchmark.

No default here was chosen on these sets: they exist to show whether the image stages hold up on
data nobody tuned them on (issue 13). Each set is (pixels uint8 n x height x width, labels with -1
for unknown, splits): other sizes (8x8, 16x16, 28x28), dark-on-light as well as light-on-dark,
sparse one-pixel strokes, a real set (scikit-learn's 8x8 handwritten digits, 1,797 images, which
ship inside the package), few and many rows. `publish_image_features` writes one as the
features stage writes `features/images` (same layout, same row ids), so `run_train` reads it as it
would any run's.
"""
from __future__ import annotations

import numpy as np

SETS = ("digits8", "shapes16_inverted", "strokes28", "shapes28")


def strokes(n: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One-pixel-wide bright line segments on black, the class the angle (10 angles 18 degrees
    apart), jittered in angle, length, position and brightness: sparse (about 4% of pixels lit)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    out = np.zeros((n, height, width), np.uint8)
    for i, label in enumerate(labels):
        angle = label * np.pi / 10 + rng.normal(0, 0.04)
        half = rng.uniform(0.3, 0.45)
        cy, cx = height / 2 + rng.uniform(-2, 2), width / 2 + rng.uniform(-2, 2)
        for t in np.linspace(-half, half, 4 * max(height, width)):
            y, x = int(cy + t * height * np.sin(angle)), int(cx + t * width * np.cos(angle))
            if 0 <= y < height and 0 <= x < width:
                out[i, y, x] = int(rng.uniform(160, 255))
    return out, labels


def digits8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: 1,797 real 8x8 images, 16 grey levels, scaled to 0-255."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images * 255 / 16).round().astype(np.uint8), d.target.astype(np.int64)


def make(name: str, n: int = 0, seed: int = 0, unlabelled: float = 0.0
         ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(pixels, labels, splits) of set `name` (`SETS`): n rows (0 = the set's own size), a
    seeded sixth of them `test`, and a share `unlabelled` of the training rows labelled -1."""
    from deepmine.deep.features import synthetic_images
    if name == "digits8":
        pixels, labels = digits8()
    elif name == "shapes16_inverted":
        pixels, labels = synthetic_images(n or 600, 16, 16, seed)
        pixels = 255 - pixels  # dark shapes on a white ground
    elif name == "strokes28":
        pixels, labels = strokes(n or 3000, 28, 28, seed)
    elif name == "shapes28":
        pixels, labels = synthetic_images(n or 1400, 28, 28, seed)
    else:
        raise ValueError(f"image set {name!r}: expected one of {list(SETS)}")
    if n and n < len(labels):
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), n, replace=False))
        pixels, labels = pixels[keep], labels[keep]
    rng = np.random.default_rng(seed + 1)
    test = rng.random(len(labels)) < 1 / 6
    labels = labels.astype(np.int64).copy()
    if unlabelled:
        labels[(~test) & (rng.random(len(labels)) < unlabelled)] = -1
    return pixels, labels, ["test" if t else "train" for t in test]


def publish_image_features(spark, config, run_date: str, pixels: np.ndarray, labels: np.ndarray,
                           splits: list[str]) -> int:
    """`features/images` for `run_date` from these images, laid out as the features stage lays
    it out (row ids train first, `features.row_groups` equal row groups per split)."""
    import pandas as pd
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from deepmine.deep.features import (decode_pixels, publish_for_petastorm, row_group_layout,
                                   with_row_ids)
    from deepmine.core.lake import Lake
    n = len(labels)
    flat = pixels.reshape(n, -1)
    pdf = pd.DataFrame({"image_id": [f"img-{i:06d}" for i in range(n)],
                        "label": labels.astype(np.int64),
                        "pixels": [row.tobytes() for row in flat], "split": splits})
    schema = T.StructType([T.StructField("image_id", T.StringType()),
                           T.StructField("label", T.LongType()),
                           T.StructField("pixels", T.BinaryType()),
                           T.StructField("split", T.StringType())])
    images = decode_pixels(spark.createDataFrame(pdf, schema), pixels.shape[1], pixels.shape[2])
    images = images.select("image_id", "label", "split", "features")
    lake = Lake(spark, config.lake.root)
    with with_row_ids(images.withColumn("_test", F.col("split") == "test"), "image_id",
                      config.features.seed, order_first="_test") as images:
        images = row_group_layout(spark, images.drop("_test"), config.features.row_groups,
                                  "split", ("train", "test"))
        return publish_for_petastorm(lake, images, "features/images",
                                     f"run_date={run_date}")["rows"]
