"""The training loop's device handling on a CPU-only machine (the CUDA paths' CPU side) and the
distributed helpers in a single process."""

from __future__ import annotations

import sys

import pytest
import torch

from edgecompress import EdgecompressError, distributed
from edgecompress.runtime import amp_enabled, resolve_device
from edgecompress.train import make_scheduler

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


@needs_no_gpu
def test_device_selection_without_gpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(EdgecompressError, match="train.device='cuda' but no CUDA device is available"):
        resolve_device("cuda")


def test_amp_only_on_cuda() -> None:
    assert not amp_enabled(torch.device("cpu"), True)
    assert amp_enabled(torch.device("cuda"), True) and not amp_enabled(torch.device("cuda"), False)


def test_unknown_schedule_is_an_error() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(EdgecompressError, match="train.schedule='linear' is invalid"):
        make_scheduler(optimizer, schedule="linear", epochs=2, step_size=1, gamma=0.1)


def test_single_process_distributed_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not distributed.under_torchrun() and distributed.world_size() == 1 and distributed.is_main_process()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), batch_size=2)
    assert distributed.shard_loader(loader, seed=0) == (loader, None)
    assert distributed.all_reduce_sum(1.0, 2.0, device=torch.device("cpu")) == [1.0, 2.0]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(model, torch.device("cpu"), sync_batchnorm=True) is model
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda")  # no LOCAL_RANK: unchanged


def test_torchrun_command() -> None:
    single = distributed.torchrun_command(["stages/teacher.py", "--out", "x"], nproc=2)
    assert single[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in single and "--standalone" in single and single[-3:] == ["stages/teacher.py",
                                                                                           "--out", "x"]
    multi = distributed.torchrun_command(["s.py"], nproc=4, nnodes=2, node_rank=1, rdzv_endpoint="node0:29500")
    assert {"--nnodes=2", "--node_rank=1", "--rdzv_endpoint=node0:29500", "--rdzv_backend=c10d"} <= set(multi)
    with pytest.raises(EdgecompressError, match="rdzv_endpoint"):
        distributed.torchrun_command(["s.py"], nproc=2, nnodes=2)


def test_sync_batchnorm_reverts_to_plain_batchnorm() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    model[1].running_mean += 1.5
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    plain = distributed.revert_sync_batchnorm(synced)
    assert type(plain[1]) is torch.nn.BatchNorm2d and torch.equal(plain[1].running_mean, torch.full((4,), 1.5))


def test_class_count_mismatch_is_one_line() -> None:
    """A model trained on 10 classes evaluated on data with 5 (the prepared data changed): one line naming
    both counts, not torchmetrics' "Detected more unique values" traceback (issue 16, finding 4)."""
    from edgecompress.train import evaluate
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    loader = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 4]))]
    with pytest.raises(EdgecompressError) as exc:
        evaluate(model, loader, num_classes=5)
    assert "(10,) outputs per image but the data set has 5 classes" in str(exc.value)
    assert "\n" not in str(exc.value)
