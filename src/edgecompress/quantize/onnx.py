"""ONNX export and ONNX Runtime: the FP32 export, static INT8 quantization of it, and the one place an
ONNX Runtime session is built (`ort_session`), used by the chain, the benchmark's profiler and the
detection pipeline alike. ONNX Runtime is imported inside the functions: it is heavy and optional for
the other backends."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.config import check_choice
from edgecompress.io import atomic_path, publish
from edgecompress.quantize.common import batches, quiet
from edgecompress.quantize.config import ONNX_OPSET, ORT_ACTIVATIONS, ORT_CALIBRATIONS, ORT_FORMATS

log = logging.getLogger(__name__)


def ort_session(path: str | Path, *, threads: int | None = None, profile_prefix: str | Path | None = None) -> Any:
    """An ONNX Runtime `InferenceSession` on the CPU provider, errors-only logging.

    Args:
        threads: intra-op threads (None = ONNX Runtime's default, all cores).
        profile_prefix: turn on ONNX Runtime's profiler, writing its trace under this prefix.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel(nn.Module):
    """An ONNX model as a torch module: logits = model(x) through one reused ONNX Runtime session, so
    the code that evaluates torch models evaluates it unchanged."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path, self.threads = str(path), threads
        self.session = ort_session(path, threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = self.session.get_inputs()[0].shape  # ints, or names for dynamic dimensions
        self._checked: tuple[int, ...] | None = None  # the last input shape validated (checked once per shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != self._checked:
            self._check_input(x)
        (out,) = self.session.run(None, {self.input_name: x.float().cpu().contiguous().numpy()})
        return torch.from_numpy(out)

    def _check_input(self, x: torch.Tensor) -> None:
        """One line instead of ONNX Runtime's error for a wrong rank or size, and a refusal of integer
        images, which would otherwise run as unnormalised floats and give confident wrong answers."""
        if not x.is_floating_point():
            raise EdgecompressError(f"{self.path}: input dtype {x.dtype} is invalid: expects float images normalised "
                                    "with the data set's mean/std (as the model was trained), not raw pixels")
        want = ["N" if not isinstance(d, int) else d for d in self.input_shape]
        fits = len(want) == x.ndim and all(not isinstance(d, int) or d == got for d, got in zip(want, x.shape))
        if not fits:
            raise EdgecompressError(f"{self.path}: input shape {tuple(x.shape)} is invalid: expects "
                                    f"({', '.join(map(str, want))}) (N: any batch size)")
        self._checked = tuple(x.shape)


def export_onnx(model: nn.Module, example_inputs: Any, path: str | Path) -> None:
    """Export to ONNX (opset 18, dynamic batch, input "input", output "logits"), check, write atomically.

    The torch.export-based exporter (dynamo=True, default since torch 2.9) is used; the deprecated
    TorchScript exporter is only a fallback for models torch.export cannot capture.
    """
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    if len(x) < 2:
        x = torch.cat([x, x])  # torch.export specialises a batch size of 1, breaking the dynamic axis
    common = dict(opset_version=ONNX_OPSET, input_names=["input"], output_names=["logits"])
    model = model.eval()
    with atomic_path(path, suffix=".onnx") as tmp:
        try:
            with quiet(), torch.no_grad():
                try:
                    torch.onnx.export(model, (x,), tmp, dynamo=True, external_data=False, verbose=False,
                                      dynamic_shapes=({0: torch.export.Dim("batch")},), **common)
                except Exception as exc:  # noqa: BLE001 - any capture failure: try the legacy exporter
                    log.warning("dynamo ONNX export failed (%s); using the legacy TorchScript exporter",
                                str(exc).splitlines()[0][:200])
                    torch.onnx.export(model, (x,), tmp, dynamo=False,
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **common)
            import onnx

            proto = onnx.load(tmp)
            for node in proto.graph.node:  # stack traces hold absolute source paths: keep hashes path-free
                del node.metadata_props[:]
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp + ".data")  # external data an exporter may have written beside it


def _make_reader(input_name: str, calib: torch.Tensor, batch_size: int) -> Any:
    """An ORT CalibrationDataReader over in-memory tensors (class built lazily: ORT imports are slow)."""
    from onnxruntime.quantization import CalibrationDataReader

    class TensorReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{input_name: b.numpy()} for b in batches(calib.float().contiguous(), batch_size)])

        def get_next(self) -> dict | None:
            return next(self._it, None)

    return TensorReader()


def quantize_onnx_static(fp32_path: str | Path, out_path: str | Path, calib: torch.Tensor, *,
                         per_channel: bool = True, batch_size: int = 64,
                         op_types: Sequence[str] | None = None, quant_format: str = "qdq",
                         activations: str = "uint8", reduce_range: bool = False, calibration: str = "minmax",
                         pre_process: bool = True, nodes_to_exclude: Sequence[str] = ()) -> None:
    """ONNX Runtime static INT8 (int8 weights), QDQ or QOperator, calibrated on `calib`.

    Args:
        op_types: only these ONNX op types are quantized (None = ORT's default set). Detectors pass
            ["Conv"]: their decode tail concatenates pixel coordinates (0..640) with probabilities
            (0..1) in one tensor, which a single uint8 scale would flatten to zero.
        quant_format: "qdq" (QuantizeLinear/DequantizeLinear pairs that ORT fuses into INT8 kernels)
            or "qoperator" (QLinearConv etc. written out).
        activations: "uint8" (asymmetric) or "int8" (symmetric, ORT's S8S8).
        reduce_range: 7-bit weights (for CPUs without VNNI, whose u8 x s8 pairs saturate 16 bits).
        calibration: ORT's "minmax", "percentile" (99.999) or "entropy" activation ranges.
        pre_process: ORT's `quant_pre_process` (shape inference + graph cleanup) first.
        nodes_to_exclude: ONNX node names left in float (`onnx_compute_nodes` lists the candidates).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for value, key, allowed in ((quant_format, "quant_format", ORT_FORMATS), (activations, "activations", ORT_ACTIVATIONS),
                                (calibration, "calibration", ORT_CALIBRATIONS)):
        check_choice(value, key, allowed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp:
        tmp = os.path.abspath(tmp)  # the ORT calls below run with it as the cwd
        source, pre, out = os.path.abspath(fp32_path), os.path.join(tmp, "pre.onnx"), os.path.join(tmp, "int8.onnx")
        if pre_process:
            try:  # shape inference + graph cleanup: ORT quantizes more ops with it, and warns without
                # inside the temporary folder: ORT's symbolic shape inference leaves scratch files in the cwd
                with quiet(), contextlib.chdir(tmp):
                    quant_pre_process(source, pre)
                source = pre
            except Exception as exc:  # noqa: BLE001 - optional step
                log.warning("onnx quant_pre_process failed (%s); quantizing the raw export", exc)
        input_name = _onnx_input_name(source)
        with quiet(), contextlib.chdir(tmp):
            quantize_static(source, out, _make_reader(input_name, calib, batch_size),
                            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                            per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                            calibrate_method={"minmax": CalibrationMethod.MinMax,
                                              "percentile": CalibrationMethod.Percentile,
                                              "entropy": CalibrationMethod.Entropy}[calibration],
                            op_types_to_quantize=list(op_types) if op_types else None,
                            nodes_to_exclude=list(nodes_to_exclude),
                            extra_options={"ActivationSymmetric": activations == "int8"})
        publish(out, out_path)
    log.info("ONNX INT8 (%s, %s activations, per_channel=%s, %s): calibrated on %d samples", quant_format,
             activations, per_channel, calibration, len(calib))


def onnx_compute_nodes(path: str | Path) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes of an ONNX file: what `nodes_to_exclude` can keep in float."""
    import onnx

    return [node.name for node in onnx.load(str(path), load_external_data=False).graph.node
            if node.op_type in ("Conv", "Gemm", "MatMul")]


def _onnx_input_name(path: str | Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def run_onnx(onnx_path: str | Path, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of an ONNX model on `inputs`, via ONNX Runtime's CPUExecutionProvider."""
    return OnnxModel(onnx_path)(inputs)


def onnx_layer_summary(path: str | Path) -> dict[str, Any]:
    """Quantized vs float compute layers of an ONNX graph: a Conv/Gemm/MatMul whose weight comes out of
    a DequantizeLinear node runs on INT8 weights (QDQ), as does a QLinear* op (QOperator)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    summary: dict[str, Any] = {"quantized": 0, "float": 0, "quantized_layers": {}, "float_layers": {}}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul"):
            kind = "quantized" if node.op_type.startswith("QLinear") or node.input[1] in dequantized else "float"
            summary[kind] += 1
            summary[f"{kind}_layers"][node.op_type] = summary[f"{kind}_layers"].get(node.op_type, 0) + 1
    return summary


def onnx_weights_bytes(path: str | Path) -> int:
    """Bytes of the ONNX graph's initializers (its weights)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    return int(sum(numpy_helper.to_array(t).nbytes for t in graph.initializer))
