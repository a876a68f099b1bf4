"""The source checkout's root never stays on `sys.path`, and child processes start without it.

NOTE: `kernels/` lives at the top of the repository and installs as `radixserve.kernels` only. A
process started with `python -m ...` or `python -c ...` inside the checkout gets the checkout's root
on `sys.path` (Python puts the current folder first), and a bare `import kernels` (transformers
imports the PyPI package of that name) would then load our folder and fail. So:

- importing radixserve takes the checkout's root off `sys.path` (it is never where an installed
  radixserve comes from: the editable install maps the packages itself);
- every child process we start runs in Python's safe-path mode (`PYTHONSAFEPATH=1`, Python >= 3.11),
  which never puts the current folder on `sys.path`.

Stdlib only: this runs before anything else of radixserve is imported.
"""
from __future__ import annotations

import os
import sys

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkout_root() -> str | None:
    """The repository folder this radixserve was imported from, or None for an installed wheel."""
    if os.path.isfile(os.path.join(_PACKAGE_PARENT, "pyproject.toml")) and \
            os.path.isfile(os.path.join(_PACKAGE_PARENT, "kernels", "_launch.py")):
        return _PACKAGE_PARENT
    return None


def drop_checkout_root() -> list[str]:
    """Remove every `sys.path` entry that names the checkout's root ('' too, when it is the current
    folder); returns what was removed."""
    root = checkout_root()
    if root is None:
        return []
    real_root = os.path.realpath(root)

    def is_root(entry: str) -> bool:
        try:
            return os.path.realpath(entry or os.getcwd()) == real_root
        except OSError:  # e.g. the current folder was deleted
            return False

    removed = [e for e in sys.path if is_root(e)]
    sys.path[:] = [e for e in sys.path if not is_root(e)]
    return removed


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a Python child process of ours: `env` (default: this process's) in safe-path mode."""
    out = dict(os.environ if env is None else env)
    out["PYTHONSAFEPATH"] = "1"
    return out
