"""Stage `quantize`: every quantized variant of the pruned model as a self-contained artifact
(TorchScript or ONNX, loadable without edgecompress), each reloaded from disk and evaluated on the test
split: accuracy, agreement with FP32, size, quantized vs float layers, settings.

With `train.nproc > 1` the stage runs under torchrun: quantization-aware training is data-parallel
(DistributedDataParallel over the ranks, as in the training stages); rank 0 alone builds the other
variants, measures them and writes every output, the other ranks only join the QAT epochs."""

from dataclasses import asdict
from functools import partial

from edgecompress import EdgecompressError, distributed
from edgecompress.classifier import EVAL_BATCH_SIZE
from edgecompress.data import load_meta, make_loader
from edgecompress.distill import hard_label_loss
from edgecompress.io import file_size_mb, write_json
from edgecompress.models import load_checkpoint
from edgecompress.params import Params
from edgecompress.quantize import fx
from edgecompress.quantize.artifacts import (artifact_path, build_variant, max_abs_logit_diff, measure_variant,
                                             quality_targets, weights_payload_bytes)
from edgecompress.quantize.common import BackendUnsupported, calibration_tensors
from edgecompress.quantize.config import VARIANTS, variant_names
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
    fp32 = evaluate_fn(model)
    fp32_path = artifact_path(args.out_dir, "fp32")
    fx.save_torchscript(model, calib[:2], fp32_path, metadata={"variant": "fp32"})
    fp32_mb = file_size_mb(fp32_path)
    results = {"fp32": {"accuracy": round(fp32["accuracy"], 6), "size_mb": round(fp32_mb, 4),
                        "weights_mb": round(weights_payload_bytes(fp32_path) / 1e6, 4), "artifact": fp32_path.name}}

    for name in variant_names(cfg):
        if name == "qat" and cfg.qat_epochs == 0:
            results[name] = {"skipped": "quantize.qat_epochs is 0"}
            continue
        try:
            variant = build_variant(name, model, calib=calib, config=cfg, out_dir=args.out_dir, qat_train=qat_train)
        except BackendUnsupported as exc:
            log.warning("%s skipped: %s", name, exc)
            results[name] = {"skipped": str(exc)}
            continue
        results[name] = measure_variant(variant, evaluate_fn=evaluate_fn, fp32=fp32, fp32_size_mb=fp32_mb)
        if name == "qat":
            results[name]["processes"] = distributed.world_size()  # data-parallel QAT ranks
        if VARIANTS[name].fp32:  # an FP32 export must compute what the torch model computes
            results[name]["max_abs_logit_diff_vs_torch"] = max_abs_logit_diff(variant.path, model, calib[:64])
        log.info("%s: accuracy %.4f (FP32 %.4f), %.3f MB", name, results[name]["accuracy"], fp32["accuracy"],
                 results[name]["size_mb"])
    write_json(args.metrics, {"variants": results, "targets": quality_targets(results), "config": cfg.to_dict()})


if __name__ == "__main__":
    run_stage(main)
