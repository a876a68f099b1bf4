"""Starting the ranks of a tensor-parallel engine, watching them, and stopping them.

Two ways in:
- the engine starts them: rank 0 is the calling process (its ModelRunner calls `start_ranks`);
  ranks 1..N-1 are spawned processes on this node (cuda:r each; `python -m
  radixserve.runtime.rank_worker`, so the caller's script needs no main guard), meeting rank 0 over
  a TCP rendezvous on localhost;
- a launcher started them (torchrun-style RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
  MASTER_PORT): every process runs the same program; the one with RANK 0 serves, the others
  turn into step workers when they construct their engine (see `rank_worker.serve_as_worker_if_launched`).

NOTE: this module starts ranks and never imports what they run (rank_worker.py imports the runner,
which imports this module): the start-up is a name on a command line, not an import.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading

import torch
import torch.distributed as dist

from radixserve.distributed.group import TensorParallel, destroy_group, init_group, launcher_env
from radixserve.parent_watch import child_env_with_parent
from radixserve.syspath import child_env

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 30.0


class RankDeadError(RuntimeError):
    """A tensor-parallel rank exited: the engine cannot run another step."""

    fatal = True  # NOTE: the engine stops its loop on this error instead of serving on


def rank_device(name: str, local_rank: int, tp_size: int) -> torch.device:
    """The device of the rank with `local_rank` on its node for EngineConfig.device `name`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is not None and tp_size > 1:
            raise ValueError(f"device {name!r} names one GPU but tp={tp_size} needs one per rank; pass device='cuda' "
                             "(rank r uses cuda:r on its node; restrict them with CUDA_VISIBLE_DEVICES)")
        if tp_size > 1 and local_rank >= torch.cuda.device_count():
            raise ValueError(f"tensor-parallel rank with local rank {local_rank} has no GPU: this node sees "
                             f"{torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank if tp_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"tensor parallelism runs on cuda or cpu devices, got {name!r}")
    return device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankSet:
    """Rank 0's handle on the group: its TensorParallel view and the rank processes it started
    (none when a launcher started them). Watches the processes from threads."""

    def __init__(self, tp: TensorParallel, procs: list[subprocess.Popen]) -> None:
        self.tp = tp
        self.procs = procs  # procs[i] is rank i + 1
        self.dead: str | None = None  # what died, once something did
        self._lock = threading.Lock()
        self._closing = False
        for rank, proc in enumerate(procs, start=1):
            threading.Thread(target=self._watch, args=(rank, proc), name=f"radixserve-tp-watch{rank}",
                             daemon=True).start()

    def _watch(self, rank: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self._lock:
            if self._closing or self.dead is not None:
                return
            self.dead = f"tensor-parallel rank {rank} (pid {proc.pid}) exited with code {code}"
        logger.error("%s; the engine stops", self.dead)
        if dist.get_backend(self.tp.group) == "nccl":
            # NOTE: an NCCL collective waiting for the dead rank would block until the group's
            # timeout; aborting the communicators makes it fail now. (gloo fails by itself: the
            # dead peer's sockets close.)
            try:
                from torch.distributed.distributed_c10d import _abort_process_group
                _abort_process_group(self.tp.group)
            except Exception:  # noqa: BLE001 - best effort; the timeout still ends the wait
                logger.exception("could not abort the NCCL communicators")

    def check_alive(self) -> None:
        """RankDeadError when a rank has exited (checked before every step)."""
        with self._lock:
            if self.dead is None:
                for rank, p in enumerate(self.procs, start=1):
                    if p.poll() is not None:
                        self.dead = f"tensor-parallel rank {rank} (pid {p.pid}) exited with code {p.returncode}"
                        break
            dead = self.dead
        if dead is not None:
            raise RankDeadError(f"{dead}; create a new Engine")

    def explain_failure(self, exc: BaseException) -> None:
        """After a failed collective: RankDeadError (from `exc`) when a rank died meanwhile."""
        for p in self.procs:
            try:
                p.wait(timeout=1.0 / max(1, len(self.procs)))
            except subprocess.TimeoutExpired:
                pass
        try:
            self.check_alive()
        except RankDeadError as dead:
            raise dead from exc

    def close(self, stop_sent: bool) -> None:
        """Wait for the ranks to exit (after the stop message), kill stragglers, leave the group."""
        with self._lock:
            self._closing = True
            dead = self.dead
        for rank, p in enumerate(self.procs, start=1):
            try:
                p.wait(JOIN_TIMEOUT_S if stop_sent else 0.1)
            except subprocess.TimeoutExpired:
                logger.warning("tensor-parallel rank %d did not exit; killing it", rank)
                p.kill()
                p.wait(5.0)
        if dead is None:
            destroy_group(self.tp)
        elif dist.is_initialized():
            # NOTE: a group with a dead member cannot be torn down collectively; drop it locally.
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - already aborted
                logger.warning("the tensor-parallel group could not be destroyed cleanly", exc_info=True)


def start_ranks(config) -> tuple[RankSet, torch.device]:
    """Join (or create) the tensor-parallel group as rank 0 for an engine with config.tp > 1."""
    if dist.is_initialized():
        raise ValueError("a tensor-parallel engine is already running in this process; shut it down first "
                         "(one tensor-parallel engine per process)")
    env = launcher_env()
    if env is not None:
        if env.world_size != config.tp:
            raise ValueError(f"the launcher started {env.world_size} ranks (WORLD_SIZE) but tp={config.tp}; "
                             "make them equal")
        if env.rank != 0:
            raise ValueError(f"rank {env.rank} of a launched group builds no engine; call "
                             "serve_as_worker_if_launched(config) first")
        device = rank_device(config.device, env.local_rank, config.tp)
        tp = init_group(0, config.tp, device, "env://")
        return RankSet(tp, []), device
    device = rank_device(config.device, 0, config.tp)
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    spec = json.dumps(dataclasses.asdict(config))
    procs = []
    for rank in range(1, config.tp):
        procs.append(subprocess.Popen([sys.executable, "-m", "radixserve.runtime.rank_worker", "--rank", str(rank),
                                       "--size", str(config.tp), "--init-method", init_method, "--config", spec],
                                      env=_child_env()))
    try:
        tp = init_group(0, config.tp, device, init_method)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    return RankSet(tp, procs), device


def _child_env() -> dict[str, str]:
    """The rank processes' environment: this one's, minus launcher variables (they are not launched ranks),
    plus this process's pid: a rank dies with its engine, whatever kills it (parent_watch)."""
    env = child_env_with_parent(
        child_env({k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env

