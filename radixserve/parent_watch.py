"""No child process of ours outlives its parent, whatever kills the parent (SIGKILL included).

Every process radixserve starts (the engine process, tensor-parallel ranks, data-parallel replicas)
calls `die_with_parent(parent_pid)` first thing, with the pid its parent had when it started it:

- on Linux, prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills this process when the parent dies.
  NOTE: strictly, when the parent *thread* that started it exits; so only for children started
  from the main thread (`from_main_thread()`); the others rely on the watcher;
- everywhere, a daemon thread that exits the process when its parent pid changes (re-parented to
  init or a subreaper), within `POLL_S`: the portable fallback;
- and, for the race where the parent died before either was in place, a check right away.

Replicas learn their parent's pid from the environment (`PARENT_PID_ENV`), as they are started by
a command line. Stdlib only (floor 1).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

PARENT_PID_ENV = "RADIXSERVE_PARENT_PID"
POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


def _set_pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)  # NOTE: no cleanup: the parent that would have asked for it is gone


def from_main_thread() -> bool:
    """Whether a child started now may ask the kernel to kill it with this thread (PDEATHSIG)."""
    return threading.current_thread() is threading.main_thread()


def die_with_parent(parent_pid: int | None, pdeathsig: bool = True) -> None:
    """Exit this process when the process `parent_pid` (this one's parent) dies; exit now if it
    already has. None: nothing to watch. `pdeathsig`: the parent started this process from its
    main thread (see the NOTE above)."""
    if parent_pid is None:
        return
    if pdeathsig:
        _set_pdeathsig()
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="radixserve-parent-watch", daemon=True).start()


def die_with_parent_from_env() -> None:
    """die_with_parent for the pid in PARENT_PID_ENV, if the starter set it (then unset it, so
    that this process's own children are not told the wrong parent)."""
    value = os.environ.pop(PARENT_PID_ENV, "")
    pid, _, how = value.partition(":")
    if pid.isdigit():
        die_with_parent(int(pid), pdeathsig=how != "poll")


def child_env_with_parent(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child started by command line that must die with this process."""
    return {**env, PARENT_PID_ENV: f"{os.getpid()}" + ("" if from_main_thread() else ":poll")}
