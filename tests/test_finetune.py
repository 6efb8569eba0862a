"""Fine-tuning: head replacement, freezing (parameters and BatchNorm statistics), checkpoint round trip,
errors, and the `finetune_cifar100` stage end to end on a tiny CIFAR-100-format data set."""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from conftest import ROOT, run
from edgecompress import EdgecompressError
from edgecompress.transfer import freeze_except, replace_head, unfreeze_batchnorm
from edgecompress.zoo.finetune import finetune_architectures, pretrained_classifier, resolve_finetune_weights
from edgecompress.models import load_checkpoint, save_checkpoint

STAGE = ROOT / "stages" / "finetune_cifar100.py"
RANDOM_LABEL = "random (untrained, smoke run only)"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def random_resnet18(num_classes: int, prefixes: list[str]) -> nn.Module:
    torch.manual_seed(0)
    model, _, _ = pretrained_classifier("resnet18", num_classes, train_prefixes=prefixes, weights="random")
    return model


def sgd_step(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                weight_decay=5e-4)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


# ------------------------------------------------------------------------------------------- freezing
def test_one_step_moves_only_the_trained_stages() -> None:
    model = random_resnet18(10, ["layer4", "fc"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen_bn = [name for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen_bn) == 15 and not any(name.startswith("layer4") for name in frozen_bn)  # 20 BN, 5 in layer4
    sgd_step(model)
    after = model.state_dict()
    for name, param in model.named_parameters():
        trains = name.startswith(("layer4.", "fc."))
        assert param.requires_grad == trains, name
        assert torch.equal(after[name], before[name]) != trains, name  # frozen unchanged, trained moved
    for name in frozen_bn:  # frozen BatchNorm: affine values AND running statistics unchanged
        for key in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(after[f"{name}.{key}"], before[f"{name}.{key}"]), f"{name}.{key}"
    # the trained stage's BatchNorm is ordinary: its statistics do move in train mode
    assert isinstance(model.layer4[0].bn1, nn.BatchNorm2d)
    assert not torch.equal(after["layer4.0.bn1.running_mean"], before["layer4.0.bn1.running_mean"])


def test_counts_and_prefix_boundaries() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer4 = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
            self.layer40 = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
            self.fc = nn.Linear(4, 2)

    net = Net()
    counts = freeze_except(net, ["layer4", "fc.weight"])
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "layer4.0.weight", "layer4.0.bias", "layer4.1.weight", "layer4.1.bias", "fc.weight"]
    assert counts == {"trainable_params": 12 + 4 + 4 + 4 + 8, "frozen_params": 12 + 4 + 4 + 4 + 2,
                      "frozen_batchnorm_layers": 1}
    assert isinstance(net.layer40[1], FrozenBatchNorm2d) and isinstance(net.layer4[1], nn.BatchNorm2d)


@pytest.mark.parametrize("prefix", ["layer5", "layer", "fc.bias.x", ""])
def test_prefix_matching_nothing_is_one_line_error(prefix: str) -> None:
    with pytest.raises(EdgecompressError) as info:
        random_resnet18(10, ["fc", prefix])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"finetune.train_stages: {prefix!r} matches no parameter of ResNet")
    assert "conv1, bn1, layer1, layer2, layer3, layer4, fc" in message


def test_frozen_head_and_unknown_arch_are_errors() -> None:
    with pytest.raises(EdgecompressError, match=r"leaves the new 10-way head 'fc' frozen .*add 'fc'"):
        random_resnet18(10, ["layer4"])
    with pytest.raises(EdgecompressError, match=r"^finetune\.arch='resnet20' is invalid: allowed: "
                                                r"efficientnet_b0, mobilenet_v2, .*resnet50$"):
        resolve_finetune_weights("resnet20", "random", None)
    assert finetune_architectures() == ["efficientnet_b0", "mobilenet_v2", "mobilenet_v3_large",
                                        "mobilenet_v3_small", "resnet18", "resnet34", "resnet50"]


# ----------------------------------------------------------------------------------------------- head
@pytest.mark.parametrize("num_classes", [100, 7])
@pytest.mark.parametrize(("arch", "head", "prefixes"), [
    ("resnet18", "fc", ["fc"]),
    ("mobilenet_v3_small", "classifier.3", ["classifier.3"]),
])
def test_head_has_num_classes_outputs(arch: str, head: str, prefixes: list[str], num_classes: int) -> None:
    model, arch_entry, summary = pretrained_classifier(arch, num_classes, train_prefixes=prefixes, weights="random")
    assert model.get_submodule(head).out_features == num_classes and summary["head"] == head
    assert arch_entry == {"name": arch, "num_classes": num_classes, "width": 1.0, "small_input": False}
    assert summary["weights"] == RANDOM_LABEL and summary["weights_file"] is None and not summary["pretrained"]
    assert summary["trainable_params"] == sum(p.numel() for p in model.get_submodule(head).parameters())
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)


def test_replace_head_keeps_the_rest_of_the_classifier() -> None:
    model = replace_head(torchvision.models.mobilenet_v3_small(weights=None), 7)
    assert model.classifier[0].out_features == 1024 and model.classifier[3].in_features == 1024
    assert model.classifier[3].out_features == 7


