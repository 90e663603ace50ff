"""Deep embedded clustering: an autoencoder plus cluster centres in its embedding space.

Soft assignment (Xie et al. 2016): q_ij = (1 + |z_i - mu_j|^2 / alpha)^(-(alpha + 1) / 2),
normalized over j. Target: p_ij = (q_ij^2 / f_j) normalized over j, f_j = sum_i q_ij over the
whole data set (the caller sums it across ranks). IDEC (Guo et al. 2017) keeps the decoder and
adds the reconstruction loss; DEC trains the encoder on KL(P || Q) alone.

With `projection_dim` > 0 the model also carries a projection head (`models.contrastive`), used by
the pretraining's augmentation-consistency loss and nowhere else; it is part of the weights so a
checkpoint resumes it.
"""
from __future__ import annotations

import torch
from torch import nn

from deepmine.deep.models.contrastive import ProjectionHead


class ClusteringModel(nn.Module):
    def __init__(self, autoencoder: nn.Module, n_clusters: int, embedding_dim: int,
                 alpha: float = 1.0, projection_dim: int = 0):
        super().__init__()
        self.autoencoder = autoencoder
        self.alpha = alpha
        self.centers = nn.Parameter(torch.zeros(n_clusters, embedding_dim))
        self.projection = ProjectionHead(embedding_dim, projection_dim) if projection_dim else None

    def soft_assign(self, z: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(z, self.centers).pow(2)
        q = (1.0 + d2 / self.alpha).pow(-(self.alpha + 1.0) / 2.0)
        return q / q.sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, embedding, soft assignment)."""
        recon, z = self.autoencoder(x)
        return recon, z, self.soft_assign(z)


def target_distribution(q: torch.Tensor, cluster_frequency: torch.Tensor) -> torch.Tensor:
    """The sharpened target P for soft assignments `q`, given f_j = sum of q_ij over all data."""
    weight = q.pow(2) / cluster_frequency.clamp_min(1e-12)
    return weight / weight.sum(dim=1, keepdim=True)
