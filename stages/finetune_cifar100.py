"""Stage `finetune_cifar100`: fine-tune a pretrained torchvision classifier (default ResNet18) on
CIFAR-100 (or any data set in the `finetune.data` block): fresh head, `finetune.train_stages` trained,
the rest frozen (BatchNorm statistics included); keep the best-validation checkpoint."""

from edgecompress import EdgecompressError
from edgecompress.classifier import TRAIN_STAGE_PATHS, train_classifier
from edgecompress.data import prepare_dataset
from edgecompress.runtime import seed_everything
from edgecompress.stage import read_params, run_stage, stage_args
from edgecompress.transfer import unfreeze_batchnorm
from edgecompress.zoo.finetune import pretrained_classifier, resolve_finetune_weights
from edgecompress.zoo.params import FinetunePipelineParams

STAGE = "finetune_cifar100"


def main() -> None:
    args = stage_args(__doc__, {**TRAIN_STAGE_PATHS, "data": "directory for the prepared split cache (written)"})
    ft = read_params(args.params, FinetunePipelineParams).finetune
    if ft.train.nproc > 1:
        raise EdgecompressError(f"finetune.train.nproc={ft.train.nproc} is invalid: this stage trains in one process "
                                "(its data preparation is not shared between ranks yet); use 1")
    resolved = resolve_finetune_weights(ft.arch, ft.weights, ft.weights_dir)  # before any data work
    data = ft.data
    meta = prepare_dataset(name=data.name, root=data.root, image_size=data.image_size,
                           val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                           max_samples=data.max_samples, seed=data.seed, out_dir=args.data)
    seed_everything(ft.seed)  # the new head's initialisation
    model, arch, summary = pretrained_classifier(ft.arch, meta["num_classes"], train_prefixes=ft.train_stages,
                                                 resolved=resolved)
    train_classifier(stage=STAGE, prepared_dir=args.data, model=model, arch=arch, epochs=ft.epochs, seed=ft.seed,
                     recipe=ft.train, checkpoint_out=args.out, metrics_out=args.metrics, plots_dir=args.plots,
                     live_dir=args.live, before_save=unfreeze_batchnorm,  # saved as the plain architecture
                     extra_metrics={**summary, "data": meta["name"], "image_size": meta["image_size"]})


if __name__ == "__main__":
    run_stage(main)