def test_pretrained_weights_are_loaded_below_the_head() -> None:
    try:
        resolved = resolve_finetune_weights("mobilenet_v2", "pretrained", None)
    except EdgecompressError as exc:
        pytest.skip(f"no offline mobilenet_v2 weights: {exc}")
    model, _, summary = pretrained_classifier("mobilenet_v2", 100, train_prefixes=["classifier"], resolved=resolved)
    state = torch.load(resolved.path, map_location="cpu", weights_only=True)
    assert torch.equal(model.features[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(model.features[18][1].running_var, state["features.18.1.running_var"])
    assert summary["pretrained"] and summary["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert summary["weights_file"] == str(resolved.path)


# -------------------------------------------------------------------------------------------- checkpoint
def test_checkpoint_round_trip_after_unfreeze(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial statistics, so a lost value would show
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 2)
        model.bn1.num_batches_tracked.fill_(7)
    original = {k: v.clone() for k, v in model.bn1.state_dict().items()}
    replace_head(model, 10)
    freeze_except(model, ["layer4", "fc"])
    sgd_step(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        frozen_logits = model.eval()(x)
        plain = unfreeze_batchnorm(model)
        assert plain is model and not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
        assert not model.training and all(not p.requires_grad for p in model.bn1.parameters())
        assert all(torch.equal(model.bn1.state_dict()[k], v) for k, v in original.items())
        plain_logits = model(x)
        assert torch.allclose(plain_logits, frozen_logits, atol=1e-5)
        save_checkpoint(tmp_path / "ft.pt", model, {"name": "resnet18", "num_classes": 10, "width": 1.0,
                                                    "small_input": False}, meta={})
        loaded, info = load_checkpoint(tmp_path / "ft.pt")  # strict load into the plain architecture
        assert torch.equal(loaded(x), plain_logits)


# ------------------------------------------------------------------------------------------------- stage
def write_cifar100(root: Path, num_classes: int, train_per_class: int, test_per_class: int) -> Path:
    """The official python-pickle layout (<root>/cifar-100-python/{train,test,meta}) with tiny content."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [c for c in range(num_classes) for _ in range(per_class)]
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * len(labels)}, handle)
    with (folder / "meta").open("wb") as handle:
        pickle.dump({b"fine_label_names": [f"class{c}".encode() for c in range(num_classes)],
                     b"coarse_label_names": [b"all"]}, handle)
    return root


def write_zoo_params(workdir: Path, finetune: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump({"finetune": finetune}))


STAGE_ARGS = ["--params", "params.yaml", "--data", "data/finetune", "--out", "models/finetune_cifar100.pt",
              "--metrics", "metrics/finetune_cifar100.json", "--plots", "plots/finetune_cifar100",
              "--live", "dvclive/finetune_cifar100"]


def run_stage_in_process(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("finetune_cifar100_stage", STAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", [str(STAGE), *STAGE_ARGS])
    module.main()


def test_stage_missing_cifar_root_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "zoo"
    write_zoo_params(work, {"weights": "random", "data": {"name": "cifar100", "root": str(tmp_path / "nope")}})
    with pytest.raises(EdgecompressError, match=r"data\.root='.*nope': not found; cifar100 expects "
                                                r"<root>/cifar-100-python/\{train,test,meta\}"):
        run_stage_in_process(work, monkeypatch)
    assert not (work / "data").exists() and not (work / "models").exists()


def test_stage_missing_weights_fail_before_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "zoo"
    write_cifar100(tmp_path / "raw", 2, 3, 1)
    write_zoo_params(work, {"arch": "resnet18", "weights": "pretrained", "weights_dir": str(tmp_path / "empty"),
                            "data": {"name": "cifar100", "root": str(tmp_path / "raw")}})
    with pytest.raises(EdgecompressError, match=r"pretrained weights not found .*resnet18-f37072fd\.pth"):
        run_stage_in_process(work, monkeypatch)
    assert not (work / "data").exists()


def test_stage_end_to_end_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "pipelines" / "zoo"
    # 20 classes keep it fast on 2 CPU cores (the loader takes the class count from the meta file);
    # 100-way heads are covered above.
    write_cifar100(tmp_path / "raw", num_classes=20, train_per_class=3, test_per_class=1)
    write_zoo_params(work, {
        "arch": "resnet18", "weights": "random", "train_stages": ["layer4", "fc"], "epochs": 1, "seed": 0,
        "data": {"name": "cifar100", "root": str(tmp_path / "raw"), "val_fraction": 0.34},
        "train": {"device": "cpu", "batch_size": 16, "amp": False,
                  "augment": {"hflip": True, "rotation": 0.0, "random_erasing": 0.5}},
    })
    # one intra-op thread: on a shared 2-core machine a busy core slows 2-thread convolutions many-fold
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run([sys.executable, str(STAGE), *STAGE_ARGS], work, timeout=300)

    meta = json.loads((work / "data" / "finetune" / "meta.json").read_text())
    assert meta["num_classes"] == 20 and meta["classes"][3] == "class3" and meta["splits"]["test"] == 20
    assert meta["splits"]["train"] + meta["splits"]["val"] == 60 and min(meta["class_counts"]["train"]) >= 1
    metrics = json.loads((work / "metrics" / "finetune_cifar100.json").read_text())
    assert metrics["weights"] == RANDOM_LABEL and metrics["weights_file"] is None and not metrics["pretrained"]
    assert metrics["arch"] == "resnet18" and metrics["epochs"] == 1 and metrics["train_stages"] == ["layer4", "fc"]
    assert metrics["frozen_batchnorm_layers"] == 15 and metrics["trainable_params"] > 0
    assert metrics["trainable_params"] + metrics["frozen_params"] == metrics["params"]
    assert 0 <= metrics["accuracy"] <= 1 and metrics["macs"] > 0 and metrics["size_mb"] > 0
    model, info = load_checkpoint(work / "models" / "finetune_cifar100.pt")
    assert info["arch"]["small_input"] is False and info["meta"]["stage"] == "finetune_cifar100"
    assert model.fc.out_features == 20
    for plot in ("training_curves", "confusion_matrix", "samples"):
        assert (work / "plots" / "finetune_cifar100" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG", plot
    assert (work / "dvclive" / "finetune_cifar100" / "metrics.json").is_file()
