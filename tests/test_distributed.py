"""Multi-process training (torchrun / DistributedDataParallel, gloo on CPU): the gradient update of
one DDP step equals the single-process one, a 2-process stage run writes its outputs once (rank 0)
with accuracy in the single-process band, and a failure on rank 1 stops both ranks, outputs intact."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import ROOT, TINY_PARAMS, deep_update, tool_env
from edgecompress import distributed
from edgecompress.distill import hard_label_loss
from edgecompress.train import fit

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_problem() -> tuple[nn.Module, TensorDataset]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    data = TensorDataset(torch.randn(8, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    return model, data


def one_step(model: nn.Module, data: TensorDataset) -> dict[str, torch.Tensor]:
    """One epoch = one global batch of all 8 samples through `fit` (SGD, no momentum/decay)."""
    fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8), loss_fn=hard_label_loss,
        num_classes=3, epochs=1, lr=0.5, momentum=0.0, weight_decay=0.0, device="cpu", seed=0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    model, data = tiny_problem()
    state = one_step(model, data)
    if rank == 0:
        torch.save(state, out)
    distributed.destroy()


def test_one_ddp_step_equals_single_process_step(tmp_path: Path) -> None:
    model, data = tiny_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    single = one_step(model, data)
    mp.spawn(ddp_worker, args=(free_port(), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for name in single:
        assert not torch.equal(single[name], before[name]), name  # the step moved every parameter
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6)


def stage(repo: Path, params: Path, name: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**tool_env(), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), "--params", str(params),
                           "--data", "data", "--out", f"{name}.pt", "--metrics", f"{name}.json",
                           "--plots", f"plots-{name}", "--live", f"live-{name}"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def test_two_process_teacher_then_failure_on_rank_1(tmp_path: Path) -> None:
    import yaml

    from edgecompress.data import prepare_dataset

    prepare_dataset(name="digits", root=None, image_size=16, val_fraction=0.15, test_fraction=0.15, max_samples=400,
                    seed=0, out_dir=tmp_path / "data")
    base = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_PARAMS)
    runs = {}
    for nproc in (1, 2):
        params = tmp_path / f"params-{nproc}.yaml"
        params.write_text(yaml.safe_dump(deep_update(base, {"train": {"nproc": nproc}, "teacher": {"epochs": 2}})))
        work = tmp_path / f"run-{nproc}"
        (work / "data").parent.mkdir(parents=True, exist_ok=True)
        (work / "data").symlink_to(tmp_path / "data")
        proc = stage(work, params, "teacher")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[nproc] = (work, json.loads((work / "teacher.json").read_text()))
    work, two = runs[2]
    assert two["processes"] == 2 and runs[1][1]["processes"] == 1
    assert abs(two["accuracy"] - runs[1][1]["accuracy"]) <= 0.15  # same recipe, same global batch
    steps = (work / "live-teacher" / "plots" / "metrics" / "val" / "accuracy.tsv").read_text().splitlines()
    assert len(steps) == 1 + 2  # header + one row per epoch: one writer, not two

    # QAT data-parallel: the quantize stage under torchrun (rank 0 writes, the other rank joins QAT only)
    qat_params = tmp_path / "params-qat.yaml"
    qat_params.write_text(yaml.safe_dump(deep_update(yaml.safe_load((tmp_path / "params-2.yaml").read_text()),
                                                     {"quantize": {"variants": ["qat"], "qat_epochs": 1}})))
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "quantize.py"), "--params", str(qat_params),
                           "--data", "data", "--pruned", "teacher.pt", "--out-dir", "quantized",
                           "--metrics", "quantize.json", "--live", "live-qat"],
                          cwd=work, env={**tool_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    qat = json.loads((work / "quantize.json").read_text())["variants"]["qat"]
    assert qat["processes"] == 2 and abs(qat["accuracy"] - two["accuracy"]) <= 0.15
    assert (work / "quantized" / qat["artifact"]).is_file()
    qat_rows = (work / "live-qat" / "plots" / "metrics" / "val" / "accuracy.tsv").read_text().splitlines()
    assert len(qat_rows) == 1 + 1  # header + one epoch, written once

    before = {p: p.read_bytes() for p in (work / "teacher.json", work / "teacher.pt")}
    failed = stage(work, tmp_path / "params-2.yaml", "teacher", {distributed.FAIL_RANK_ENV: "1"})
    assert failed.returncode != 0
    assert "injected failure on rank 1" in failed.stderr
    assert {p: p.read_bytes() for p in before} == before  # previous outputs intact
