"""The `quantize` settings block and the registry of variants.

`VARIANTS` is the one place a variant is declared: its builder (a function registered under that
name in `quantize.artifacts`), the runtime its artifact runs on, whether every conv/linear runs in
INT8 (the candidates for "the best INT8 variant"), whether it is a float32 runtime of the same model
(it joins the "best FP32 runtime" reference), and how it is produced (written next to its numbers).
Stages, the benchmark and the reports read these flags instead of lists of names. This module holds
data only, so the params schema can validate variant names without loading a backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from edgecompress.config import Settings, check, check_budget, check_choice, check_distinct

STATIC_BACKENDS = ("x86", "fbgemm", "qnnpack")  # torch.ao quantized engines of the static PTQ variants
RUNTIME_SUFFIX = {"torch": ".ts", "onnxruntime": ".onnx", "openvino": ".xml"}  # artifact file type per runtime
ONNX_OPSET = 18


@dataclass(frozen=True)
class Variant:
    """One registry entry (see the module docstring)."""

    builder: str  # name registered with `quantize.artifacts.builder`
    runtime: str  # a key of RUNTIME_SUFFIX: what loads and runs the artifact
    int8: bool  # every conv/linear runs in INT8
    describe: Callable[["QuantizeConfig"], dict[str, Any]]  # how it is produced, for the metrics
    fp32: bool = False  # a float32 runtime of the pruned model (part of the best-FP32 reference)
    options: dict[str, Any] = field(default_factory=dict)  # the builder's keyword arguments
    per_backend: bool = False  # built only when options["backend"] is listed in quantize.backends

    @property
    def suffix(self) -> str:
        """The artifact's file suffix."""
        return RUNTIME_SUFFIX[self.runtime]


def _calibrated(config: "QuantizeConfig") -> dict[str, Any]:
    return {"calibration_samples": config.calibration_samples}


def _static(backend: str) -> Variant:
    return Variant("static_ptq", "torch", int8=True, per_backend=True,
                   options={"backend": backend, "qconfig": "default"},
                   describe=lambda c: {"method": "FX static PTQ", "backend": backend,
                                       "qconfig": f"default qconfig mapping ({backend})", **_calibrated(c)})


VARIANTS: dict[str, Variant] = {  # in report order
    **{f"ptq_{backend}": _static(backend) for backend in STATIC_BACKENDS},
    "ptq_custom": Variant(
        "static_ptq", "torch", int8=True, options={"backend": "x86", "qconfig": "custom"},
        describe=lambda c: {"method": "FX static PTQ", "backend": "x86", **_calibrated(c),
                            "qconfig": "HistogramObserver activations (quint8, full range), 7-bit per-channel "
                                       "symmetric MinMaxObserver weights (qint8)"}),
    "ptq_vnni": Variant(
        "static_ptq", "torch", int8=True, options={"backend": "x86", "qconfig": "vnni"},
        describe=lambda c: {"method": "FX static PTQ", "backend": "x86", **_calibrated(c),
                            "qconfig": "8-bit HistogramObserver activations and 8-bit per-channel weights, 7-bit "
                                       "weights on depthwise convolutions only (quantize.fx.vnni_qconfig_mapping)"}),
    "dynamic": Variant(
        "dynamic", "torch", int8=False,
        describe=lambda c: {"method": "dynamic quantization (quantize_dynamic)", "backend": "x86",
                            "note": "PyTorch dynamic quantization covers Linear/RNN only: Conv2d layers stay "
                                    "float32"}),
    "fp16": Variant("fp16", "torch", int8=False, describe=lambda c: {"method": "half-precision weights"}),
    "qat": Variant(
        "qat", "torch", int8=True,
        describe=lambda c: {"method": "FX quantization-aware training", "backend": "x86", "epochs": c.qat_epochs,
                            "lr": c.qat_lr, "freeze_observer_epoch": c.qat_freeze_observer_epoch,
                            "freeze_bn_epoch": c.qat_freeze_bn_epoch}),
    "onnx_fp32": Variant(
        "onnx_export", "onnxruntime", int8=False, fp32=True,
        describe=lambda c: {"method": "ONNX export (torch.export-based exporter)", "opset": ONNX_OPSET}),
    "onnx_int8": Variant(
        "onnx_static", "onnxruntime", int8=True,
        describe=lambda c: {"method": "ONNX Runtime static quantization", "weights": "int8", **c.onnx.to_dict(),
                            **_calibrated(c)}),
    "openvino_fp32": Variant(
        "openvino_convert", "openvino", int8=False, fp32=True,
        describe=lambda c: {"method": "OpenVINO conversion (ov.convert_model), FP32 IR"}),
    "openvino_int8": Variant(
        "openvino_nncf", "openvino", int8=True,
        describe=lambda c: {"method": "NNCF post-training quantization of the OpenVINO model (nncf.quantize)",
                            **c.openvino.to_dict(), **_calibrated(c)}),
}


