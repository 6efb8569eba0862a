"""Where and how computation runs: seeding, device choice, mixed precision, intra-op threads.

Shared by training, benchmarking and every pipeline, so a seed or a thread count means the same
thing everywhere.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch

from edgecompress import EdgecompressError


def seed_everything(seed: int, *, deterministic_kernels: bool = True) -> None:
    """Seed Python, NumPy and torch, and (by default) ask torch for deterministic kernels.

    On CPU with a fixed thread count this makes two runs with the same params bit-identical;
    `warn_only` keeps CUDA ops without a deterministic variant usable. Quantized CPU kernels
    (e.g. quantized_resize_cpu_) are all flagged as lacking a deterministic variant, so the
    quantize stage passes `deterministic_kernels=False` to avoid a warning per call.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic_kernels, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU. 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgecompressError("train.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def timing_device(device: str | torch.device) -> torch.device:
    """The device a measurement runs on: cpu or an available cuda, never a silent fallback (numbers
    labelled "cuda" must come from a GPU)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EdgecompressError(f"device='{device}' requested for timing but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise EdgecompressError(f"device='{device}' is invalid: cpu or cuda")
    return device


def amp_enabled(device: torch.device, amp: bool) -> bool:
    """Mixed precision only on CUDA: CPU autocast to bfloat16 is slower than fp32 on most CPUs."""
    return amp and device.type == "cuda"


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the block, restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
