"""The loop a rank > 0 runs: build its shard, then run every step rank 0 broadcasts."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from radixserve.config import EngineConfig
from radixserve.distributed.group import destroy_group, init_group, launcher_env
from radixserve.distributed.step_sync import StepReceiver
from radixserve.parent_watch import die_with_parent_from_env
from radixserve.runtime.model_runner import ModelRunner
from radixserve.runtime.ranks import rank_device

logger = logging.getLogger(__name__)


def worker_main(config, rank: int, size: int, local_rank: int, init_method: str) -> None:
    """Body of a rank process the engine started."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    die_with_parent_from_env()  # NOTE: a rank whose engine vanished would wait in a collective forever
    if torch.get_num_threads() > 1:  # NOTE: the ranks of a CPU group share the host's cores
        torch.set_num_threads(max(1, torch.get_num_threads() // size))
    run_worker(config, rank, size, local_rank, init_method)
    logging.shutdown()
    os._exit(0)  # NOTE: the group is gone and nothing is left to flush; skip the interpreter's slow teardown


@torch.inference_mode()
def run_worker(config, rank: int, size: int, local_rank: int, init_method: str) -> None:
    device = rank_device(config.device, local_rank, size)
    tp = init_group(rank, size, device, init_method)
    try:
        runner = ModelRunner(config, tp=tp, device=device)
        receiver = StepReceiver(tp, runner.req_table, runner.device)
        steps = 0
        while (batch := receiver.receive()) is not None:
            runner.forward_local(batch)
            steps += 1
        logger.info("rank %d stops after %d steps", rank, steps)
        runner.release()
    finally:
        destroy_group(tp)


def serve_as_worker_if_launched(config: EngineConfig) -> None:
    """In a process a launcher started as rank > 0 of a tensor-parallel group: run that rank's
    step loop until rank 0 stops, then exit the process. Otherwise return at once."""
    env = launcher_env()
    if env is None or config.tp <= 1 or env.rank == 0:
        return
    if env.world_size != config.tp:
        raise ValueError(f"the launcher started {env.world_size} ranks (WORLD_SIZE) but tp={config.tp}; make them equal")
    run_worker(config, env.rank, env.world_size, env.local_rank, "env://")
    sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    """`python -m radixserve.runtime.rank_worker --rank R --size N --init-method URL --config JSON`."""
    parser = argparse.ArgumentParser(description="one rank of a tensor-parallel radixserve engine")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--init-method", required=True)
    parser.add_argument("--config", required=True, help="EngineConfig fields as JSON")
    args = parser.parse_args(argv)
    config = EngineConfig(**json.loads(args.config))
    worker_main(config, args.rank, args.size, args.rank, args.init_method)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
