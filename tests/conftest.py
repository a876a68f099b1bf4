"""Shared pytest setup: makes tests/support/ importable (model_fixtures, ...) under --import-mode=importlib.

Tests mirror the package: tests/<folder>/ holds the tests of radixserve/<folder>/ (tests/kernels/ those of
kernels/); whole-project tests (README, examples, install, packaging) stay at the top. Only
tests/support/ goes on sys.path, so no test folder can shadow a real package of the same name.

Without CUDA, Triton kernels can only run in Triton's interpreter, and the choice is made when
Triton is imported: set it here, before any test module imports torch, transformers or Triton
(radixserve.kernels sets it too, but too late if Triton was already imported).
"""
import os
import sys

# NOTE: tests/server/ too: test_server_layouts.py runs test_server.py's tests again over another layout.
for folder in ("support", "server"):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), folder))

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
