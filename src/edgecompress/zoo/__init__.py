"""The zoo pipeline (pipelines/zoo): pretrained ImageNet classifiers (torchvision's and our
EfficientNet-Lite), offline, measured and quantized on an ImageNet image-folder subset, and one of
them fine-tuned on a new data set.

- `params`: the pipeline's params.yaml schema (`zoo` and `finetune` blocks);
- `weights`: official weight files found locally (never downloaded), loaded, with their metadata;
- `efficientnet_lite`: EfficientNet-Lite0/1/2 as plain modules, their packaged TF checkpoints' key
  mapping, preprocessing and published accuracy;
- `imagenet`: the class list, the image-folder subset, its evaluation/calibration split and the
  preprocessed-image cache;
- `measure`: accuracy with its exact interval, fidelity to FP32, MACs, latency, and the dynamic and
  FX static INT8 analyses (stages zoo_benchmark, zoo_quantize);
- `finetune`: head replacement and freezing for the fine-tuning stage (finetune_cifar100);
- `report`: the plots and REPORT.md, from the metrics files only (stage zoo_report).

It builds on the core modules and on `quantize/` and `bench/`, never on another pipeline. The
package's `__init__` imports nothing, so a stage loads only the modules it uses.
"""
