"""Adam for models with large embedding tables: a sparse gradient updates only its rows.

Dense Adam touches every row of every parameter at every step: with the NCF embeddings of 40,000
users that is about 20 ms a step on one core, with 400,000 users 250 ms, whatever the batch
(measured: the step's cost grows with the users, not with the rows trained on). An
`nn.Embedding(sparse=True)` gives a sparse gradient holding only the rows the batch looked up;
`LazyAdam` updates the moments and the weights of those rows alone, as torch's `SparseAdam` does
("lazy" Adam: a row's moments decay only when the row is seen), and updates a dense gradient as
torch's `Adam` does (the same formula: bias-corrected moments, eps outside the square root).
Horovod's DistributedOptimizer allgathers sparse gradients (indices and values) instead of
allreducing a dense table, so the traffic is the batch's rows too.

One optimizer for both kinds of parameter, because Horovod wraps a single optimizer (and rebuilds
it from its param_groups, so the constructor takes only the params and the defaults).
"""
from __future__ import annotations

import math

import torch


def mark_sparse(parameter: torch.nn.Parameter) -> torch.nn.Parameter:
    """Mark a parameter whose gradient is sparse (an `nn.Embedding(sparse=True)` weight): a rank
    with no batch left then gives it an empty sparse gradient, not a dense zero one (the ranks'
    gradients of one parameter must be of one kind to be gathered)."""
    parameter.sparse_grad = True
    return parameter


def has_sparse_grad(parameter: torch.nn.Parameter) -> bool:
    return bool(getattr(parameter, "sparse_grad", False))


def empty_sparse_grad(parameter: torch.nn.Parameter) -> torch.Tensor:
    """A sparse gradient with no rows, of the parameter's shape."""
    rows = torch.empty((1, 0), dtype=torch.long, device=parameter.device)
    values = torch.empty((0, *parameter.shape[1:]), dtype=parameter.dtype,
                         device=parameter.device)
    return torch.sparse_coo_tensor(rows, values, parameter.shape)


class LazyAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step_size = group["lr"] / (1 - beta1 ** state["step"])
                root_correction = math.sqrt(1 - beta2 ** state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()  # the rows of several ranks (or repeats) summed
                    rows, values = grad.indices()[0], grad.values()
                    if rows.numel() == 0:
                        continue
                    m = exp_avg[rows].mul_(beta1).add_(values, alpha=1 - beta1)
                    v = exp_avg_sq[rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
                    exp_avg[rows], exp_avg_sq[rows] = m, v
                    denom = (v.sqrt() / root_correction).add_(group["eps"])
                    p.index_add_(0, rows, m.div_(denom).mul_(-step_size))
                else:
                    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (exp_avg_sq.sqrt() / root_correction).add_(group["eps"])
                    p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss
