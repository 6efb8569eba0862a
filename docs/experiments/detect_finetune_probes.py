"""Side experiments behind the detection settings quoted in README.md and params.yaml (not a stage).

Run from the repository root after `dvc repro pipelines/detection/dvc.yaml` (it reads the pipeline's
data/subset, data/train and models/yolov5n.safe.pt):

    python docs/experiments/detect_finetune_probes.py

Prints, on the 32-image evaluation subset:
- yolov5n fine-tuned with BatchNorm statistics re-estimated and a learning rate of ~0 (1 epoch),
  and with lr 1e-3 for 3 epochs, BatchNorm frozen (the pipeline's default is lr 1e-4, frozen);
- yolov5n pruned 5% per layer and fine-tuned 3 epochs at lr 1e-3 (the pipeline uses 1e-4);
- the model-block time of the original, pruned (5%) and pruned with channel counts rounded to 8
  (ratio 0.25) networks, measured side by side in this process (batch 1, 640 px, 8 runs each, 3 rounds).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from edgecompress.detection import source
from edgecompress.detection import train as dt
from edgecompress.detection.compress import calibration_batch
from edgecompress.detection.inference import evaluate_detector
from edgecompress.detection.models import RawHead, fuse_network, load_detector, unfused_network
from edgecompress.detection.pruning import head_output_convs, pruned_variant
from edgecompress.detection.params import DetectorParams
from edgecompress.prune import PruneConfig, prune_model

ROOT = Path("pipelines/detection")
WEIGHTS = ROOT / "models" / "yolov5n.safe.pt"


def main() -> None:
    torch.set_num_threads(2)
    subset = source.load_subset(ROOT / "data" / "subset")
    train = source.load_subset(ROOT / "data" / "train")
    original = load_detector("yolov5n", DetectorParams(family="yolov5", weights=str(WEIGHTS)),
                             dataset_classes=subset.classes, imgsz=640)

    def map50(detector) -> float:
        return round(100 * evaluate_detector(detector, subset, batch_size=8, conf_threshold=0.25,
                                             map_conf_threshold=0.001, iou_threshold=0.45, max_det=300,
                                             warmup_batches=0, agreement_points=0.5)[0]["map_50"], 1)

    def fit(detector, **changes) -> None:
        settings = dict(epochs=3, batch_size=8, workers=0, optimizer="sgd", lr=1e-3, momentum=0.937,
                        weight_decay=5e-4, hflip=0.5, seed=0, freeze_batchnorm=True)
        dt.fit_detector(detector, train, **{**settings, **changes})

    print(f"original: mAP@.5 {map50(original)}")
    for label, changes in (("BatchNorm re-estimated, lr ~0, 1 epoch", dict(epochs=1, lr=1e-12, momentum=0.0,
                                                                              weight_decay=0.0, freeze_batchnorm=False)),
                           ("lr 1e-3, 3 epochs, BatchNorm frozen", {})):
        tuned = replace(original, model=unfused_network(original))
        fit(tuned, **changes)
        print(f"{label}: mAP@.5 {map50(tuned)}")

    example = calibration_batch([Path(train.images_dir) / image.file_name for image in train.images[:2]], 640)
    pruned, _ = pruned_variant(original, 0.05, example,
                               finetune=lambda d: fit(d, freeze_batchnorm=False))
    print(f"pruned 5%, fine-tuned 3 epochs at lr 1e-3: mAP@.5 {map50(pruned)}")

    untuned, _ = pruned_variant(original, 0.05, example)
    rounded = unfused_network(original)
    report = prune_model(RawHead(rounded), example[:1], PruneConfig(ratio=0.25, importance="l1", round_to=8),
                         ignored_layers=head_output_convs(rounded))
    rounded = fuse_network(rounded)
    print(f"round_to 8, ratio 0.25: {report['mac_ratio_removed']:.0%} of MACs removed, mAP@.5 "
          f"{map50(replace(original, model=rounded))} before fine-tuning")
    x = torch.rand(1, 3, 640, 640)
    models = {"original": original.model, "pruned 5%": untuned.model, "pruned 25% round_to 8": rounded}
    with torch.inference_mode():
        for round_ in range(3):
            times = {}
            for name, model in models.items():
                model(x)
                start = time.perf_counter()
                for _ in range(8):
                    model(x)
                times[name] = (time.perf_counter() - start) / 8 * 1e3
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()))


if __name__ == "__main__":
    main()
