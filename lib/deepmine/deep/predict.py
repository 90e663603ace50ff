"""Batch inference with Spark: a trained model applied to a whole feature table.

The weights travel to the executors as a broadcast `state_dict` (bytes, loaded with
`torch.load(weights_only=True)`) plus the model's JSON spec; each Python worker builds the model
once per task and runs it over Arrow batches (`mapInPandas`).
"""
from __future__ import annotations

import io
import json
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from deepmine.core.schemas import TABLES


def predict(features: DataFrame, spec: dict, weights: bytes, id_column: str, table: str) -> DataFrame:
    """`features` (id_column, features) -> rows of the predictions `table`'s schema.

    cnn: predicted_label and its softmax probability; a text model: sentiment_probability (the
    softmax's positive class); a clustering model: cluster (argmax of the soft assignment), its
    probability and the embedding.
    """
    schema = TABLES[table]
    shipped = features.sparkSession.sparkContext.broadcast(weights)
    spec_text = json.dumps(spec)
    classify = spec["kind"] == "cnn"
    sentiment = spec["kind"] in ("textcnn", "textrnn")

    def infer(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch
        from deepmine.deep.models import build
        torch.set_num_threads(1)  # one task per core: no oversubscription
        model = build(json.loads(spec_text))
        model.load_state_dict(torch.load(io.BytesIO(shipped.value), weights_only=True))
        model.eval()
        for pdf in batches:
            if pdf.empty:
                continue
            x = torch.from_numpy(np.stack(pdf["features"].to_numpy()).astype(np.float32))
            with torch.no_grad():
                if sentiment:
                    prob = torch.softmax(model(x), dim=1)[:, 1]
                    yield pd.DataFrame({id_column: pdf[id_column],
                                        "sentiment_probability": prob.numpy().astype(np.float64)})
                elif classify:
                    prob = torch.softmax(model(x), dim=1)
                    best = prob.max(dim=1)
                    yield pd.DataFrame({id_column: pdf[id_column],
                                        "predicted_label": best.indices.numpy().astype(np.int64),
                                        "probability": best.values.numpy().astype(np.float32)})
                else:
                    _, z, q = model(x)
                    best = q.max(dim=1)
                    yield pd.DataFrame({id_column: pdf[id_column],
                                        "cluster": best.indices.numpy().astype(np.int32),
                                        "probability": best.values.numpy().astype(np.float32),
                                        "embedding": list(z.numpy().astype(np.float32))})

    return features.select(id_column, "features").mapInPandas(infer, schema)
