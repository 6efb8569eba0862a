"""Every quantization and export backend of the project, behind one package, so a backend (FX graph
mode today, torchao's pt2e later, ONNX Runtime, ...) can be swapped without touching a stage.

- `config`: the `quantize` settings block and the variant registry (`VARIANTS`: one entry per
  variant, naming its builder, runtime and precision);
- `fx`: PyTorch FX graph-mode INT8 (static PTQ, dynamic, QAT), FP16, and their TorchScript artifacts;
- `onnx`: ONNX export, ONNX Runtime static INT8, and the one ONNX Runtime session builder;
- `artifacts`: a variant built from its registry entry, written, reloaded and measured;
- `common`: calibration data and the deprecation-noise filter the backends share.

The package's `__init__` imports nothing: a stage that needs the settings alone does not load the
backends (and does not depend on their files in dvc.yaml).
"""
