"""Host -> device copies that never make the host wait for the device.

NOTE: a blocking copy (torch.tensor(..., device="cuda"), or .to("cuda") of pageable memory)
synchronises the stream: the host would wait for the step in flight, which defeats overlap
scheduling. Stage through pinned memory and copy asynchronously instead.
"""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`, without blocking the host."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def tensor_on(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.tensor(values) on `device`, without blocking the host."""
    return to_device(torch.tensor(values, dtype=dtype), torch.device(device))
