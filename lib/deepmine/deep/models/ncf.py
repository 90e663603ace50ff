"""Neural collaborative filtering (He et al. 2017, "Neural Collaborative Filtering", WWW): GMF,
MLP and NeuMF, each scoring (user, item) pairs with one logit (the probability that the user
interacts with the item, through a sigmoid; trained with binary cross-entropy on positives and
sampled negatives).

Like every model here they take a flat float vector per row: `x` is batch x 2, the user's index
and the item's index (as floats, exact up to 2^24), so the training loop and batch inference
handle them like the others.

  GMF    user and item embeddings (`factors` each), their element-wise product, a linear layer.
  MLP    user and item embeddings (mlp_layers[0] / 2 each) concatenated, a ReLU tower
         (mlp_layers), a linear layer.
  NeuMF  both, with their own embeddings, the GMF product and the MLP tower's last layer
         concatenated into one linear layer (the paper's fusion). Trained from scratch, or
         (ncf.pretrain) started from a trained GMF and a trained MLP: `neumf_state_from_parts`.

Initialization as in the paper's code: embeddings N(0, 0.01), tower layers Glorot, the output
layer LeCun-uniform-like (PyTorch's default).
"""
from __future__ import annotations

import torch
from torch import nn

KINDS = ("gmf", "mlp", "neumf")


class _Pairs(nn.Module):
    @staticmethod
    def ids(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = x.round().long()
        return ids[:, 0], ids[:, 1]

    @staticmethod
    def _embedding(n: int, dim: int, sparse: bool = False) -> nn.Embedding:
        """sparse: the gradient holds only the rows looked up (deepmine.deep.lazy_adam)."""
        e = nn.Embedding(n, dim, sparse=sparse)
        nn.init.normal_(e.weight, std=0.01)
        if sparse:
            from deepmine.deep.lazy_adam import mark_sparse
            mark_sparse(e.weight)
        return e


def _tower(layers: tuple[int, ...]) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for a, b in zip(layers[:-1], layers[1:]):
        linear = nn.Linear(a, b)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        blocks += [linear, nn.ReLU()]
    return nn.Sequential(*blocks)


class GMF(_Pairs):
    def __init__(self, n_users: int, n_items: int, factors: int = 16, sparse: bool = False):
        super().__init__()
        self.user = self._embedding(n_users, factors, sparse)
        self.item = self._embedding(n_items, factors, sparse)
        self.out = nn.Linear(factors, 1)

    def vector(self, x: torch.Tensor) -> torch.Tensor:
        users, items = self.ids(x)
        return self.user(users) * self.item(items)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.vector(x)).squeeze(1)


class MLP(_Pairs):
    def __init__(self, n_users: int, n_items: int, layers: tuple[int, ...] = (64, 32, 16),
                 sparse: bool = False):
        super().__init__()
        if layers[0] % 2:
            raise ValueError(f"mlp_layers[0] is the two embeddings side by side: expected an "
                             f"even width, found {layers[0]}")
        self.user = self._embedding(n_users, layers[0] // 2, sparse)
        self.item = self._embedding(n_items, layers[0] // 2, sparse)
        self.tower = _tower(tuple(layers))
        self.out = nn.Linear(layers[-1], 1)

    def vector(self, x: torch.Tensor) -> torch.Tensor:
        users, items = self.ids(x)
        return self.tower(torch.cat([self.user(users), self.item(items)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.vector(x)).squeeze(1)


class NeuMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, factors: int = 16,
                 layers: tuple[int, ...] = (64, 32, 16), sparse: bool = False):
        super().__init__()
        self.gmf = GMF(n_users, n_items, factors, sparse)
        self.mlp = MLP(n_users, n_items, layers, sparse)
        # the parts' own output layers are not used: one layer over both vectors
        del self.gmf.out, self.mlp.out
        self.out = nn.Linear(factors + layers[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.gmf.vector(x), self.mlp.vector(x)], dim=1)).squeeze(1)


def neumf_state_from_parts(gmf: dict[str, torch.Tensor], mlp: dict[str, torch.Tensor],
                           alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """NeuMF's starting weights from a trained GMF's and a trained MLP's state_dicts (He et al.
    2017, section 3.4.1): each part's embeddings and the MLP's tower as trained; the output layer
    the concatenation [alpha h_GMF, (1 - alpha) h_MLP] of the parts' output weights, its bias
    alpha b_GMF + (1 - alpha) b_MLP (the paper's code: half the sum at alpha 0.5). NeuMF's logit
    then starts as alpha GMF's logit + (1 - alpha) MLP's."""
    state = {f"gmf.{k}": v.clone() for k, v in gmf.items() if not k.startswith("out.")}
    state.update({f"mlp.{k}": v.clone() for k, v in mlp.items() if not k.startswith("out.")})
    state["out.weight"] = torch.cat([alpha * gmf["out.weight"], (1 - alpha) * mlp["out.weight"]],
                                    dim=1)
    state["out.bias"] = alpha * gmf["out.bias"] + (1 - alpha) * mlp["out.bias"]
    return state


def build_ncf(spec: dict) -> nn.Module:
    """{"kind": "gmf" | "mlp" | "neumf", "n_users", "n_items", "factors", "mlp_layers",
    "sparse_embeddings" (optional, default false)}."""
    kind, users, items = spec["kind"], spec["n_users"], spec["n_items"]
    layers = tuple(spec.get("mlp_layers", (64, 32, 16)))
    sparse = bool(spec.get("sparse_embeddings", False))
    if kind == "gmf":
        return GMF(users, items, spec.get("factors", 16), sparse)
    if kind == "mlp":
        return MLP(users, items, layers, sparse)
    if kind == "neumf":
        return NeuMF(users, items, spec.get("factors", 16), layers, sparse)
    raise ValueError(f"unknown NCF kind {kind!r}; expected one of {list(KINDS)}")
