"""Tensor parallelism over torch.distributed: the process group and the per-step batch broadcast
from rank 0. Starting the ranks, and the loop that ranks > 0 run, live beside the runner they start
(radixserve/runtime/ranks.py, rank_worker.py).

Rank 0 owns the scheduler, the radix tree and sampling; every rank holds a shard of the weights
and its KV heads, and runs the same forward on the batch rank 0 broadcasts each step.
"""
from radixserve.distributed.group import TensorParallel, single_rank

__all__ = ["TensorParallel", "single_rank"]
