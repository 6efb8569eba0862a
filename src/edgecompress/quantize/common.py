"""What every quantization backend shares: calibration data, the batching of it, the error for an
engine this build lacks, and the filter for the toolchains' known deprecation noise."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterable, Iterator, Sequence

import torch

from edgecompress import EdgecompressError
from edgecompress.config import check

log = logging.getLogger("edgecompress.quantize")

# Known, understood deprecation noise from torch.ao / torch.jit / the legacy ONNX exporter.
_NOISE = ("torch.ao.quantization is deprecated", "Please use quant_min and quant_max",
          "quantized tensor creation functions", "`torch.jit.", "legacy TorchScript-based ONNX",
          "The feature will be removed")
_deprecation_logged = False


class BackendUnsupported(EdgecompressError):
    """The requested quantized engine is not available in this torch build (stage: skip variant)."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence known deprecation warnings and the ONNX toolchain's INFO chatter (per-pass logs);
    log once per process that the deprecated APIs are in use."""
    global _deprecation_logged
    if not _deprecation_logged:
        _deprecation_logged = True
        log.info("torch.ao.quantization (FX) and torch.jit are deprecated in torch %s but work; "
                 "their deprecation warnings are suppressed (migration target: torchao pt2e)",
                 torch.__version__)
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "onnxruntime.quantization")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for text in _NOISE:
            warnings.filterwarnings("ignore", message=f".*{text}")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def calibration_tensors(loader: Iterable, num_samples: int) -> torch.Tensor:
    """Concatenate the first `num_samples` images of a DataLoader yielding `(x, y)` batches."""
    check(num_samples >= 1, "quantize.calibration_samples", num_samples, "must be an integer >= 1")
    chunks, count = [], 0
    for batch in loader:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        chunks.append(images[: num_samples - count])
        count += len(chunks[-1])
        if count >= num_samples:
            break
    if not chunks:
        raise EdgecompressError("calibration data loader is empty")
    if count < num_samples:
        log.warning("only %d calibration samples available (%d requested)", count, num_samples)
    return torch.cat(chunks).detach().cpu()


def batches(data: torch.Tensor | Sequence[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """`data` in batches of `batch_size` (a list of differently shaped inputs: one by one)."""
    if not isinstance(data, torch.Tensor):  # e.g. detection backbones' inputs
        yield from data
        return
    for start in range(0, len(data), batch_size):
        yield data[start:start + batch_size]

