"""Shared pytest setup: makes tests/ importable (model_fixtures) under --import-mode=importlib.

Without CUDA, Triton kernels can only run in Triton's interpreter, and the choice is made when
Triton is imported: set it here, before any test module imports torch, transformers or Triton
(radixserve.kernels sets it too, but too late if Triton was already imported).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