def is_int8_variant(name: str) -> bool:
    """Variants whose every conv/linear runs in INT8 (dynamic quantization is INT8 on Linear only)."""
    return name in VARIANTS and VARIANTS[name].int8


def static_variants() -> tuple[str, ...]:
    """The static INT8 PTQ variants (one per engine or QConfig), compared side by side in the reports."""
    return tuple(name for name, v in VARIANTS.items() if v.builder == "static_ptq")


def fp32_runtime_variants() -> tuple[str, ...]:
    """Variants that are float32 runtimes of the pruned model (the best-FP32 reference's candidates)."""
    return tuple(name for name, v in VARIANTS.items() if v.fp32)


PRESETS = ("performance", "mixed")  # NNCF: symmetric activations, or asymmetric ones
MODEL_TYPES = ("transformer",)  # NNCF's special handling of attention; null for CNNs
# NNCF's activation range estimators (RangeEstimatorParametersSet, lower-cased); null = NNCF's own choice
# (mean over calibration batches of each batch's min and max)
ACTIVATION_RANGES = ("minmax", "mean_minmax", "median_minmax", "mean_no_outliers_minmax", "mean_quantile", "histogram")


@dataclass(frozen=True)
class IgnoredScope(Settings):
    """Nodes NNCF leaves in float: exact names, operation types, or regular expressions on names."""

    names: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpenVINOConfig(Settings):
    """`quantize.openvino`: NNCF's settings for the `openvino_int8` variant."""

    preset: str = "performance"  # performance | mixed
    fast_bias_correction: bool = True  # false: NNCF's full bias correction (slower)
    model_type: str | None = None  # null | transformer
    subset_size: int | None = None  # calibration samples NNCF uses; null = all of quantize.calibration_samples
    activations_range: str | None = None  # null = NNCF's default | one of ACTIVATION_RANGES
    ignored_scope: IgnoredScope = field(default_factory=IgnoredScope)

    def nncf_options(self, float_layers: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
        """`quantize.openvino.quantize_openvino`'s keyword arguments, `float_layers` added to the ignored names."""
        scope = self.ignored_scope.to_dict()
        scope["names"] = [*scope["names"], *float_layers]
        return {"preset": self.preset, "fast_bias_correction": self.fast_bias_correction, "model_type": self.model_type,
                "ignored_scope": scope, "subset_size": self.subset_size, "activations_range": self.activations_range}

    def validate(self) -> None:
        check_choice(self.preset, "preset", PRESETS)
        check(self.model_type is None or self.model_type in MODEL_TYPES, "model_type", self.model_type,
              f"allowed: null, {', '.join(MODEL_TYPES)}")
        check(self.subset_size is None or self.subset_size >= 1, "subset_size", self.subset_size,
              "must be null or an integer >= 1")
        check(self.activations_range is None or self.activations_range in ACTIVATION_RANGES, "activations_range",
              self.activations_range, f"allowed: null, {', '.join(ACTIVATION_RANGES)}")

    def summary(self) -> str:
        """The settings in a few words, for methods and reports."""
        parts = [f"{self.preset} preset", f"{'fast' if self.fast_bias_correction else 'full'} bias correction",
                 f"{self.activations_range or 'mean_minmax'} activation ranges"]
        return ", ".join(parts)


ORT_FORMATS = ("qdq", "qoperator")
ORT_ACTIVATIONS = ("uint8", "int8")
ORT_CALIBRATIONS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class OnnxInt8Config(Settings):
    """ONNX Runtime static INT8 settings (`quantize.onnx`, `zoo.onnx`); see `quantize.onnx.quantize_onnx_static`
    and docs/experiments/ort_int8_configs.py for what each one measured."""

    quant_format: str = "qdq"  # qdq | qoperator
    activations: str = "uint8"  # uint8 (asymmetric) | int8 (symmetric S8S8)
    per_channel: bool = True  # per-channel weights
    reduce_range: bool = False  # 7-bit weights (CPUs without VNNI)
    calibration: str = "minmax"  # minmax | percentile | entropy
    pre_process: bool = True  # ORT's quant_pre_process first

    def validate(self) -> None:
        check_choice(self.quant_format, "quant_format", ORT_FORMATS)
        check_choice(self.activations, "activations", ORT_ACTIVATIONS)
        check_choice(self.calibration, "calibration", ORT_CALIBRATIONS)

    def ort_options(self) -> dict[str, Any]:
        """`quantize.onnx.quantize_onnx_static`'s keyword arguments: the one mapping the chain, the zoo and the
        detection pipeline build their onnx_int8 through (a new field is added here, or it reaches none)."""
        return {"quant_format": self.quant_format, "activations": self.activations, "per_channel": self.per_channel,
                "reduce_range": self.reduce_range, "calibration": self.calibration, "pre_process": self.pre_process}

    def summary(self) -> str:
        """The settings in words, for a variant's "method" line in metrics and reports."""
        weights = f"{'per-channel' if self.per_channel else 'per-tensor'} int8 weights" + (
            " (7-bit range)" if self.reduce_range else "")
        calibration = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}[self.calibration]
        return ", ".join([{"qdq": "QDQ", "qoperator": "QOperator"}[self.quant_format], weights,
                          f"{self.activations} activations", f"{calibration} calibration",
                          "quant_pre_process" if self.pre_process else "no quant_pre_process"])


