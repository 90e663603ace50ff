"""Augmentation consistency for the image autoencoder's pretraining (`train.contrastive_weight`).

Two random views of every image in a batch (a mirror flip, a rescale and a shift of a couple of
pixels) are encoded, mapped through a small projection head, and pulled together against the
other images of the batch with the NT-Xent loss (SimCLR, Chen et al. 2020). Added to the
reconstruction loss, it teaches the embedding that a coat is a coat whichever way it faces, at
whatever size and wherever it sits in the frame: the invariances that plain reconstruction of
pixels does not learn, and that decide which images a clustering of the embeddings puts together.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PROJECTION_HIDDEN = 128
TEMPERATURE = 0.5
SCALE = (0.87, 1.25)  # zoom of a view (1 = as is; above 1 the content grows)
SHIFT = 0.15  # largest move of a view, as a share of half the frame (0.15 of 14 px = 2 px)


class ProjectionHead(nn.Module):
    """embedding -> hidden -> projection; the contrastive loss lives here, not on the embedding."""

    def __init__(self, embedding_dim: int, projection_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embedding_dim, PROJECTION_HIDDEN), nn.ReLU(),
                                 nn.Linear(PROJECTION_HIDDEN, projection_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def random_view(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A random view of each flat image: mirrored with probability 1/2, zoomed by a factor in
    SCALE, moved by up to SHIFT. Draws from torch's global generator (the trainer seeds it per
    epoch and rank, so a resumed run draws the same views)."""
    n = x.shape[0]
    scale = torch.empty(n, device=x.device).uniform_(*SCALE)
    mirror = torch.rand(n, device=x.device) < 0.5
    shift = torch.empty(n, 2, device=x.device).uniform_(-SHIFT, SHIFT)
    return affine_view(x, height, width, scale, mirror, shift)


def affine_view(x: torch.Tensor, height: int, width: int, scale: torch.Tensor,
                mirror: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Flat images resampled (bilinear) at each one's own zoom `scale` (> 1 shows less of the
    image, larger), left-right `mirror` (bool) and `shift` (n x 2: x, y as shares of half the
    frame, so one pixel is 2/width; +4/width moves the content two pixels left). Zeros, the
    background, fill what comes into the frame."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = torch.where(mirror, -1.0, 1.0).to(x.dtype) / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    images = x.view(n, 1, height, width)
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros").view(n, -1)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """NT-Xent over a batch of pairs: row i of `a` and row i of `b` are two views of one image;
    each view's positive is its partner, its negatives the other 2n - 2 views."""
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    similarity = z @ z.t() / temperature
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device),
                                        float("-inf"))
    partner = torch.arange(2 * n, device=z.device).roll(n)  # view i's partner: i +- n
    return F.cross_entropy(similarity, partner)
