"""Multi-process training on PyTorch's own engine: torchrun launches the ranks, DistributedDataParallel
averages their gradients, `gloo` on CPU and `nccl` on CUDA.

A training stage stays one command for users (`dvc repro`, `dvc exp run -S train.nproc=2`): when
`train.nproc > 1` and the process was not started by torchrun, `relaunch_under_torchrun` re-runs the
same command line under `python -m torch.distributed.run` and exits with its status. torchrun stops
every rank when one fails and reports the failing rank's error; since outputs are written only at the
end, by rank 0, and atomically, a failed run leaves the previous outputs as they were.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from edgecompress import EdgecompressError

log = logging.getLogger(__name__)

FAIL_RANK_ENV = "EDGECOMPRESS_FAIL_RANK"  # fault injection for tests: this rank raises after its first step


def under_torchrun() -> bool:
    """True in a process that torchrun (or another launcher setting the env protocol) started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(argv: list[str], *, nproc: int, nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: str | None = None) -> list[str]:
    """`python -m torch.distributed.run ... <script> <args>` for `argv` (sys.argv of the stage)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise EdgecompressError("train.nnodes > 1 needs train.rdzv_endpoint (host:port of node 0)")
        command += [f"--node_rank={node_rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}"]
    else:
        command += ["--standalone"]
    return command + list(argv)


def relaunch_under_torchrun(train: Any, argv: list[str] | None = None) -> None:
    """With `train.nproc > 1` outside torchrun: run this stage's command line under torchrun and exit
    with its status (never returns). Otherwise return and let the caller train in this process."""
    if train.nproc <= 1 or under_torchrun():
        return
    command = torchrun_command(argv or sys.argv, nproc=train.nproc, nnodes=train.nnodes,
                               node_rank=train.node_rank, rdzv_endpoint=train.rdzv_endpoint)
    log.info("train.nproc=%d: relaunching under torchrun: %s", train.nproc, " ".join(command))
    sys.exit(subprocess.run(command, check=False).returncode)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_helper_rank() -> bool:
    """A torchrun rank other than 0, known from the launcher's environment before any process group
    exists (stages whose main work is not training use it to join only the training part)."""
    return under_torchrun() and int(os.environ.get("RANK", "0")) != 0


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, metrics, plots and logs."""
    return rank() == 0


def init_process_group(device: torch.device) -> None:
    """Join the torchrun job (no-op outside torchrun): `nccl` on CUDA (one GPU per local rank), `gloo` on CPU."""
    if not under_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=backend)
    log.info("rank %d/%d joined (%s)", dist.get_rank(), dist.get_world_size(), backend)


def local_device(device: torch.device) -> torch.device:
    """This rank's device: cuda:<LOCAL_RANK> on CUDA, the CPU otherwise."""
    if device.type == "cuda" and under_torchrun():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def wrap_model(model: nn.Module, device: torch.device, *, sync_batchnorm: bool) -> nn.Module:
    """DistributedDataParallel around `model` when several ranks train; the model itself otherwise.
    With `sync_batchnorm`, BatchNorm statistics are computed over the global batch (what a single
    process with the same batch size would see) instead of each rank's share."""
    if world_size() == 1:
        return model
    if sync_batchnorm and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_batchnorm and is_main_process():
        log.info("train.sync_batchnorm: SyncBatchNorm needs CUDA; on CPU each rank normalises its own share "
                 "of the batch")
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def revert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """SyncBatchNorm layers back to BatchNorm2d with the same state (in place), so the trained model
    is the plain architecture again for evaluation, statistics and saving."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats).to(child.weight.device if child.affine else "cpu")
            plain.load_state_dict(child.state_dict())
            plain.train(child.training)
            setattr(model, name, plain)
        else:
            revert_sync_batchnorm(child)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def shard_loader(loader: torch.utils.data.DataLoader, seed: int) -> tuple[torch.utils.data.DataLoader, Any]:
    """The training loader split across ranks: a DistributedSampler (shuffled per epoch from `seed`)
    and a per-rank batch of batch_size / world_size, so the global batch equals the single-process one.

    Returns:
        (loader, sampler) - call sampler.set_epoch(epoch) before each epoch; (loader, None) alone.
    """
    ranks = world_size()
    if ranks == 1:
        return loader, None
    if loader.batch_size % ranks:
        raise EdgecompressError(f"train.batch_size={loader.batch_size} is invalid with train.nproc={ranks}: "
                                "must be divisible by the number of processes (the global batch is kept)")
    sampler = torch.utils.data.DistributedSampler(loader.dataset, num_replicas=ranks, rank=rank(), shuffle=True,
                                                  seed=seed)
    sharded = torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size // ranks, sampler=sampler,
                                          num_workers=loader.num_workers, drop_last=False)
    return sharded, sampler


def all_reduce_sum(*values: float, device: torch.device) -> list[float]:
    """Sum numbers over the ranks (train loss, correct and seen counts); unchanged in one process."""
    if world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def maybe_fail(step: int) -> None:
    """Fault injection for the failure test: the rank named in $EDGECOMPRESS_FAIL_RANK raises."""
    target = os.environ.get(FAIL_RANK_ENV)
    if target is not None and world_size() > 1 and rank() == int(target) and step >= 1:
        raise RuntimeError(f"injected failure on rank {rank()} ({FAIL_RANK_ENV}={target})")


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
