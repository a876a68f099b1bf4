"""Tensor parallelism over torch.distributed: the process group, rank start-up, the per-step batch
broadcast from rank 0, and the loop that ranks > 0 run.

Rank 0 owns the scheduler, the radix tree and sampling; every rank holds a shard of the weights
and its KV heads, and runs the same forward on the batch rank 0 broadcasts each step.
"""
from radixserve.distributed.group import TensorParallel, single_rank

__all__ = ["TensorParallel", "single_rank"]
