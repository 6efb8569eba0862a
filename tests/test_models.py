"""Model registry, checkpoint round trip and statistics."""

import pytest
import torch

from edgecompress import EdgecompressError
from edgecompress.io import save_torch
from edgecompress.models import (arch_config, build_model, count_layer_macs, count_params, load_checkpoint,
                                 save_checkpoint)


@pytest.mark.parametrize("name,width", [("resnet20", 0.5), ("resnet32", 1.0), ("resnet18", 1.0),
                                        ("mobilenet_v2", 1.0)])
def test_registry_models_map_32px_images_to_logits(name, width):
    model = build_model(name, num_classes=7, width=width, small_input=True).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_cifar_resnet_sizes_match_the_paper():
    # He et al. 2016, Table 6: ResNet-20 0.27M, ResNet-56 0.85M parameters (projection shortcuts add a little).
    assert 0.26e6 < count_params(build_model("resnet20", 10)) < 0.30e6
    assert 0.84e6 < count_params(build_model("resnet56", 10)) < 0.90e6
    assert 39e6 < count_layer_macs(build_model("resnet20", 10), (3, 32, 32)) < 43e6


def test_width_multiplier_shrinks_the_model():
    assert count_params(build_model("resnet20", 10, width=0.5)) < count_params(build_model("resnet20", 10)) / 3


def test_unknown_arch_lists_allowed_names():
    with pytest.raises(EdgecompressError, match="allowed: .*resnet20"):
        build_model("resnet7", 10)


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20", 10, width=0.5).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, arch_config("resnet20", 10, 0.5, True), meta={"classes": ["a"]})
    restored, info = load_checkpoint(path)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), restored(x))
    assert info["meta"]["classes"] == ["a"] and info["arch"]["name"] == "resnet20"


def test_incompatible_checkpoint_names_the_file(tmp_path):
    model = build_model("resnet20", 10, width=0.5)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, arch_config("resnet32", 10, 0.5, True), meta={})  # wrong arch on purpose
    with pytest.raises(EdgecompressError, match="m.pt.*do not match"):
        load_checkpoint(path)


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "other.pt"
    save_torch(path, {"weights": torch.ones(2)})
    with pytest.raises(EdgecompressError, match="not an edgecompress checkpoint"):
        load_checkpoint(path)


def test_flipped_bytes_in_tensor_data_are_refused(tmp_path):
    """16 bytes flipped inside a weight tensor unpickle fine (torch checks no checksum): the sha256 recorded
    at save time catches them (issue 16, finding 1)."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10, width=0.5).eval()
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, model, arch_config("resnet20", 10, 0.5, True), meta={})
    raw = bytearray(path.read_bytes())
    weight = model.layer3[0].conv2.weight.detach().numpy().tobytes()
    start = raw.find(weight) + len(weight) // 2
    assert start > len(weight) // 2  # the tensor's bytes are stored as they are
    raw[start:start + 16] = bytes(b ^ 0xFF for b in raw[start:start + 16])
    path.write_bytes(bytes(raw))
    with pytest.raises(EdgecompressError, match="teacher.pt: weights do not match the sha256"):
        load_checkpoint(path)


def test_checkpoint_without_arch_is_one_line(tmp_path):
    from edgecompress.models import CHECKPOINT_FORMAT
    path = tmp_path / "noarch.pt"
    save_torch(path, {"format": CHECKPOINT_FORMAT, "state_dict": {}, "meta": {}})
    with pytest.raises(EdgecompressError) as exc:
        load_checkpoint(path)
    assert "noarch.pt: checkpoint lacks arch" in str(exc.value) and "\n" not in str(exc.value)
