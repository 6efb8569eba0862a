"""OpenVINO: the FP32 conversion of a torch model (`ov.convert_model`) and NNCF post-training INT8 on the
OpenVINO model (`nncf.quantize`), both written as OpenVINO IR (`.xml` + `.bin`) that load with
`openvino` alone, and the runtime that executes them on the CPU.

NNCF's torch backend is not used: NNCF quantizes the converted OpenVINO graph itself, which is what the
OpenVINO CPU plugin then runs (FakeQuantize nodes fused into INT8 oneDNN kernels, VNNI where the CPU has
it). `openvino` and `nncf` are imported inside the functions: both are heavy to import.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from edgecompress import EdgecompressError, first_line
from edgecompress.io import publish
from edgecompress.quantize.common import batches, quiet

log = logging.getLogger(__name__)

LAYER_TYPES = ("Convolution", "GroupConvolution", "MatMul")  # the compute layers counted in summaries
RANGES_INFO = ("edgecompress", "activations_range")  # IR metadata: the range estimator NNCF actually used
_WEIGHT_PATH = ("Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze")  # decompression ops


def _save(model: Any, path: Path, *, compress_to_fp16: bool) -> None:
    """`ov.save_model` through a temporary folder beside `path`: the `.bin` is moved first, then the
    `.xml` that names it, so a reader never finds an `.xml` whose weights are missing or older."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        tmp_xml = Path(tmp) / path.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        publish(tmp_xml.with_suffix(".bin"), path.with_suffix(".bin"))
        publish(tmp_xml, path)


def convert_onnx_to_openvino(onnx_path: str | Path, path: str | Path) -> Any:
    """Convert an ONNX export to OpenVINO and write its IR: for models whose torch form the OpenVINO
    frontend's tracer rejects (YOLOv5's Detect head builds its grid lazily, so two traces differ).

    Returns:
        The `ov.Model`.
    """
    import openvino as ov

    try:
        converted = ov.convert_model(str(onnx_path))
    except Exception as exc:  # noqa: BLE001 - the frontend raises many types for unsupported graphs
        raise EdgecompressError(f"{onnx_path}: OpenVINO cannot convert this ONNX model ({first_line(exc)})") from None
    _save(converted, Path(path), compress_to_fp16=False)
    return converted


def output_tail(model: Any) -> list[str]:
    """Names of the nodes between the last convolutions and the outputs (a detector's decode tail:
    sigmoid, grid arithmetic, the concat of pixel coordinates with probabilities). Kept float as YOLO's
    own OpenVINO export does: one INT8 scale over pixels (0..640) and probabilities (0..1) flattens the
    probabilities to zero. A convolution's bias Add belongs to the convolution and ends the walk too."""
    tail: list[str] = []
    seen: set[str] = set()
    pending = [result.input_value(0).get_node() for result in model.get_results()]
    while pending:
        node = pending.pop()
        name = node.get_friendly_name()
        if name in seen or node.get_type_name() in ("Constant", "Parameter", "Convolution"):
            continue
        seen.add(name)
        inputs = [value.get_node() for value in node.input_values()]
        if node.get_type_name() == "Add" and any(i.get_type_name() == "Convolution" for i in inputs):
            continue
        tail.append(name)
        pending += inputs
    return tail


def convert_to_openvino(model: nn.Module, example_inputs: torch.Tensor, path: str | Path) -> Any:
    """Convert a float torch model to OpenVINO (dynamic batch, FP32 weights) and write its IR.

    Returns:
        The `ov.Model` (for `quantize_openvino`).
    """
    import openvino as ov

    shape = [-1, *example_inputs.shape[1:]]  # any batch size
    try:
        with quiet(), torch.no_grad():
            converted = ov.convert_model(model.eval(), example_input=example_inputs[:2], input=[shape])
    except Exception as exc:  # noqa: BLE001 - the frontend raises many types for unsupported graphs
        raise EdgecompressError(f"OpenVINO cannot convert this model ({first_line(exc)})") from None
    _save(converted, Path(path), compress_to_fp16=False)
    return converted


