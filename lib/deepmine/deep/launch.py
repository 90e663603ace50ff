"""Where Spark and Horovod meet: launching one function on N ranks.

`run_on_spark` starts `fn` on `num_proc` Horovod ranks as Spark tasks (`horovod.spark.run`, Gloo
on CPU); training code itself knows nothing of Spark. `smoke_rank` is a tiny rank function that
proves a Horovod install works end to end (allreduce + DistributedOptimizer), used by the tests.
"""
from __future__ import annotations

from typing import Any, Callable


def run_on_spark(fn: Callable[..., Any], num_proc: int, args: tuple = (), kwargs: dict | None = None,
                 start_timeout: int = 120, verbose: int = 0) -> list[Any]:
    """Run `fn(*args, **kwargs)` on `num_proc` ranks launched from the active SparkContext."""
    import horovod.spark

    return horovod.spark.run(fn, args=args, kwargs=kwargs or {}, num_proc=num_proc, use_gloo=True,
                             start_timeout=start_timeout, verbose=verbose)


def smoke_rank(steps: int = 5) -> dict[str, Any]:
    """Each rank allreduces rank+1 and trains a small linear model on its own data for `steps`.

    Returns the allreduced sum, the final weights and rank 0's initial weights, so a caller can
    check that the sum is exact and the weights identical on every rank after training.
    """
    import horovod.torch as hvd
    import torch

    hvd.init()
    torch.manual_seed(1234 + hvd.rank())  # different starting weights per rank, on purpose
    total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum).item()
    model = torch.nn.Linear(4, 1)
    initial = torch.cat([p.detach().flatten() for p in model.parameters()])
    rank0_initial = hvd.broadcast(initial, root_rank=0)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1 * hvd.size()),
                                   named_parameters=model.named_parameters())
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    gen = torch.Generator().manual_seed(hvd.rank())
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"rank": hvd.rank(), "size": hvd.size(), "sum": total,
            "weights": weights.tolist(), "rank0_initial": rank0_initial.tolist()}