@dataclass(frozen=True)
class QuantizeConfig(Settings):
    """The method part of the `quantize` block (the stage adds its seed, `params.QuantizeParams`)."""

    backends: tuple[str, ...] = STATIC_BACKENDS  # static INT8 PTQ engines (ptq_<backend>)
    calibration_samples: int = 512
    calibration_batch_size: int = 64
    qat_epochs: int = 2
    qat_freeze_observer_epoch: int = 1
    qat_freeze_bn_epoch: int = 1
    qat_lr: float = 0.001
    variants: tuple[str, ...] = tuple(VARIANTS)
    openvino: OpenVINOConfig = field(default_factory=OpenVINOConfig)
    onnx: OnnxInt8Config = field(default_factory=OnnxInt8Config)
    max_accuracy_drop: float | None = None  # points on the validation split; over it, layers fall back to float
    max_float_layers: int = 4  # at most this many layers kept in float by the fallback
    gate: bool = False  # true: a variant still over max_accuracy_drop fails the stage

    def validate(self) -> None:
        check_distinct(self.backends, "backends", STATIC_BACKENDS, non_empty=False)
        check_budget(self.max_accuracy_drop, "max_accuracy_drop")
        check(self.max_float_layers >= 0, "max_float_layers", self.max_float_layers, "must be an integer >= 0")
        check(not self.gate or self.max_accuracy_drop is not None, "gate", self.gate,
              "needs quantize.max_accuracy_drop (the budget it enforces)")
        check_distinct(self.variants, "variants", VARIANTS, non_empty=False)
        for key, low in (("calibration_samples", 1), ("calibration_batch_size", 1), ("qat_epochs", 0),
                         ("qat_freeze_observer_epoch", 1), ("qat_freeze_bn_epoch", 0)):
            # observers need at least one epoch of data before their ranges can be frozen
            check(getattr(self, key) >= low, key, getattr(self, key), f"must be an integer >= {low}")
        check(math.isfinite(self.qat_lr) and self.qat_lr > 0, "qat_lr", self.qat_lr, "must be a finite number > 0")

    def config(self) -> "QuantizeConfig":
        """Just the method's settings (the stage block deriving from this class adds its seed)."""
        return QuantizeConfig(**{name: getattr(self, name) for name in QuantizeConfig.__dataclass_fields__})


def variant_names(config: QuantizeConfig) -> list[str]:
    """The variants a config asks for, in its order; per-engine ones only for engines in `config.backends`."""
    return [name for name in config.variants
            if not VARIANTS[name].per_backend or VARIANTS[name].options["backend"] in config.backends]
