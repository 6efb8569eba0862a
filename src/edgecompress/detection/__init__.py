"""The detection pipeline (`pipelines/detection/`): object detectors evaluated, fine-tuned, compressed
and profiled on a seeded subset of a local COCO / Pascal VOC / YOLO data set.

- `params`: the pipeline's params.yaml schema (`DetectionPipelineParams`);
- `families`: the detector families and the facts the pipeline branches on (light: the schema reads it);
- `data`, `formats`, `source`: the in-memory data set, its COCO/VOC/YOLO readers and writers, and the
  source / subset folders the stages share;
- `models`: the one explicit import of original YOLOv5 checkpoints, `Detector`, and a loader per family;
- `inference`: letterbox, head decoding, NMS and timed evaluation (`evaluate_detector`);
- `metrics`: NMS, COCO mAP (torchmetrics cross-checked with pycocotools), precision / recall / F1;
- `visualize`: images with their ground-truth and predicted boxes drawn;
- `charts`: mAP against time, and the compressed variants' Pareto plot;
- `losses`, `train`: fine-tuning (ultralytics' trainer, or our loop with each family's loss);
- `compress`: ONNX Runtime / OpenVINO FP32 and INT8, pruned (also on those runtimes), FP16 and FX INT8
  variants of a detector;
- `pruning`: Torch-Pruning of YOLO detectors (head kept), its fine-tuning, and the MACs-vs-milliseconds
  summary of the pruned variants;
- `report`: REPORT.md from the metrics files.

The package builds on the core modules (io, config, runtime, plots, markdown, train, prune) and on
`quantize/` and `bench/`; it never imports the chain's schema (`edgecompress.params`) or report, nor
the zoo, and only `stages/` and tests import it. Like every package `__init__` here, this one
imports nothing.
"""
