"""kernels/ installs as radixserve.kernels and never as a bare top-level `kernels` (an unrelated
package of that name is probed by transformers)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


@pytest.mark.parametrize("where", ["repository-root", "another-folder"])
def test_installed_package_maps_kernels_under_radixserve(tmp_path, where):
    """Our kernels import as radixserve.kernels; a bare `kernels` (the PyPI package transformers
    imports, when installed) is never our folder, even with the checkout's root on sys.path (as
    `python -c` in the checkout puts it there)."""
    code = ("import importlib.util, os, radixserve.kernels as k; spec = importlib.util.find_spec('kernels'); "
            "print(k.__name__, os.path.dirname(k.__file__), spec and spec.origin and os.path.dirname(spec.origin))")
    cwd = ROOT if where == "repository-root" else tmp_path
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name, ours, bare = out.stdout.split()
    assert name == "radixserve.kernels" and os.path.samefile(ours, os.path.join(ROOT, "kernels"))
    assert bare == "None" or not os.path.samefile(bare, ours)


@pytest.mark.slow
def test_wheel_has_no_top_level_kernels(tmp_path):
    # NOTE: from a copy without build/: a stale build/lib would put packages in the wheel that the
    # configuration leaves out
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".hypothesis", "results", ".whl", ".*"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert "radixserve/kernels/decode_attention.py" in names
    assert "radixserve/server/app.py" in names and "radixserve/runtime/attention/triton_backend.py" in names
    assert not any(n.startswith("kernels/") for n in names)
    # every package of the source tree is in the wheel (the list in pyproject.toml is explicit)
    tree = {os.path.relpath(d, ROOT) for d, _, files in os.walk(os.path.join(ROOT, "radixserve")) if "__init__.py" in files}
    assert {d.replace(os.sep, "/") + "/__init__.py" for d in tree} <= set(names)
