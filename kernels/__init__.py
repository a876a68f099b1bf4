"""Triton kernels, each beside its torch reference. Installed as radixserve.kernels.

NOTE: Triton decides at `@triton.jit` decoration time (i.e. when a kernel module is imported)
whether kernels compile for a GPU or run in its numpy interpreter. On a machine without CUDA the
compiled path cannot run at all, so importing this package there turns the interpreter on
(TRITON_INTERPRET=1) unless the user set the variable themselves. The interpreter is slow: it is
for tests at small sizes, never for serving.
"""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

# NOTE: only as radixserve.kernels; if this folder is ever imported as a bare `kernels` (the repo
# root on sys.path, and transformers probing for the unrelated hub package of that name), it must
# do nothing.
if __name__ == "radixserve.kernels" and "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    logger.info("no CUDA device: Triton kernels run in the interpreter (TRITON_INTERPRET=1); "
                "this is for tests only, use the torch attention backend to serve on CPU")
