"""The detection pipeline's params schema (`edgecompress.detection.params`) and its detector-family
registry: the committed params.yaml validates, bad values are one uniform line naming the dotted key,
families are checked against the registry, and reading params loads neither torch nor model code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgecompress import EdgecompressError
from edgecompress.config import load_settings, parse_settings
from edgecompress.detection import families, params
from edgecompress.detection.params import DetectionPipelineParams, DetectorParams

ROOT = Path(__file__).resolve().parents[1]
PARAMS_YAML = ROOT / "pipelines" / "detection" / "params.yaml"


def test_the_committed_params_file_validates_with_its_yaml_names() -> None:
    detection = load_settings(PARAMS_YAML, DetectionPipelineParams).detection
    assert detection.import_.out == "models/yolov5n.safe.pt" and detection.models["yolov5n"].family == "yolov5"
    assert detection.import_.family == "yolov5"
    written = yaml.safe_load(PARAMS_YAML.read_text())["detection"]
    as_dict = detection.to_dict()
    assert set(as_dict) == set(written)  # every key of the file, "import" spelled as in YAML
    assert as_dict["compress"] == written["compress"] and as_dict["train"] == written["train"]
    # the pruned network is measured on the runtimes it is compared with (issue #17)
    pruned = {"pruned", "pruned_onnx_fp32", "pruned_openvino_fp32", "pruned_openvino_int8"}
    assert pruned <= set(written["compress"]["variants"])


@pytest.mark.parametrize("changes, message", [
    ({"compress": {"prune_ratio": 1.5}}, "detection.compress.prune_ratio=1.5 is invalid: must be a number in (0, 1)"),
    ({"compress": {"prune_round_to": 0}},
     "detection.compress.prune_round_to=0 is invalid: must be null or an integer >= 1"),
    ({"compress": {"finetune_lr": 0}}, "detection.compress.finetune_lr=0 is invalid: must be null or a number > 0"),
    ({"compress": {"finetune_lr": "1e-3"}}, "detection.compress.finetune_lr='1e-3' is invalid: must be a number"),
    ({"compress": {"variants": ["pruned_onnx_int8"]}}, "detection.compress.variants=['pruned_onnx_int8'] is invalid"),
    ({"models": {"m": {"family": "yolov7", "weights": "x.pt"}}, "compress": {"model": "m"}, "train": {"model": "m"}},
     "detection.models.m.family='yolov7' is invalid: allowed: yolov5, ultralytics, torchvision"),
    ({"models": {"m": {"family": "yolov5", "weights": None}}},
     "detection.models.m.weights=None is invalid: family yolov5 needs the file detect_import wrote"),
    ({"models": {"m": {"family": "torchvision", "weights": None}}},
     "detection.models.m.arch=None is invalid: family torchvision needs arch"),
    ({"train": {"model": "nope"}}, "detection.train.model='nope' is invalid: must be a key of detection.models"),
    ({"compress": {"variants": ["fp32", "fp32"]}}, "detection.compress.variants=['fp32', 'fp32'] is invalid"),
    ({"batch_sizes": [1, 1]}, "detection.batch_sizes=[1, 1] is invalid"),
    ({"compress": {"onnx": {"calibration": "kl"}}},
     "detection.compress.onnx.calibration='kl' is invalid: allowed: minmax, percentile, entropy"),
    ({"compress": {"onnx": {"quant_format": "QDQ"}}},
     "detection.compress.onnx.quant_format='QDQ' is invalid: allowed: qdq, qoperator"),
    ({"compress": {"onnx": {"per_channel": "yes"}}},
     "detection.compress.onnx.per_channel='yes' is invalid: must be true or false"),
    ({"compress": {"onnx": {"symmetric": True}}}, "detection.compress.onnx.symmetric is not a known parameter"),
    ({"data": {"format": "kitti"}}, "detection.data.format='kitti' is invalid: allowed: coco, voc, yolo"),
    ({"train": {"optimizer": "lamb"}}, "detection.train.optimizer='lamb' is invalid: allowed: sgd, adamw"),
    ({"import": {"sauce": "x"}}, "detection.import.sauce is not a known parameter"),
    ({"import": {"family": "torchvision"}}, "detection.import.family='torchvision' is invalid: allowed: yolov5, ultralytics"),
])
def test_bad_values_are_one_line_naming_the_dotted_key(changes: dict, message: str) -> None:
    with pytest.raises(EdgecompressError) as err:
        parse_settings(DetectionPipelineParams, {"detection": changes})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_every_family_has_a_loader_and_its_name_is_what_params_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.detection.models import LOADERS

    assert set(LOADERS) == set(families.FAMILIES)
    # a family is one registry entry (plus its loader): params accept it without any other change
    monkeypatch.setitem(families.FAMILIES, "yolov9", families.FAMILIES["ultralytics"])
    assert DetectorParams(family="yolov9", arch="yolov9t.yaml").family == "yolov9"


def test_ultralytics_takes_an_imported_file_or_a_yaml() -> None:
    assert DetectorParams(family="ultralytics", weights="models/yolov8n.safe.pt").arch is None
    assert DetectorParams(family="ultralytics", arch="yolov8n.yaml", weights=None).weights is None
    with pytest.raises(EdgecompressError, match="arch=None is invalid: family ultralytics needs arch"):
        DetectorParams(family="ultralytics", weights=None)


def test_reading_params_loads_neither_torch_nor_model_code() -> None:
    code = ("import sys, edgecompress.detection.params; "
            "print(sorted(m for m in ('torch', 'edgecompress.detection.models') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
