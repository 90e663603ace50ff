"""Autoencoders: `forward(x) -> (reconstruction, embedding)`, both on flat vectors.

Both take an input standardization (`input_shift`, `input_scale`: one mean and one standard
deviation of the training data, the trainer's `train.input_stats`): the network sees
(x - shift) / scale and its linear output is mapped back, so the reconstruction and its loss stay
in the data's own units. Why: with raw [0, 1] intensities and a sigmoid output, an image set of
sparse strokes (most pixels 0) drove the output logits far negative in the first epoch, where the
sigmoid's gradient vanishes and the ReLUs before it stop firing; reconstruction then stuck at
predicting all zeros and the embedding of every image was the same point (issue 13's "dead
network": loss 0.03266, above the mean image's 0.02864). A bright, dense image set killed the
dense autoencoder the same way from the other side. Centred, unit-scale inputs and a linear output
trained on every image set tried (scripts/bench/quality.py, tests/test_generalization.py).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DenseAutoencoder(nn.Module):
    """in_dim -> hidden... -> embedding_dim -> reversed hidden... -> in_dim (ReLU between layers,
    linear embedding and output: customer features are standardized, not bounded). For images,
    hidden (500, 500, 2000) is DEC's and N2D's layout (`train.image_autoencoder: dense`)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (64, 32), embedding_dim: int = 4,
                 input_shift: float = 0.0, input_scale: float = 1.0):
        super().__init__()
        self.input_shift, self.input_scale = float(input_shift), float(input_scale)
        dims = [in_dim, *hidden, embedding_dim]
        enc: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*enc[:-1])
        back = dims[::-1]
        dec: list[nn.Module] = []
        for a, b in zip(back[:-1], back[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        self.decoder = nn.Sequential(*dec[:-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder((x - self.input_shift) / self.input_scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decoder(z) * self.input_scale + self.input_shift, z


class ConvAutoencoder(nn.Module):
    """Three stride-2 convolutions down to a linear embedding and transposed convolutions back
    (the DCEC layout); input and output are height*width intensities. `output` linear (what the
    trainer builds, with the input standardization) or sigmoid (models published before it)."""

    def __init__(self, height: int = 28, width: int = 28, embedding_dim: int = 10,
                 output: str = "sigmoid", input_shift: float = 0.0, input_scale: float = 1.0):
        super().__init__()
        if output not in ("sigmoid", "linear"):
            raise ValueError(f"ConvAutoencoder output {output!r}: expected sigmoid or linear")
        self.height, self.width, self.output = height, width, output
        self.input_shift, self.input_scale = float(input_shift), float(input_scale)
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(32, 64, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU())
        with torch.no_grad():
            shape = self.conv(torch.zeros(1, 1, height, width)).shape[1:]
        self._inner = tuple(shape)
        flat = int(shape.numel())
        self.to_embedding = nn.Linear(flat, embedding_dim)
        self.from_embedding = nn.Linear(embedding_dim, flat)
        self.deconv = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 5, stride=2, padding=2, output_padding=1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_shift) / self.input_scale
        h = self.conv(x.view(-1, 1, self.height, self.width))
        return self.to_embedding(h.flatten(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        h = self.from_embedding(z).view(-1, *self._inner)
        out = self.deconv(h)
        if out.shape[-2:] != (self.height, self.width):
            out = out[..., :self.height, :self.width]
            if out.shape[-2:] != (self.height, self.width):
                out = F.interpolate(out, size=(self.height, self.width), mode="bilinear")
        if self.output == "sigmoid":
            return torch.sigmoid(out).flatten(1), z
        return out.flatten(1) * self.input_scale + self.input_shift, z