def quantize_openvino(model: Any, calib: torch.Tensor | Sequence[torch.Tensor], path: str | Path, *,
                      batch_size: int, preset: str = "performance", fast_bias_correction: bool = True,
                      model_type: str | None = None, ignored_scope: dict[str, Sequence[str]] | None = None,
                      subset_size: int | None = None, activations_range: str | None = None) -> Any:
    """NNCF post-training INT8 of an OpenVINO model, written as IR.

    Args:
        model: an `ov.Model` (from `convert_to_openvino`) or the path of an FP32 IR.
        calib: calibration images (N, C, H, W), fed in batches of `batch_size`, or a list of inputs.
        preset: "performance" (symmetric activations and weights) or "mixed" (asymmetric activations).
        fast_bias_correction: NNCF's fast bias correction; False runs the full (slower) one.
        model_type: None, or "transformer" (NNCF's special handling of attention blocks).
        ignored_scope: {"names": [...], "types": [...], "patterns": [...]}: nodes kept in float.
        subset_size: calibration samples used (None = all of `calib`).
        activations_range: NNCF's range estimator for activations, a `RangeEstimatorParametersSet` name in
            lower case (e.g. "mean_quantile"); None = NNCF's default (mean of the batches' min and max).
    Returns:
        The quantized `ov.Model`.
    """
    import nncf
    import openvino as ov

    if isinstance(model, (str, Path)):
        model = ov.Core().read_model(str(model))
    items = [b.numpy() for b in batches(calib, batch_size)]
    total = len(calib) if subset_size is None else min(subset_size, len(calib))
    steps = max(1, math.ceil(total / batch_size)) if isinstance(calib, torch.Tensor) else total
    scope = nncf.IgnoredScope(**{k: list(v) for k, v in (ignored_scope or {}).items()}, validate=False)

    def run(ranges: str | None) -> Any:
        with quiet(), _nncf_quiet():
            return nncf.quantize(
                model.clone(), nncf.Dataset(items), preset=nncf.QuantizationPreset(preset), subset_size=steps,
                fast_bias_correction=fast_bias_correction, ignored_scope=scope,
                model_type=nncf.ModelType(model_type) if model_type else None,
                advanced_parameters=_advanced(ranges))

    try:
        quantized, used = run(activations_range), activations_range or "nncf_default"
    except ValueError as exc:  # NNCF's histogram cannot bin an activation that is constant on every sample
        if activations_range != "histogram" or "bins" not in str(exc):
            raise
        log.warning("NNCF's histogram range estimator failed (%s): a constant activation (e.g. untrained weights); "
                    "quantized with NNCF's default ranges instead, recorded in the IR", first_line(exc))
        quantized, used = run(None), f"nncf_default (histogram failed: {first_line(exc)})"
    quantized.set_rt_info(used, list(RANGES_INFO))  # read back by openvino_layer_summary
    _save(quantized, Path(path), compress_to_fp16=False)
    log.info("OpenVINO INT8 (NNCF %s preset, %s bias correction, %s activation ranges): calibrated on %d samples",
             preset, "fast" if fast_bias_correction else "full", activations_range or "default",
             min(total, steps * batch_size))
    return quantized


def _advanced(activations_range: str | None) -> Any:
    """NNCF's advanced parameters for an activation range estimator name (None: NNCF's defaults)."""
    if not activations_range:
        return None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, activations_range.upper()))


@contextlib.contextmanager
def _nncf_quiet():
    """NNCF logs its progress bars and per-algorithm INFO lines; keep warnings only."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def cpu_config(threads: int | None = None, **extra: Any) -> dict[str, Any]:
    """The CPU plugin's settings for every OpenVINO measurement here: one request at a time (as every
    variant is timed), `threads` intra-op threads (as torch and ONNX Runtime are pinned), and float32
    for whatever is not INT8. The plugin's default on a CPU with AVX512-BF16 or AMX (this machine) is
    to run an FP32 model in bfloat16: its "FP32" would be a bf16 number (max |logit difference| 0.03 on
    the tests' ResNet, against < 1e-5 with f32)."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", **extra}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVINOModel(nn.Module):
    """An OpenVINO IR compiled for the CPU (`cpu_config`) as a torch module: logits = model(x), one
    reused infer request."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import openvino as ov

        self.path, self.threads = str(path), threads
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", cpu_config(threads))
        except Exception as exc:  # noqa: BLE001 - missing/corrupt IR: one line naming the file
            raise EdgecompressError(f"{path}: cannot load OpenVINO IR ({first_line(exc)})") from None
        self.request = self.compiled.create_infer_request()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.request.infer([x.float().cpu().contiguous().numpy()])
        return torch.from_numpy(out[self.compiled.output(0)].copy())


def _weight_is_low_precision(node: Any) -> bool:
    """Whether a layer's weight input is INT8: a FakeQuantize, or an int8/uint8 Constant behind the
    decompression ops (Convert, Multiply by the scale, Subtract of the zero point, ...)."""
    for _ in range(6):
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return node.get_output_element_type(0).get_type_name() in ("i8", "u8")
        if kind not in _WEIGHT_PATH:
            return False
        node = node.input_value(0).get_node()
    return False


def openvino_layer_summary(path: str | Path) -> dict[str, Any]:
    """Quantized vs float compute layers of an IR (a convolution or matmul whose weights are INT8), and the
    activation range estimator NNCF used when the IR records it."""
    import openvino as ov

    summary: dict[str, Any] = {"quantized": 0, "float": 0, "quantized_layers": {}, "float_layers": {}}
    model = ov.Core().read_model(str(path))
    if model.has_rt_info(list(RANGES_INFO)):
        summary["activations_range"] = model.get_rt_info(list(RANGES_INFO)).astype(str)
    for op in model.get_ops():
        name = op.get_type_name()
        if name in LAYER_TYPES:
            kind = "quantized" if _weight_is_low_precision(op.input_value(1).get_node()) else "float"
            summary[kind] += 1
            summary[f"{kind}_layers"][name] = summary[f"{kind}_layers"].get(name, 0) + 1
    return summary


def openvino_compute_nodes(path: str | Path) -> list[str]:
    """Names of the convolutions and matmuls of an FP32 IR: what NNCF's ignored scope can keep in float."""
    import openvino as ov

    return [op.get_friendly_name() for op in ov.Core().read_model(str(path)).get_ops()
            if op.get_type_name() in LAYER_TYPES]


def openvino_weights_bytes(path: str | Path) -> int:
    """Bytes of the IR's weights file (`.bin`)."""
    return os.path.getsize(Path(path).with_suffix(".bin"))


def openvino_artifact_bytes(path: str | Path) -> int:
    """An IR's size on disk: the graph (`.xml`) and its weights (`.bin`) together."""
    return os.path.getsize(path) + openvino_weights_bytes(path)
