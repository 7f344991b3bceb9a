"""One run on several processes, as `torchrun --nproc-per-node N -m bench run ...` starts them.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; we join the process group it describes (NCCL on GPUs, gloo
on CPU), wrap the model in DistributedDataParallel, give each rank its slice of every global batch, and
let rank 0 alone write results and checkpoints.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from bench.core.errors import BenchError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; a plain one-process run is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> Dist:
    """The job torchrun describes in the environment, or a one-process job."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def setup(ranks: Dist, device: torch.device, timeout_minutes: float = 10) -> torch.device:
    """Join the process group (once) and return this rank's device (cuda:LOCAL_RANK on GPUs).

    A one-process run keeps `device`; bench.run.step.device_settings makes it the current CUDA device. Under
    torchrun the rank's GPU is made current here already, as NCCL needs it before the group is joined.
    """
    if not ranks.enabled:
        return device
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if ranks.local_rank >= visible:  # else torch.cuda.set_device fails with a raw "invalid device ordinal"
            raise BenchError(f"rank {ranks.rank} is local rank {ranks.local_rank}, but this machine has {visible} "
                             f"GPU(s): start at most {visible} processes per node (torchrun --nproc-per-node "
                             f"{visible}), or pass --device cpu")
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=dt.timedelta(minutes=timeout_minutes))
    return device


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(value: torch.Tensor, ranks: Dist) -> torch.Tensor:
    """The sum of `value` over all ranks (a no-op for one process)."""
    if ranks.enabled:
        value = value.clone()
        dist.all_reduce(value)  # a dead rank surfaces here as a RuntimeError; train_run reports it
    return value


def barrier(ranks: Dist) -> None:
    """Wait until every rank got here (a no-op for one process)."""
    if ranks.enabled:
        dist.barrier()


def broadcast(value: object, ranks: Dist) -> object:
    """Rank 0's `value`, on every rank."""
    if not ranks.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose batch statistics are taken over every rank's slice of the global batch.

    torch's own SyncBatchNorm runs on GPUs only; this one runs wherever all_reduce does (gloo on CPU too),
    so a two-process CPU run can be checked against a one-process run of the same global batch. The
    statistics are reduced with a differentiable all_reduce, so gradients flow through them as they do in
    a single process.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        total = dist_fn.all_reduce(torch.cat([x.sum(dims), count.reshape(1)]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean[None, :, None, None]
        var = dist_fn.all_reduce(centred.pow(2).sum(dims)) / n  # two passes: no E[x^2]-E[x]^2 cancellation
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        scale = self.weight / torch.sqrt(var + self.eps)
        return centred * scale[None, :, None, None] + self.bias[None, :, None, None]


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm2d replaced by a synchronised one that keeps its parameters and buffers.

    On a CUDA device that is torch's own torch.nn.SyncBatchNorm, through its documented converter: torch's
    runs on CUDA with NCCL only, and there it is the maintained implementation. Elsewhere torch has none, so
    the project's SyncBatchNorm above stands in (gloo on CPU). The state_dict keys are the same either way,
    so checkpoints move between the two. Use the returned model: torch's converter may return a new module.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_to_own_sync_batchnorm(model)


def _convert_to_own_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of `model`, in place, by the project's SyncBatchNorm."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats, device=child.weight.device)
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)  # as torch's converter does: an eval-mode BatchNorm stays in eval mode
            setattr(model, name, sync)
        else:
            _convert_to_own_sync_batchnorm(child)
    return model
