"""The patched Horovod build works: 2 ranks over Gloo, launched from Spark with horovod.spark.run.

Each rank allreduces rank+1 and trains a small model for a few steps on different data with
DistributedOptimizer; the sum must be exact and the weights identical on both ranks (and moved
from the initial ones), which only holds if parameters were broadcast and gradients averaged.
"""
from __future__ import annotations

import numpy as np

from deepmine.deep.launch import run_on_spark, smoke_rank


def test_two_ranks_over_gloo_from_spark(spark):
    results = sorted(run_on_spark(smoke_rank, num_proc=2), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["size"] == 2 and r["sum"] == 3.0 for r in results)
    w0, w1 = (np.array(r["weights"]) for r in results)
    np.testing.assert_array_equal(w0, w1)
    assert not np.allclose(w0, results[0]["rank0_initial"]), "training did not change the weights"
