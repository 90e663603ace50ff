"""The networks: plain `nn.Module`s that know nothing of Horovod, Spark or the lake.

Every model takes flat float vectors (batch x features; an image is height*width intensities) so
the training loop and batch inference handle all of them alike. `build(spec)` makes a model from a
JSON-able spec, which is how weights travel: a spec plus a `state_dict`, never a pickled module.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from deepmine.deep.models.autoencoder import ConvAutoencoder, DenseAutoencoder
from deepmine.deep.models.cnn import CNNClassifier
from deepmine.deep.models.dec import ClusteringModel, target_distribution
from deepmine.deep.models.ncf import GMF, KINDS as NCF_KINDS, MLP, NeuMF, build_ncf
from deepmine.deep.models.text import TextCNN, TextRNN

__all__ = ["ConvAutoencoder", "DenseAutoencoder", "CNNClassifier", "ClusteringModel",
           "TextCNN", "TextRNN", "GMF", "MLP", "NeuMF", "target_distribution", "build"]

TEXT_KINDS = ("textcnn", "textrnn")  # classifiers over token ids


def build(spec: dict[str, Any]) -> nn.Module:
    """A model from its spec: {"kind": "cnn" | "textcnn" | "textrnn" | "dense_dec" | "conv_dec" |
    "gmf" | "mlp" | "neumf", ...}."""
    kind = spec["kind"]
    if kind in NCF_KINDS:
        return build_ncf(spec)
    if kind == "cnn":
        return CNNClassifier(spec["height"], spec["width"], spec["n_classes"])
    if kind in TEXT_KINDS:
        cls = TextCNN if kind == "textcnn" else TextRNN
        return cls(spec["vocab_size"], spec["embedding_dim"], spec["n_classes"],
                   freeze_embeddings=spec.get("freeze_embeddings", False))
    if kind == "dense_dec":
        ae = DenseAutoencoder(spec["in_dim"], tuple(spec["hidden"]), spec["embedding_dim"],
                              spec.get("input_shift", 0.0), spec.get("input_scale", 1.0))
    elif kind == "conv_dec":
        ae = ConvAutoencoder(spec["height"], spec["width"], spec["embedding_dim"],
                             spec.get("output", "sigmoid"), spec.get("input_shift", 0.0),
                             spec.get("input_scale", 1.0))
    else:
        raise ValueError(f"unknown model kind {kind!r}; expected cnn, textcnn, textrnn, "
                         "dense_dec, conv_dec, gmf, mlp or neumf")
    return ClusteringModel(ae, spec["n_clusters"], spec["embedding_dim"], spec.get("alpha", 1.0),
                           spec.get("projection_dim", 0))
