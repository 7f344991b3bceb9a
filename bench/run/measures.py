"""What a run measures at the end of each epoch, beside training: the test split's loss and errors
(`evaluate`), the epoch's row for epochs.parquet (`epoch_row`), and every layer's response for Figure 7
(`responses`; the gradients are read in the loop itself, between backward and the update).

Training error is the error on the (augmented) training mini-batches of each epoch, as the paper plots it;
test error is measured on the whole test split after every epoch, in eval mode.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.config import RunConfig
from bench.core.provenance import utc_now
from bench.core.records import TOP_K, EpochRow
from bench.run.batches import Batches, Data, MemoryBatches, StreamBatches
from bench.run.distributed import Dist, all_sum
from bench.run.layers import RESPONSE_BATCH, response_rows
from bench.run.state import EpochInProgress, RunState
from bench.run.step import at_least_fp32, predict, prepare_inputs
from resnet import FAMILY_DEFAULTS

__all__ = ["EVAL_BATCH", "epoch_row", "evaluate", "input_size", "responses", "scaled_batch", "shortcut_option",
           "wrong_predictions"]

EVAL_BATCH = 1000  # test images per forward at 32x32 (scaled_batch: fewer at a larger input size)
SIZED_AT = 32  # the input size the batch constants are sized at


def input_size(config: RunConfig, data: Data) -> int:
    """The height and width the net sees: --input-size, else the images as stored (a stream's: its views')."""
    return config.input_size or data.info.image_size


def scaled_batch(batch: int, config: RunConfig, data: Data) -> int:
    """`batch`, a number of 32x32 images (EVAL_BATCH and RESPONSE_BATCH are sized at CIFAR's size), shrunk to
    hold as many pixels at the run's input size, so that evaluation and the diagnostics take no more memory at
    224 than at 32, whether the images are stored at 32 or streamed at 224."""
    size = input_size(config, data)
    return batch if size <= SIZED_AT else max(1, batch * SIZED_AT * SIZED_AT // (size * size))


def shortcut_option(config: RunConfig, family: str) -> str:
    """The shortcut option of the residual twin: a plain net has none, but belongs with that twin."""
    return config.shortcut or FAMILY_DEFAULTS[family]["shortcut"]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, mean: torch.Tensor, config: RunConfig,
             ranks: Dist = Dist()) -> tuple[float, float, float]:
    """(mean loss, top-1 error, top-5 error) of `model` in eval mode over the test split, in one pass: `batches`
    are this rank's share of it (bench.run.batches), and the sums are added up over the ranks."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=mean.device)
    wrong = torch.zeros(2, dtype=torch.int64, device=mean.device)  # top-1, top-5
    total = torch.zeros((), dtype=torch.int64, device=mean.device)
    for images, y in batches:
        x = prepare_inputs(images, mean, config)
        logits = predict(model, x, config.precision)
        loss_sum += F.cross_entropy(at_least_fp32(logits), y, reduction="sum")
        wrong += wrong_predictions(logits, y)
        total += len(y)
    model.train()
    loss_sum, wrong, total = all_sum(loss_sum, ranks), all_sum(wrong, ranks), all_sum(total, ranks)
    top1, top5 = wrong.tolist()
    return loss_sum.item() / total.item(), top1 / total.item(), top5 / total.item()


def wrong_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many `labels` are not the highest logit of their row (top-1, argmax as always), and how many are not
    among the TOP_K highest (top-5; with TOP_K classes or fewer, every label is among them: 0), as one tensor."""
    top = logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices
    return torch.stack([(logits.argmax(1) != labels).sum(), (top != labels[:, None]).all(1).sum()])


def epoch_row(config: RunConfig, data: Data, model: nn.Module, device: torch.device, state: RunState,
              epoch: EpochInProgress, lr: float, train_sums: tuple[torch.Tensor, torch.Tensor, int],
              test: tuple[float, float, float], seconds: float) -> dict:
    """The EpochRow dict of the epoch just ended, `state.epoch` (`train_sums`: loss, errors and images, summed
    over the ranks; `seconds`: training and evaluation)."""
    (loss_sum, wrong, seen), (test_loss, test_error, test_top5_error) = train_sums, test
    row = EpochRow(
        run_id=config.run_id(), dataset=data.info.name, arch=config.arch, depth=config.depth,
        width=model.width, shortcut=shortcut_option(config, model.family), seed=config.seed, preset=config.preset,
        epoch=state.epoch, iteration=state.iteration, lr=lr, train_loss=loss_sum.item() / seen,
        train_error=wrong.item() / seen, test_loss=test_loss, test_error=test_error,
        test_top5_error=test_top5_error,
        epoch_seconds=seconds, images_per_second=seen / epoch.seconds,
        device=device.type, precision=config.precision, timestamp=utc_now())
    return dataclasses.asdict(row)


def responses(config: RunConfig, data: Data, model: nn.Module, batches: MemoryBatches | StreamBatches,
              state: RunState) -> list[dict]:
    """Figure 7's diagnostics after an epoch: every layer's response on the fixed probe images, as LayerRow
    dicts."""
    return response_rows(config.run_id(), state.epoch, state.iteration, model, batches.probe(),
                         lambda images: prepare_inputs(images, batches.mean, config),
                         batch_size=scaled_batch(RESPONSE_BATCH, config, data))
