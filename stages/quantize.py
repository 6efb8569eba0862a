"""Stage `quantize`: every quantized variant of the pruned model as a self-contained artifact
(TorchScript, ONNX or OpenVINO IR, loadable without edgecompress), each reloaded from disk and evaluated
on the test split: accuracy, agreement with FP32, size, quantized vs float layers, settings. Every INT8
variant's drop is also measured on the validation split, where the quality gate (`quantize.gate`)
decides: over `quantize.max_accuracy_drop`, layers fall back to float. Artifacts are built in a staging
folder and moved into place only when every variant passed, so a failed gate leaves the previous ones.

With `train.nproc > 1` the stage runs under torchrun: quantization-aware training is data-parallel
(DistributedDataParallel over the ranks, as in the training stages); rank 0 alone builds the other
variants, measures them and writes every output, the other ranks only join the QAT epochs."""

import os
import tempfile
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from edgecompress import EdgecompressError, distributed
from edgecompress.bench.timing import latency_sweep
from edgecompress.classifier import EVAL_BATCH_SIZE, score_as_step0
from edgecompress.data import load_meta, make_loader
from edgecompress.distill import hard_label_loss
from edgecompress.io import write_json
from edgecompress.models import load_checkpoint
from edgecompress.params import Params
from edgecompress.quantize import fx
from edgecompress.quantize.artifacts import quality_targets
from edgecompress.quantize.common import calibration_tensors
from edgecompress.quantize.config import variant_names
from edgecompress.quantize.gate import build_all_variants, check_gates
from edgecompress.runtime import seed_everything
from edgecompress.stage import log, open_live, read_training_params, run_stage, stage_args
from edgecompress.train import evaluate, fit


def main() -> None:
    args = stage_args(__doc__, {"data": "prepared data directory", "pruned": "pruned checkpoint",
                                "out_dir": "directory for the artifacts", "metrics": "metrics JSON to write",
                                "live": "dvclive directory (QAT curves)"})
    params = read_training_params(args.params, Params)  # train.nproc > 1: re-run under torchrun (QAT data-parallel)
    cfg, recipe, seed = params.quantize.config(), params.train, params.quantize.seed
    meta = load_meta(args.data)
    if cfg.calibration_samples > meta["splits"]["train"]:
        raise EdgecompressError(f"quantize.calibration_samples={cfg.calibration_samples} is invalid: larger than "
                                f"the training split ({meta['splits']['train']} images)")
    seed_everything(seed, deterministic_kernels=False)
    model, _ = load_checkpoint(args.pruned)
    loader = partial(make_loader, args.data, seed=seed)
    calib = calibration_tensors(loader("train", batch_size=cfg.calibration_batch_size, train=False),
                                  cfg.calibration_samples)

    def qat_train(prepared) -> None:  # the shared training loop, observers/BN frozen for the last epochs
        seed_everything(seed, deterministic_kernels=False)  # the same data order whatever was built before it
        def freeze(epoch: int, m) -> None:
            if epoch == cfg.qat_freeze_observer_epoch:
                fx.freeze_qat_observers(m)
            if epoch == cfg.qat_freeze_bn_epoch:
                fx.freeze_qat_bn(m)

        with open_live(args.live, enabled=not distributed.is_helper_rank()) as live:
            fit(prepared, loader("train", batch_size=recipe.batch_size, train=True, augment=asdict(recipe.augment)),
                loader("val", batch_size=EVAL_BATCH_SIZE, train=False), loss_fn=hard_label_loss,
                num_classes=meta["num_classes"], epochs=cfg.qat_epochs, lr=cfg.qat_lr, momentum=recipe.momentum,
                weight_decay=recipe.weight_decay, schedule=recipe.schedule, logger=live, epoch_hook=freeze,
                desc="qat", seed=seed, sync_batchnorm=recipe.sync_batchnorm)

    if distributed.is_helper_rank():  # ranks > 0 take part in the QAT epochs only; rank 0 writes everything
        if "qat" in variant_names(cfg) and cfg.qat_epochs > 0:
            qat_train(fx.prepare_qat(model, calib[:2], backend="x86"))
        return
    evaluate_fn = partial(evaluate, loader=loader("test", batch_size=EVAL_BATCH_SIZE, train=False),
                          num_classes=meta["num_classes"])
    validate_fn = partial(evaluate, loader=loader("val", batch_size=EVAL_BATCH_SIZE, train=False),
                          num_classes=meta["num_classes"])

    def timer(predict) -> float:  # what float layers cost: ms/sample at batch 8, the benchmark's timer
        return latency_sweep(predict, calib[:8], batch_sizes=(8,), warmup=3, repeats=10,
                             min_time_s=0.2)["latency_ms"]["8"]["median"]

    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=args.out_dir) as staging:
        results, gates = build_all_variants(model, staging, calib=calib, config=cfg, qat_train=qat_train,
                                            evaluate_fn=evaluate_fn, validate_fn=validate_fn, timer=timer)
        check_gates(gates, cfg)  # before anything is moved into place
        if "accuracy" in results.get("qat", {}):
            results["qat"]["processes"] = distributed.world_size()  # data-parallel QAT ranks
        for name in os.listdir(staging):
            os.replace(Path(staging, name), Path(args.out_dir, name))
    if not ("qat" in variant_names(cfg) and cfg.qat_epochs > 0):  # DVC requires the declared QAT curves
        with open_live(args.live) as live:
            score_as_step0(model, loader("val", batch_size=EVAL_BATCH_SIZE, train=False),
                           num_classes=meta["num_classes"], device=torch.device("cpu"), amp=False, live=live)
    write_json(args.metrics, {"variants": results, "targets": quality_targets(results), "config": cfg.to_dict()})


if __name__ == "__main__":
    run_stage(main)
