"""What a run's checkpoint holds beside the weights and the optimizer: how long the run trains (`Schedule`),
where it stands and what it recorded (`RunState`, with the epoch in progress, `EpochInProgress`), and the RNGs.

The checkpoint keeps these fields under these names, so older checkpoints resume; it loads with
weights_only=True, so all of it is saved as plain types (no classes of ours).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.core.config import RunConfig
from bench.core.errors import BenchError, Notify

__all__ = ["EpochInProgress", "RunState", "Schedule", "WARMUP_WINDOW", "check_batch", "rng_state", "seed_everything",
           "set_rng_state"]

WARMUP_WINDOW = 50  # iterations averaged to decide that training error is below warmup_until_error


def check_batch(config: RunConfig, train_images: int, world_size: int = 1) -> None:
    """The global batch must divide over the processes and fit at least once into the training images."""
    if config.batch_size % world_size:
        raise BenchError(f"--batch-size {config.batch_size} (the global batch) must divide evenly over "
                         f"{world_size} processes")
    if train_images // config.batch_size == 0:
        raise BenchError(f"--batch-size {config.batch_size} is larger than the {train_images} training images: "
                         "use a smaller batch")


@dataclass(frozen=True)
class Schedule:
    """How long a run trains, in iterations and in epochs (the last one may be short)."""

    iterations: int
    iterations_per_epoch: int
    epochs: int

    @classmethod
    def of(cls, config: RunConfig, train_images: int, world_size: int = 1) -> Schedule:
        """The schedule of `config` on `train_images` images over `world_size` processes; a batch that does
        not fit is a BenchError (check_batch). `bench run` works out every run's before any run folder is
        created and hands each to its run."""
        check_batch(config, train_images, world_size)
        per_epoch = train_images // config.batch_size
        total = config.iterations or config.epochs * per_epoch  # type: ignore[operator]
        return cls(total, per_epoch, math.ceil(total / per_epoch))


@dataclass
class EpochInProgress:
    """The epoch in progress: its batches, drawn at its start, and the sums so far. A Ctrl-C mid-epoch
    checkpoints it, so the resume trains the same batches and the epoch's row counts every image once."""

    # [iterations, global batch] image indices, on the CPU; [iterations, 0] for a streamed set, whose order
    # is the run's seed's and the epoch's (bench.run.batches)
    batches: torch.Tensor
    done: int = 0  # batches trained
    loss_sum: float = 0.0  # training loss summed over the images seen
    wrong: int = 0  # training images misclassified
    seen: int = 0  # images this rank trained on (one process: all of them)
    seconds: float = 0.0  # training time so far

    def state(self) -> dict:
        """Plain fields for the checkpoint (which loads with weights_only=True: no classes of ours)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def sums(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_sum, wrong) as tensors on `device`, to add to without a sync per iteration."""
        return (torch.tensor(self.loss_sum, dtype=torch.float64, device=device),
                torch.tensor(self.wrong, dtype=torch.int64, device=device))


@dataclass
class RunState:
    """Where a run stands and what it recorded: what its checkpoint holds beside the weights, the optimizer's
    state and the RNGs. The checkpoint keeps these fields under these names (older checkpoints resume)."""

    epoch: int = 0
    iteration: int = 0
    rows: list[dict] = field(default_factory=list)  # EpochRow dicts
    # bench.run.layers.LayerRow dicts, in the checkpoint like the epoch rows so a resume has no gaps (a few
    # hundred per epoch: small beside the weights even for the paper's 164-epoch 110-layer run).
    layer_rows: list[dict] = field(default_factory=list)
    warming_up: bool = False
    recent_errors: deque[float] = field(default_factory=lambda: deque(maxlen=WARMUP_WINDOW))
    partial: EpochInProgress | None = None  # the epoch in progress

    def to_checkpoint(self) -> dict:
        """Plain types only: the checkpoint loads with weights_only=True."""
        return {"epoch": self.epoch, "iteration": self.iteration, "rows": self.rows, "layer_rows": self.layer_rows,
                "warming_up": self.warming_up, "recent_errors": list(self.recent_errors),
                "partial": None if self.partial is None else self.partial.state()}

    @classmethod
    def from_checkpoint(cls, state: dict) -> RunState:
        """The inverse of `to_checkpoint`; a missing key or a foreign half-epoch raises KeyError or TypeError."""
        return cls(epoch=state["epoch"], iteration=state["iteration"], rows=list(state["rows"]),
                   layer_rows=list(state.get("layer_rows", [])),  # checkpoints from before layers.parquet have none
                   warming_up=state["warming_up"],
                   recent_errors=deque(state["recent_errors"], maxlen=WARMUP_WINDOW),
                   partial=None if state["partial"] is None else EpochInProgress(**state["partial"]))

    def end_warmup_if_learning(self, batch_error: float, config: RunConfig, notify: Notify) -> None:
        """The paper's 110-layer rule: back to lr once training error averaged over WARMUP_WINDOW iterations
        is below warmup_until_error."""
        self.recent_errors.append(batch_error)
        if len(self.recent_errors) == WARMUP_WINDOW and np.mean(self.recent_errors) < config.warmup_until_error:
            self.warming_up = False
            notify(f"{config.run_id()}: training error below {config.warmup_until_error:.0%} "
                   f"at iteration {self.iteration}; lr {config.warmup_lr} -> {config.lr}")


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    """Every RNG a run draws from, for its checkpoint: Python's, NumPy's, torch's, the run's GPU's and the data
    generator's."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # As a tensor and plain numbers, so the checkpoint loads with weights_only=True.
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        # The run's GPU's, not the current one's.
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" and torch.cuda.is_initialized() else None,
        "data": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    """The inverse of `rng_state`."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":  # a CPU checkpoint resumed on a GPU has none
        torch.cuda.set_rng_state(state["cuda"], device)
    generator.set_state(state["data"])


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global RNGs seeded with the run's seed, before its net is built."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
