"""Quantization variants: INT8 agreement with FP32, artifacts that reload in a bare Python, config checks.

One small resnet20 (width 0.5) is trained for a few seconds on a synthetic, separable 10-class task
(class prototype + noise) so its logits have real margins; otherwise argmax agreement of a random-init
model measures noise, not quantization quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from edgecompress import EdgecompressError
from edgecompress.params import parse_params
from edgecompress.quantize import common as qcommon
from edgecompress.quantize import config as qconfig
from edgecompress.quantize import artifacts, fx, onnx, openvino
from edgecompress.models import build_model

NUM_CLASSES = 10
INT8_VARIANTS = ("ptq_x86", "ptq_fbgemm", "ptq_qnnpack", "ptq_custom", "ptq_vnni", "qat", "onnx_int8", "openvino_int8")


def _sample(prototypes: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return prototypes[labels] + 0.5 * torch.randn(n, 3, 32, 32, generator=gen), labels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 OpenMP threads competing with another
    process make each training step ~20x slower (spinning barriers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup() -> dict:
    """A trained float model, calibration images and a fixed evaluation batch (same distribution)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    # Smooth class prototypes (upsampled 4x4 noise): learnable through conv + global pooling.
    prototypes = 1.5 * nn.functional.interpolate(
        torch.randn(NUM_CLASSES, 3, 4, 4, generator=gen), size=32, mode="bilinear", align_corners=False)
    model = build_model("resnet20", num_classes=NUM_CLASSES, width=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        x, y = _sample(prototypes, 64, gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    # Re-estimate BN statistics for the final weights (cumulative average): the running stats of a
    # 30-step run lag behind its weights, which makes eval logits fragile to any BN update (QAT).
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        for _ in range(4):
            model(_sample(prototypes, 128, gen)[0])
    model.eval()
    calib, _ = _sample(prototypes, 128, gen)
    batch, labels = _sample(prototypes, 64, gen)
    with torch.no_grad():
        logits = model(batch)
    return {"model": model, "calib": calib, "batch": batch, "labels": labels, "logits": logits,
            "prototypes": prototypes, "gen": gen}


@pytest.fixture(scope="module")
def variants(setup, tmp_path_factory) -> dict:
    """Every variant built once: {name: (module or None, artifact path)}."""
    out = tmp_path_factory.mktemp("artifacts")
    model, calib, example = setup["model"], setup["calib"], setup["batch"][:2]
    built: dict = {}
    for backend in qconfig.STATIC_BACKENDS:
        if backend in torch.backends.quantized.supported_engines:
            built[f"ptq_{backend}"] = fx.quantize_static_fx(model, calib, backend=backend)
    built["ptq_custom"] = fx.quantize_static_fx(model, calib, backend="x86", qconfig="custom")
    built["ptq_vnni"] = fx.quantize_static_fx(model, calib, backend="x86", qconfig="vnni")
    built["dynamic"] = fx.quantize_dynamic_linear(model)
    built["fp16"] = fx.to_fp16(model)
    # QAT: one tiny training step, then the freeze helpers the training loop uses in its last epochs.
    qat = fx.prepare_qat(model, (example,), backend="x86")
    optimizer = torch.optim.SGD(qat.parameters(), lr=1e-4)
    x, y = _sample(setup["prototypes"], 32, setup["gen"])
    nn.functional.cross_entropy(qat(x), y).backward()
    optimizer.step()
    fx.freeze_qat_observers(qat)
    fx.freeze_qat_bn(qat)
    built["qat"] = fx.convert_qat(qat)
    result = {}
    for name, module in built.items():
        path = out / f"{name}.ts"
        fx.save_torchscript(module, (example,), path, metadata={"variant": name})
        result[name] = (module, path)
    onnx.export_onnx(model, (example,), out / "onnx_fp32.onnx")
    onnx.quantize_onnx_static(out / "onnx_fp32.onnx", out / "onnx_int8.onnx", calib)
    result["onnx_fp32"] = (None, out / "onnx_fp32.onnx")
    result["onnx_int8"] = (None, out / "onnx_int8.onnx")
    converted = openvino.convert_to_openvino(model, example, out / "openvino_fp32.xml")
    openvino.quantize_openvino(converted, calib, out / "openvino_int8.xml", batch_size=64)
    result["openvino_fp32"] = (None, out / "openvino_fp32.xml")
    result["openvino_int8"] = (None, out / "openvino_int8.xml")
    result["_qat_prepared"] = qat
    return result


def _logits(variants: dict, name: str, batch: torch.Tensor) -> torch.Tensor:
    module, path = variants[name]
    if module is None:
        return artifacts.load_artifact(path)(batch)
    engine = getattr(module, "quant_engine", None)
    with (fx.quant_engine(engine) if engine else torch.no_grad()), torch.no_grad():
        return module(batch)


def test_float_model_is_trained(setup):
    assert (setup["logits"].argmax(1) == setup["labels"]).float().mean() >= 0.9


@pytest.mark.parametrize("name", INT8_VARIANTS)
def test_int8_variant_agrees_with_fp32(setup, variants, name):
    if name not in variants:
        pytest.skip(f"{name}: engine not in this torch build")
    logits = _logits(variants, name, setup["batch"])
    agreement = (logits.argmax(1) == setup["logits"].argmax(1)).float().mean().item()
    assert agreement >= 0.95, f"{name}: {agreement:.3f}"


def test_static_int8_quantizes_every_layer(variants):
    summary = fx.layer_summary(variants["ptq_x86"][0])
    assert summary["float"] == 0 and summary["quantized"] == 22  # 21 convs + fc
    assert summary["quantized_layers"]["ConvReLU2d"] > 0  # Conv-BN-ReLU fused


def test_dynamic_quantizes_linear_only(variants, caplog):
    summary = fx.layer_summary(variants["dynamic"][0])
    assert summary["float_layers"] == {"Conv2d": 21}
    assert summary["quantized_layers"] == {"Linear": 1}
    assert variants["dynamic"][0].fc.__class__.__module__.startswith("torch.ao.nn.quantized.dynamic")


def test_dynamic_logs_that_conv_stays_float(setup, caplog):
    with caplog.at_level("INFO", logger="edgecompress.quantize"):
        fx.quantize_dynamic_linear(setup["model"])
    assert "Conv2d layers stay float32" in caplog.text


class WeightReader(torch.nn.Module):
    """Calls `mlp` as a module but passes `attn.weight` to F.linear, as torchvision's Swin does."""

    def __init__(self):
        super().__init__()
        self.attn, self.mlp = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.mlp(torch.nn.functional.linear(x, self.attn.weight, self.attn.bias))


def test_dynamic_keeps_weight_read_linears_float_and_runs():
    model = WeightReader().eval()
    x = torch.randn(3, 8)
    assert fx.linear_layers_called(model, x) == (["mlp"], ["attn"])
    with pytest.raises(TypeError, match="must be Tensor, not method"):
        fx.quantize_dynamic_linear(model)(x)  # every Linear swapped: the model's own forward breaks
    quantized = fx.quantize_dynamic_linear(model, x)
    summary = fx.layer_summary(quantized)
    assert summary["quantized_layers"] == {"Linear": 1} and summary["float_layers"] == {"Linear": 1}
    assert torch.allclose(quantized(x), model(x), atol=0.05)


def test_fp16_takes_float32_input(setup, variants):
    assert fx.fp16_cpu_compute() in (fx.FP16_NATIVE, fx.FP16_UPCAST)
    logits = variants["fp16"][0](setup["batch"])
    assert logits.dtype == torch.float32
    assert (logits.argmax(1) == setup["logits"].argmax(1)).float().mean() >= 0.95
    if fx.fp16_cpu_compute() == fx.FP16_NATIVE:
        assert variants["fp16"][0].model.fc.weight.dtype == torch.float16


def test_openvino_fp32_matches_pytorch_and_int8_is_int8(setup, variants):
    assert artifacts.max_abs_logit_diff(variants["openvino_fp32"][1], setup["model"], setup["batch"]) < 1e-4
    assert openvino.openvino_layer_summary(variants["openvino_fp32"][1]) == {
        "quantized": 0, "float": 22, "quantized_layers": {}, "float_layers": {"Convolution": 21, "MatMul": 1}}
    int8 = openvino.openvino_layer_summary(variants["openvino_int8"][1])
    assert int8["quantized"] == 22 and int8["float"] == 0  # every conv and the classifier on INT8 weights
    fp32_bin, int8_bin = (openvino.openvino_weights_bytes(variants[n][1]) for n in ("openvino_fp32", "openvino_int8"))
    assert int8_bin < 0.35 * fp32_bin  # int8 weights plus per-channel scales


def test_onnx_fp32_matches_pytorch(setup, variants):
    assert artifacts.max_abs_logit_diff(variants["onnx_fp32"][1], setup["model"], setup["batch"]) < 1e-4
    # Exporter stack traces are stripped, so the artifact's hash does not depend on the checkout path.
    assert b"models.py" not in variants["onnx_fp32"][1].read_bytes()


def test_artifacts_reload_in_bare_python(setup, variants, tmp_path):
    """Each artifact loads with torch.jit.load / onnxruntime / openvino alone and reproduces in-process logits."""
    names = [n for n in variants if not n.startswith("_")]
    expected = {n: _logits(variants, n, setup["batch"]) for n in names}
    torch.save(setup["batch"], tmp_path / "batch.pt")
    paths = {n: str(variants[n][1]) for n in names}
    script = textwrap.dedent(f"""
        import json, sys, zipfile, torch, onnxruntime, openvino
        paths, batch, out = json.loads({json.dumps(json.dumps(paths))}), torch.load("batch.pt"), {{}}
        for name, path in paths.items():
            if path.endswith(".xml"):
                # f32: the CPU plugin would run float parts in bf16 on a CPU with AVX512-BF16
                compiled = openvino.Core().compile_model(path, "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})
                out[name] = torch.from_numpy(compiled(batch.numpy())[0].copy())
                continue
            if path.endswith(".onnx"):
                sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
                out[name] = torch.from_numpy(sess.run(None, {{sess.get_inputs()[0].name: batch.numpy()}})[0])
                continue
            with zipfile.ZipFile(path) as z:  # the engine must be set before load (weights re-pack)
                meta = json.loads(z.read(next(n for n in z.namelist() if n.endswith("extra/edgecompress.json"))))
            torch.backends.quantized.engine = meta["quant_engine"]
            with torch.no_grad():
                out[name] = torch.jit.load(path)(batch)
        assert not any(m.startswith("edgecompress") for m in sys.modules)
        torch.save(out, "out.pt")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = torch.load(tmp_path / "out.pt")
    for name in names:
        assert torch.allclose(fresh[name], expected[name], atol=1e-5), name


def test_torchscript_metadata_and_loader(variants):
    path = variants["ptq_qnnpack"][1] if "ptq_qnnpack" in variants else variants["ptq_x86"][1]
    meta = fx.read_torchscript_metadata(path)
    assert meta["quant_engine"] in qconfig.STATIC_BACKENDS and meta["variant"].startswith("ptq_")
    before = torch.backends.quantized.engine
    try:
        assert isinstance(fx.load_torchscript(path), torch.jit.ScriptModule)
        assert torch.backends.quantized.engine == meta["quant_engine"]
    finally:
        torch.backends.quantized.engine = before


def test_artifact_dir_has_no_temp_files(variants):
    directory = variants["onnx_fp32"][1].parent
    written = [p for n, (_, p) in ((n, v) for n, v in variants.items() if not n.startswith("_"))]
    written += [p.with_suffix(".bin") for p in written if p.suffix == ".xml"]  # an IR's weights file
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in written)


def test_qat_freeze_helpers(variants):
    qat = variants["_qat_prepared"]
    fake_quants = [m for m in qat.modules() if hasattr(m, "observer_enabled")]
    assert fake_quants and all(int(m.observer_enabled[0]) == 0 for m in fake_quants)
    assert all(m.freeze_bn for m in qat.modules() if hasattr(m, "freeze_bn"))


def test_static_does_not_modify_input(setup):
    model = setup["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fx.quantize_static_fx(model, setup["calib"][:8], backend="x86")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.layer1[0].conv1) is nn.Conv2d


def test_backend_unsupported(setup, monkeypatch):
    with pytest.raises(qcommon.BackendUnsupported, match="'tpu'.*supported engines"):
        fx.quantize_static_fx(setup["model"], setup["calib"][:4], backend="tpu")
    monkeypatch.setattr(fx, "_supported_engines", lambda: ["x86", "fbgemm"])  # e.g. a build without qnnpack
    with pytest.raises(qcommon.BackendUnsupported, match="qnnpack"):
        fx.quantize_static_fx(setup["model"], setup["calib"][:4], backend="qnnpack")
    assert issubclass(qcommon.BackendUnsupported, EdgecompressError)


def test_config_validation():
    with pytest.raises(EdgecompressError, match=r"^backends=\['x86', 'tpu'\] is invalid: .*allowed: x86, fbgemm, qnnpack"):
        qconfig.QuantizeConfig(backends=("x86", "tpu"))
    with pytest.raises(EdgecompressError, match=r"^calibration_samples=0 is invalid"):
        qconfig.QuantizeConfig(calibration_samples=0)
    with pytest.raises(EdgecompressError, match=r"^qat_epochs=-1 is invalid"):
        qconfig.QuantizeConfig(qat_epochs=-1)
    with pytest.raises(EdgecompressError, match=r"^variants=\['ptq_x86', 'int4'\] is invalid"):
        qconfig.QuantizeConfig(variants=["ptq_x86", "int4"])
    with pytest.raises(EdgecompressError, match=r"^qat_lr=0 is invalid"):
        qconfig.QuantizeConfig(qat_lr=0)
    with pytest.raises(EdgecompressError, match=r"quantize\.bogus"):
        parse_params({"quantize": {"bogus": 1}})
    settings = {"backends": ["x86"], "calibration_samples": 8192, "qat_epochs": 0}
    config = parse_params({"quantize": settings}).quantize.config()
    assert config.backends == ("x86",) and qconfig.QuantizeConfig(calibration_samples=1).calibration_samples == 1
    assert parse_params({"quantize": config.to_dict()}).quantize.config() == config
    assert set(qconfig.QuantizeConfig().variants) == set(qconfig.VARIANTS)


def test_onnx_int8_settings_are_quantize_onnx_static_keywords():
    """`OnnxInt8Config.ort_options`, the one mapping the chain, the zoo and the detection pipeline build
    onnx_int8 through: every setting (one left out would be silently ignored), each under a keyword
    `quantize_onnx_static` takes; `summary` words them for a variant's "method"."""
    import inspect

    config = qconfig.OnnxInt8Config(quant_format="qoperator", activations="int8", per_channel=False, reduce_range=True,
                                    calibration="entropy", pre_process=False)
    assert config.ort_options() == config.to_dict()  # every field, with the value metrics record
    assert set(config.ort_options()) <= set(inspect.signature(onnx.quantize_onnx_static).parameters)
    assert config.summary() == ("QOperator, per-tensor int8 weights (7-bit range), int8 activations, Entropy "
                                "calibration, no quant_pre_process")
    assert qconfig.OnnxInt8Config().summary() == ("QDQ, per-channel int8 weights, uint8 activations, MinMax "
                                                  "calibration, quant_pre_process")


def test_calibration_tensors():
    data = TensorDataset(torch.randn(100, 3, 8, 8), torch.zeros(100, dtype=torch.long))
    assert qcommon.calibration_tensors(DataLoader(data, batch_size=32), 70).shape == (70, 3, 8, 8)
    assert qcommon.calibration_tensors(DataLoader(data, batch_size=32), 500).shape[0] == 100
    with pytest.raises(EdgecompressError):
        qcommon.calibration_tensors(DataLoader(data, batch_size=32), 0)


class _DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(torch.relu(self.depthwise(torch.relu(self.stem(x))))).mean((2, 3))


def test_vnni_qconfig_narrows_only_depthwise_weights():
    torch.manual_seed(0)
    model, calib = _DepthwiseSeparable().eval(), torch.randn(32, 3, 8, 8)
    quantized = fx.quantize_static_fx(model, calib, backend="x86", qconfig="vnni")
    weights = {name: m.weight().int_repr() for name, m in quantized.named_modules() if hasattr(m, "_packed_params")}
    assert set(weights) == {"stem", "depthwise", "pointwise"}  # ConvReLU2d fused under the conv's name
    assert int(weights["depthwise"].abs().max()) <= 64  # 7 bits: fbgemm's depthwise kernel sums pairs in 16 bits
    assert int(weights["stem"].abs().max()) == int(weights["pointwise"].abs().max()) == 127  # full 8 bits
    with fx.quant_engine("x86"), torch.no_grad():
        x = torch.randn(16, 3, 8, 8)
        assert torch.allclose(quantized(x), model(x), atol=0.05)


def test_onnx_loader_refuses_wrong_shape_and_raw_pixels_in_one_line(tmp_path):
    """Wrong rank or size gave ONNX Runtime's own multi-line error, and uint8 pixels ran silently as
    unnormalised floats (issue 16, finding 4)."""
    from edgecompress.quantize.onnx import OnnxModel, export_onnx
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx")
    onnx_model = OnnxModel(tmp_path / "m.onnx", threads=1)
    assert onnx_model(torch.randn(5, 3, 8, 8)).shape == (5, 4)  # any batch size
    for bad, what in ((torch.randn(3, 8, 8), "input shape (3, 8, 8) is invalid: expects (N, 3, 8, 8)"),
                      (torch.randn(1, 1, 8, 8), "input shape (1, 1, 8, 8) is invalid"),
                      (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "input dtype torch.uint8 is invalid")):
        with pytest.raises(EdgecompressError) as exc:
            onnx_model(bad)
        assert "m.onnx: " + what in str(exc.value) and "\n" not in str(exc.value)
