"""Stage `quantize`: every quantized variant of the pruned model as a self-contained artifact
(TorchScript or ONNX, loadable without edgecompress), each reloaded from disk and evaluated on the test
split: accuracy, agreement with FP32, size, quantized vs float layers, settings."""

from dataclasses import asdict
from functools import partial

from edgecompress import EdgecompressError
from edgecompress.data import load_meta, make_loader
from edgecompress.distill import hard_label_loss
from edgecompress.io import file_size_mb, write_json
from edgecompress.models import load_checkpoint
from edgecompress.pipeline import EVAL_BATCH_SIZE, log, read_params, run_stage, stage_args
from edgecompress import quantize as q
from edgecompress.train import evaluate, fit, seed_everything


def qat_epoch_hook(cfg: q.QuantizeConfig):
    def hook(epoch: int, model) -> None:
        if epoch == cfg.qat_freeze_observer_epoch:
            q.freeze_qat_observers(model)
        if epoch == cfg.qat_freeze_bn_epoch:
            q.freeze_qat_bn(model)
    return hook


def main() -> None:
    args = stage_args(__doc__, {"data": "prepared data directory", "pruned": "pruned checkpoint",
                                "out_dir": "directory for the artifacts", "metrics": "metrics JSON to write",
                                "live": "dvclive directory (QAT curves)"})
    params = read_params(args.params)
    cfg, recipe = params.quantize.config(), params.train
    meta = load_meta(args.data)
    if cfg.calibration_samples > meta["splits"]["train"]:
        raise EdgecompressError(f"quantize.calibration_samples={cfg.calibration_samples} is invalid: larger than "
                                f"the training split ({meta['splits']['train']} images)")
    seed_everything(params.quantize.seed)
    model, _ = load_checkpoint(args.pruned)
    loader = partial(make_loader, args.data, seed=params.quantize.seed)
    calib = q.calibration_tensors(loader("train", batch_size=cfg.calibration_batch_size, train=False),
                                  cfg.calibration_samples)
    test_loader = loader("test", batch_size=EVAL_BATCH_SIZE, train=False)
    n = meta["num_classes"]
    fp32 = evaluate(model, test_loader, num_classes=n)
    fp32_ts = q.artifact_path(args.out_dir, "fp32")
    q.save_torchscript(model, calib[:2], fp32_ts, metadata={"variant": "fp32"})
    results = {"fp32": {"accuracy": round(fp32["accuracy"], 6), "size_mb": round(file_size_mb(fp32_ts), 4),
                        "weights_mb": round(q.weights_payload_bytes(fp32_ts) / 1e6, 4)}}

    def qat_train(prepared) -> None:
        from dvclive import Live

        with Live(dir=args.live, save_dvc_exp=False, dvcyaml=None, report=None) as live:
            fit(prepared, loader("train", batch_size=recipe.batch_size, train=True, augment=asdict(recipe.augment)),
                loader("val", batch_size=EVAL_BATCH_SIZE, train=False), loss_fn=hard_label_loss, num_classes=n,
                epochs=cfg.qat_epochs, lr=cfg.qat_lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                schedule=recipe.schedule, logger=live, epoch_hook=qat_epoch_hook(cfg), desc="qat")

    for name in q.variant_names(cfg):
        if name == "qat" and cfg.qat_epochs == 0:
            results[name] = {"skipped": "quantize.qat_epochs is 0"}
            continue
        try:
            path, built = q.build_variant(name, model, calib=calib, config=cfg, out_dir=args.out_dir, qat_train=qat_train)
        except q.BackendUnsupported as exc:
            log.warning("%s skipped: %s", name, exc)
            results[name] = {"skipped": str(exc)}
            continue
        test = evaluate(q.load_artifact(path), test_loader, num_classes=n)  # reloaded from disk, not in-memory
        results[name] = {
            "accuracy": round(test["accuracy"], 6),
            "accuracy_delta_points": round(100 * (test["accuracy"] - fp32["accuracy"]), 3),
            "agreement_with_fp32": round((test["preds"] == fp32["preds"]).float().mean().item(), 6),
            "size_mb": round(file_size_mb(path), 4), "weights_mb": round(q.weights_payload_bytes(path) / 1e6, 4),
            "size_ratio_vs_fp32": round(file_size_mb(path) / results["fp32"]["size_mb"], 4),
            "artifact": path.name, "layers": q.artifact_layer_summary(path, built),
            "settings": q.variant_settings(name, cfg)}
        if name == "onnx_fp32":
            results[name]["max_abs_logit_diff_vs_torch"] = q.onnx_max_abs_diff(path, model, calib[:64])
        log.info("%s: accuracy %.4f (FP32 %.4f), %.3f MB", name, test["accuracy"], fp32["accuracy"],
                 results[name]["size_mb"])
    write_json(args.metrics, {"variants": results, "config": cfg.to_dict()})


if __name__ == "__main__":
    run_stage(main)
