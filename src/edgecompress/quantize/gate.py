"""Accuracy-aware quantization: the quality gate of an INT8 variant.

Every INT8 variant's accuracy drop is measured on data the evaluation never sees (the chain's
validation split). Over `quantize.max_accuracy_drop` points, the variant is rebuilt with the fewest
layers kept in float that bring it within budget (`fallback.float_fallback`: one-layer-float ablation,
then greedy; the candidates are each backend's own layer names: FX module names, ONNX node names for
ONNX Runtime's `nodes_to_exclude`, OpenVINO node names for NNCF's ignored scope). The record says which
layers stayed float and, when the caller passes a timer, what they cost in latency. With
`quantize.gate: true`, `check_gates` turns a variant still over budget into one error line.
`build_all_variants` is the chain's quantize stage around it: every variant built, gated and measured.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.io import file_size_mb
from edgecompress.quantize import fx
from edgecompress.quantize.artifacts import (BuiltVariant, artifact_path, build_variant, fallback_candidates,
                                             load_artifact, max_abs_logit_diff, measure_variant, weights_payload_bytes)
from edgecompress.quantize.common import BackendUnsupported
from edgecompress.quantize.config import VARIANTS, QuantizeConfig, variant_names
from edgecompress.quantize.fallback import float_fallback

log = logging.getLogger(__name__)

Validate = Callable[[Any], float]  # loaded artifact -> accuracy (fraction) on validation data
Timer = Callable[[Any], float]  # loaded artifact -> ms per sample


def _copy_exports(source: Path, target: Path) -> None:
    """The FP32 exports a quantizer starts from, so that trials do not export again."""
    for name in ("onnx_fp32.onnx", "openvino_fp32.xml", "openvino_fp32.bin"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def _replace(built: BuiltVariant, final: BuiltVariant) -> BuiltVariant:
    """Move the fallback's artifact (and an IR's .bin) over the all-INT8 one."""
    for suffix in [".xml", ".bin"] if built.path.suffix == ".xml" else [built.path.suffix]:
        os.replace(final.path.with_suffix(suffix), built.path.with_suffix(suffix))
    return BuiltVariant(built.path, final.model, final.settings)


def gate_variant(name: str, built: BuiltVariant, model: nn.Module, *, calib: torch.Tensor, config: QuantizeConfig,
                 validate: Validate, reference: float, timer: Timer | None = None,
                 qat_train: Any = None) -> tuple[BuiltVariant, dict[str, Any]]:
    """Measure `built`'s validation drop against `reference` (the float model's validation accuracy) and,
    over budget, replace its artifact with the float-fallback one. Returns the variant and its record."""
    accuracy = validate(load_artifact(built.path))
    budget = config.max_accuracy_drop
    record: dict[str, Any] = {"val_accuracy": round(accuracy, 6),
                              "val_drop_points": round(100 * (reference - accuracy), 3), "budget_points": budget,
                              "float_layers": [], "met": budget is None or 100 * (reference - accuracy) <= budget}
    if budget is None or record["met"]:
        return built, record
    with tempfile.TemporaryDirectory(prefix=f".{name}-fallback-", dir=built.path.parent) as tmp:
        folder = Path(tmp)
        _copy_exports(built.path.parent, folder)
        candidates = fallback_candidates(name, model, folder, calib)
        if candidates is None:
            record["fallback"] = f"none: the {name} builder cannot keep single layers in float"
            return built, record

        def build(float_layers: tuple[str, ...]) -> BuiltVariant:
            return build_variant(name, model, calib=calib, config=config, out_dir=folder, qat_train=qat_train,
                                 float_layers=float_layers)

        found, final = float_fallback(build, lambda b: validate(load_artifact(b.path)), candidates,
                                      target=reference - budget / 100, max_layers=config.max_float_layers,
                                      baseline=(built, accuracy))
        record.update(val_accuracy=round(found.score, 6), val_drop_points=round(100 * (reference - found.score), 3),
                      float_layers=found.float_layers, met=found.met, candidates=len(candidates),
                      search_seconds=round(found.seconds, 1), steps=found.steps, sensitivity=found.sensitivity[:5])
        if timer is not None and found.float_layers:
            record["latency_ms"] = {"all_int8": timer(load_artifact(built.path)),
                                    "with_float_layers": timer(load_artifact(final.path))}
        if found.float_layers:
            built = _replace(built, final)
    log.info("%s: validation drop %.2f points (budget %s) with %d layer(s) in float", name,
             record["val_drop_points"], budget, len(record["float_layers"]))
    return built, record


def check_gates(records: dict[str, dict[str, Any]], config: QuantizeConfig) -> None:
    """With `quantize.gate: true`, one error line for the first variant still over budget."""
    if not config.gate:
        return
    for name, record in records.items():
        if not record["met"]:
            raise EdgecompressError(
                f"quantize.gate: variant {name} drops {record['val_drop_points']:.2f} points on the validation split "
                f"with {len(record['float_layers'])} layer(s) in float (quantize.max_accuracy_drop="
                f"{config.max_accuracy_drop}, quantize.max_float_layers={config.max_float_layers}); "
                f"previous outputs are kept")


def build_all_variants(model: nn.Module, folder: str | Path, *, calib: torch.Tensor, config: QuantizeConfig,
                       qat_train: Any, evaluate_fn: Callable[[Any], dict], validate_fn: Callable[[Any], dict],
                       timer: Timer | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The chain's quantize stage: the float model and every variant of `config` built into `folder`,
    reloaded and measured on the test split (`evaluate_fn`: `train.evaluate` bound to a loader), each
    INT8 one through the quality gate on the validation split (`validate_fn`). Returns the metrics per
    variant and the gate records."""
    fp32 = evaluate_fn(model)
    fp32_val = validate_fn(model)["accuracy"]
    fp32_path = artifact_path(folder, "fp32")
    fx.save_torchscript(model, calib[:2], fp32_path, metadata={"variant": "fp32"})
    fp32_mb = file_size_mb(fp32_path)
    results = {"fp32": {"accuracy": round(fp32["accuracy"], 6), "val_accuracy": round(fp32_val, 6),
                        "size_mb": round(fp32_mb, 4), "weights_mb": round(weights_payload_bytes(fp32_path) / 1e6, 4),
                        "artifact": fp32_path.name}}
    gates = {}

    for name in variant_names(config):
        if name == "qat" and config.qat_epochs == 0:
            results[name] = {"skipped": "quantize.qat_epochs is 0"}
            continue
        try:
            variant = build_variant(name, model, calib=calib, config=config, out_dir=folder, qat_train=qat_train)
        except BackendUnsupported as exc:
            log.warning("%s skipped: %s", name, exc)
            results[name] = {"skipped": str(exc)}
            continue
        if VARIANTS[name].int8:
            variant, gates[name] = gate_variant(name, variant, model, calib=calib, config=config, qat_train=qat_train,
                                                validate=lambda m: validate_fn(m)["accuracy"], reference=fp32_val,
                                                timer=timer)
        results[name] = measure_variant(variant, evaluate_fn=evaluate_fn, fp32=fp32, fp32_size_mb=fp32_mb)
        if name in gates:
            results[name]["gate"] = gates[name]
        if VARIANTS[name].fp32:  # an FP32 export must compute what the torch model computes
            results[name]["max_abs_logit_diff_vs_torch"] = max_abs_logit_diff(variant.path, model, calib[:64])
        log.info("%s: accuracy %.4f (FP32 %.4f), %.3f MB", name, results[name]["accuracy"], fp32["accuracy"],
                 results[name]["size_mb"])
    return results, gates
