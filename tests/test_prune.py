"""Tests for edgecompress.prune: structured channel pruning of tiny CIFAR ResNets (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgecompress import EdgecompressError, models
from edgecompress.prune import IMPORTANCES, PruneConfig, importance_names, prune_model

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny(width: float = 0.5) -> nn.Module:
    torch.manual_seed(0)
    return models.build_model("resnet20", num_classes=10, width=width)


def calibration(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(n)]


def group_channels(model: nn.Module) -> int:
    """Channels as the pruner counts them: one per dependency group, not per conv.

    In a CIFAR ResNet each stage's residual stream (stem or shortcut conv + every block's conv2) is ONE
    group, and each block's conv1 output is its own group. Global pruning targets this count.
    """
    streams = [model.conv1, model.layer2[0].conv2, model.layer3[0].conv2]
    inner = [b.conv1 for stage in (model.layer1, model.layer2, model.layer3) for b in stage]
    return sum(c.out_channels for c in streams + inner)


def assert_runs(model: nn.Module) -> None:
    model.train()
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_registry() -> None:
    assert importance_names() == ["l1", "l2", "random", "taylor"]
    assert set(IMPORTANCES) == set(importance_names())


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "random"])
def test_prune_half(importance: str) -> None:
    model = tiny()
    cal = calibration() if importance == "taylor" else None
    report = prune_model(model, X, PruneConfig(ratio=0.5, importance=importance), calibration_batches=cal)
    # Widths 8/16/32 halve exactly, so local pruning removes exactly half of every conv's channels.
    assert report["channel_ratio_removed"] == pytest.approx(0.5, abs=0.02)
    # 3x3 convs lose half their inputs AND outputs -> (1 - r)^2 = 0.25 kept; the stem conv, BN and
    # the classifier's weight only scale by (1 - r) (fc bias not at all), so the total sits just
    # below 0.75 (measured 0.745); 0.70 leaves room for those single-sided layers.
    assert 0.70 < report["param_ratio_removed"] <= 0.75 + 1e-9
    assert report["mac_ratio_removed"] > 0.70
    assert report["params_after"] == models.count_params(model)
    assert report["steps"] == 1 and report["config"]["importance"] == importance
    assert model.fc.out_features == 10
    assert model.training  # mode restored (build_model returns train mode)
    assert all(p.grad is None for p in model.parameters())
    assert_runs(model)


def test_taylor_needs_batches() -> None:
    with pytest.raises(EdgecompressError, match="taylor"):
        prune_model(tiny(), X, PruneConfig(ratio=0.5, importance="taylor"))
    with pytest.raises(EdgecompressError, match="taylor"):
        prune_model(tiny(), X, PruneConfig(ratio=0.5, importance="taylor"), calibration_batches=[])


def test_global_pruning() -> None:
    model = tiny()
    before = group_channels(model)
    report = prune_model(model, X, PruneConfig(ratio=0.5, global_pruning=True))
    # The global threshold removes int-exact 50% of the group channels (ties aside).
    assert 1 - group_channels(model) / before == pytest.approx(0.5, abs=0.01)
    # Per-conv count weights residual streams by their number of convs, so it drifts a little.
    assert report["channel_ratio_removed"] == pytest.approx(0.5, abs=0.05)
    # Global ranking is uneven across layers (that is its point): not every block keeps exactly half.
    stages = zip((model.layer1, model.layer2, model.layer3), (8, 16, 32))
    assert {b.conv1.out_channels / width for stage, width in stages for b in stage} != {0.5}
    assert model.fc.out_features == 10
    assert_runs(model)


@pytest.mark.parametrize("importance", ["l1", "taylor"])
def test_iterative_steps(importance: str) -> None:
    model = tiny()
    # A one-shot generator: prune_model must materialise it to re-use it at every step.
    cal = (b for b in calibration()) if importance == "taylor" else None
    report = prune_model(model, X, PruneConfig(ratio=0.5, importance=importance, iterative_steps=3),
                         calibration_batches=cal)
    assert report["steps"] == 3
    assert report["channel_ratio_removed"] == pytest.approx(0.5, abs=0.02)
    assert model.fc.out_features == 10
    assert_runs(model)


def test_ratio_zero_is_noop() -> None:
    model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_model(model, X, PruneConfig(ratio=0.0))
    assert report["params_after"] == report["params_before"] and report["macs_after"] == report["macs_before"]
    assert report["channel_ratio_removed"] == 0.0 and report["steps"] == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_round_to() -> None:
    model = tiny(width=1.0)
    prune_model(model, X, PruneConfig(ratio=0.2, round_to=4))
    assert all(m.out_channels % 4 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    # A group that rounding would empty (8 channels, round_to=16) is left whole, not broken.
    small = tiny(width=0.5)
    prune_model(small, X, PruneConfig(ratio=0.2, round_to=16))
    assert small.conv1.out_channels == 8
    assert_runs(small)


def test_eval_mode_restored_and_bn_stats_untouched() -> None:
    model = tiny().eval()
    with torch.no_grad():
        model.bn1.running_mean.copy_(torch.arange(8.0))
    prune_model(model, X, PruneConfig(ratio=0.5))
    assert not model.training
    # Tracing ran in eval mode: the 4 surviving channels keep exactly their old running means.
    kept = model.bn1.running_mean.tolist()
    assert len(kept) == 4 and set(kept) <= set(range(8)) and len(set(kept)) == 4


def test_checkpoint_roundtrip(tmp_path) -> None:
    model = tiny()
    prune_model(model, X, PruneConfig(ratio=0.5, importance="random"))
    path = tmp_path / "pruned.pt"
    models.save_checkpoint(path, model, arch=models.arch_config("resnet20", 10, 0.5, True), meta={})
    loaded, info = models.load_checkpoint(path)
    model.eval()
    batch = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))
    assert models.count_params(loaded) == models.count_params(model)
    assert info["arch"]["name"] == "resnet20"


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"ratio": -0.1}, "ratio=-0.1 is invalid"),
        ({"ratio": 1.0}, "ratio=1.0 is invalid"),
        ({"importance": "foo"}, "importance='foo' is invalid"),
        ({"iterative_steps": 0}, "iterative_steps=0 is invalid"),
        ({"round_to": 0}, "round_to=0 is invalid"),
        ({"global_pruning": "yes"}, "global='yes' is invalid"),  # named as in params.yaml
        ({"ratios": {"layer1": 1.0}}, "ratios.layer1=1.0 is invalid"),
        ({"target": {"kind": "time"}}, "target.kind='time' is invalid"),
        ({"target": {"kind": "latency"}}, "target.value=None is invalid"),
        ({"target": {"kind": "ratio", "value": 0.5}}, "target.value=0.5 is invalid"),
    ],
)
def test_config_validation(kwargs: dict, key: str) -> None:
    with pytest.raises(EdgecompressError) as exc:
        PruneConfig(**kwargs)
    message = str(exc.value)
    assert key in message and "\n" not in message
    if key.startswith("importance"):
        assert "l1, l2, random, taylor" in message


def test_config_to_dict() -> None:
    assert PruneConfig().to_dict() == {
        "ratio": 0.2, "ratios": None, "importance": "l1", "global": False, "iterative_steps": 1, "round_to": None,
        "target": {"kind": "ratio", "value": None},
    }


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_multiples_and_reload(round_to: int, tmp_path) -> None:
    model = tiny(width=1.0)  # widths 16/32/64
    report = prune_model(model, X, PruneConfig(ratio=0.3, round_to=round_to))
    assert all(m.out_channels % round_to == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert report["not_multiple_of_round_to"] == {}
    path = tmp_path / "pruned.pt"
    models.save_checkpoint(path, model, arch=models.arch_config("resnet20", 10, 1.0, True), meta={})
    loaded, _ = models.load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(model.eval()(X), loaded(X))
    # the stem stream of a width-0.25 net has 4 channels: fewer than 8, left whole and named
    small = tiny(width=0.25)
    report = prune_model(small, X, PruneConfig(ratio=0.3, round_to=8))
    assert report["not_multiple_of_round_to"]["conv1"] == 4


def fake_latency(model: nn.Module) -> dict[str, float]:
    """A timer that is the conv channel count: falls with every step, deterministic."""
    return {"latency_ms": float(sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)))}


def test_latency_target_stops_at_first_step_that_meets_it() -> None:
    model = tiny()
    unpruned = fake_latency(model)["latency_ms"]
    calls = []
    config = PruneConfig(ratio=0.6, iterative_steps=6, target={"kind": "latency", "value": 0.8})
    report = prune_model(model, X, config, latency_probe=lambda m: calls.append(1) or fake_latency(m),
                         accuracy_probe=lambda m: {"val_accuracy": 0.5})
    records = report["step_records"]
    fractions = [r["latency_ms"] / unpruned for r in records]
    # stopped at the first step at or under 0.8, every earlier step above it, and each step recorded
    assert fractions[-1] <= 0.8 and all(f > 0.8 for f in fractions[1:-1])
    assert report["steps"] == len(records) - 1 < 6 and len(calls) == len(records)
    assert [r["step"] for r in records] == list(range(len(records)))
    assert all({"params", "macs", "latency_ms", "val_accuracy"} <= set(r) for r in records)
    assert report["target_met"] is True and report["macs_after"] == records[-1]["macs"]


def test_macs_target_and_missed_target() -> None:
    report = prune_model(tiny(), X, PruneConfig(ratio=0.5, iterative_steps=5, target={"kind": "macs", "value": 0.7}))
    assert report["macs_after"] <= 0.7 * report["macs_before"] and report["steps"] < 5
    missed = prune_model(tiny(), X, PruneConfig(ratio=0.1, iterative_steps=2, target={"kind": "macs", "value": 0.3}))
    assert missed["target_met"] is False and missed["steps"] == 2  # ran every step, said it missed
    with pytest.raises(EdgecompressError, match="latency probe"):
        prune_model(tiny(), X, PruneConfig(ratio=0.5, target={"kind": "latency", "value": 0.5}))


def test_per_prefix_ratios() -> None:
    model = tiny()  # widths 8/16/32
    prune_model(model, X, PruneConfig(ratio=0.0, ratios={"layer3": 0.5}))
    assert model.layer3[1].conv1.out_channels == 16 and model.layer2[1].conv1.out_channels == 16
    assert model.layer1[0].conv1.out_channels == 8
    with pytest.raises(EdgecompressError, match="layer9"):
        prune_model(tiny(), X, PruneConfig(ratios={"layer9": 0.5}))


def test_project_target_ratio_02() -> None:
    """params.yaml default: 20% of channels must cut at least 30% of MACs (resnet20, width 1.0)."""
    report = prune_model(tiny(width=1.0), X, PruneConfig(ratio=0.2, importance="l1"))
    # Each group keeps int(n * 0.8) channels, so removal is in [r, r + 1/n) with n >= 16 here.
    assert 0.2 <= report["channel_ratio_removed"] < 0.2 + 1 / 16
    # Both sides of a 3x3 conv shrink: MACs ~ 1 - 0.8^2 = 0.36 (measured 0.396).
    assert report["mac_ratio_removed"] >= 0.30


def test_depthwise_counts_that_send_fx_int8_to_its_slow_path_are_named() -> None:
    from edgecompress.prune import slow_int8_depthwise
    from edgecompress.report.chain_pruning import pruning_lines

    def dw(channels: int) -> nn.Conv2d:
        return nn.Conv2d(channels, channels, 3, groups=channels)

    model = nn.Sequential(dw(121), dw(120), dw(100), nn.Conv2d(121, 121, 1), nn.Conv2d(242, 242, 3, groups=2))
    assert slow_int8_depthwise(model) == ["0"]  # 120: a multiple of 8; 100: under 113; the others are not depthwise
    prune = {"accuracy": 0.9, "fx_int8_slow_depthwise": ["features.3.conv.1.0"]}
    notes: list[str] = []
    pruning_lines(prune, {}, "1", notes)
    assert "`features.3.conv.1.0`" in notes[0] and "`prune.round_to: 8` avoids it" in notes[0]
    notes.clear()
    pruning_lines({"accuracy": 0.9, "fx_int8_slow_depthwise": []}, {}, "1", notes)
    assert not any("depthwise" in note for note in notes)
