"""Per-layer diagnostics: why a deeper plain net trains worse, measured inside it (paper section 4.2, Figure 7).

Three kinds of value, each one row of `layers.parquet` per run x measurement x layer:

- ``response_std``: the standard deviation of a 3x3 layer's response, the BatchNorm output before the
  ReLU and before the shortcut is added (the paper's Figure 7), in eval mode over a fixed set of test
  images. Computed from float64 sums over every element of the response, so the result does not depend
  on how the images are split into batches.
- ``grad_norm``: the L2 norm of a conv weight's gradient, after backward and before the optimizer step.
- ``weight_norm``: the L2 norm of that weight at the same moment.

Layers are the convolutions of the main path in network order (shortcut projections are left out, so a
plain net and its residual twin have the same layers); ``layer`` counts them from 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from bench.core.records import GRAD_NORM, RESPONSE_STD, WEIGHT_NORM, LayerRow
from bench.run.step import at_least_fp32

# Test images the per-epoch response statistics are measured on during training, fixed for the whole run.
# 1,000 images cost ~10% of one evaluation pass, well under 1% of an epoch.
RESPONSE_IMAGES = 1_000
RESPONSE_BATCH = 500  # images per forward of the response diagnostics, at 32x32 (train.scaled_batch)




@dataclass(frozen=True)
class ConvLayer:
    """A main-path convolution and the BatchNorm that follows it (in a pre-activation unit, the conv itself)."""

    index: int
    stage: int
    block: int
    name: str
    conv: nn.Conv2d
    norm: nn.Module


def conv_layers(model: nn.Module) -> list[ConvLayer]:
    """The main-path conv layers of a ResNet (stem conv1, then each block's convN), in network order."""
    modules = dict(model.named_modules())
    layers = []
    for name, module in modules.items():
        # The stem's conv1 and layerS.B.convN; shortcut projections (layerS.B.downsample.0) do not match.
        match = re.fullmatch(r"(?:layer(\d+)\.(\d+)\.)?conv(\d+)", name)
        if not isinstance(module, nn.Conv2d):
            continue
        if match is None:
            continue
        stage, block, _ = match.groups()
        # A pre-activation unit's conv has no norm after it (its norm comes first): its response is its output.
        parent = modules[name.rpartition(".")[0]]
        norm = module if getattr(parent, "pre_activation", False) else modules[re.sub(r"conv(\d+)$", r"bn\1", name)]
        layers.append(ConvLayer(len(layers) + 1, int(stage or 0), int(block or 0), name, module, norm))
    return layers


def _rows(run_id: str, epoch: int, iteration: int, kind: str, layers: Sequence[ConvLayer],
          values: Sequence[float]) -> list[dict]:
    return [vars(LayerRow(run_id, epoch, iteration, layer.index, layer.stage, layer.block, layer.name, kind,
                          float(value)))
            for layer, value in zip(layers, values)]


@contextmanager
def _response_sums(layers: Sequence[ConvLayer]) -> Iterator[torch.Tensor]:
    """Hooks on the BatchNorms of 3x3 layers that add (count, sum, sum of squares) of their outputs into
    one float64 tensor of shape (len(layers), 3), while the block runs."""
    sums = torch.zeros(len(layers), 3, dtype=torch.float64)
    handles = []
    for i, layer in enumerate(layers):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor, i: int = i) -> None:
            out = output.detach().double()
            sums[i] += torch.stack([torch.tensor(out.numel(), dtype=torch.float64), out.sum().cpu(),
                                    out.square().sum().cpu()])
        handles.append(layer.norm.register_forward_hook(hook))
    try:
        yield sums
    finally:
        for handle in handles:
            handle.remove()


def response_probe(images: torch.Tensor, n: int = RESPONSE_IMAGES) -> torch.Tensor:
    """n test images spread evenly over the split (every 10th of CIFAR-10's 10,000), all of them if there are
    fewer: an ImageFolder test split is sorted by class, so its first n images would all be of one class
    (measured: the first 1,000 of CIFAR-10 gave a first-layer std 16% off the whole split's)."""
    if len(images) <= n:
        return images
    return images[torch.arange(n, device=images.device) * len(images) // n]


def three_by_three(model: nn.Module) -> list[ConvLayer]:
    """The layers whose responses Figure 7 plots: main-path 3x3 convs."""
    return [layer for layer in conv_layers(model) if layer.conv.kernel_size == (3, 3)]


@torch.no_grad()
def response_stds(model: nn.Module, batches: Iterator[torch.Tensor]) -> list[float]:
    """The std of each 3x3 layer's BN output over every element of every batch, in eval mode.

    The model's train/eval mode is restored afterwards; running statistics are not touched (eval mode).
    """
    layers = three_by_three(model)
    was_training = model.training
    model.eval()
    try:
        with _response_sums(layers) as sums:
            for x in batches:
                model(x)
    finally:
        model.train(was_training)
    count, total, squares = sums.unbind(1)
    mean = total / count
    return (squares / count - mean.square()).clamp_min(0).mul(count / (count - 1)).sqrt().tolist()


def response_rows(run_id: str, epoch: int, iteration: int, model: nn.Module, images: torch.Tensor,
                  prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int = RESPONSE_BATCH) -> list[dict]:
    """LayerRow dicts of kind response_std for every 3x3 layer, over `images` (uint8, turned into the
    network's input by `prepare`) in batches of `batch_size`."""
    batches = (prepare(images[i:i + batch_size]) for i in range(0, len(images), batch_size))
    return _rows(run_id, epoch, iteration, RESPONSE_STD, three_by_three(model), response_stds(model, batches))


@torch.no_grad()
def gradient_rows(run_id: str, epoch: int, iteration: int, model: nn.Module) -> list[dict]:
    """LayerRow dicts of kinds grad_norm and weight_norm for every main-path conv, read after backward."""
    layers = conv_layers(model)
    weights = [layer.conv.weight for layer in layers]
    grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in weights]
    # One stack and one transfer: a .item() per layer would sync the device once per layer.
    norms = torch.stack([torch.linalg.vector_norm(at_least_fp32(t)) for t in grads + weights]).cpu().tolist()
    return (_rows(run_id, epoch, iteration, GRAD_NORM, layers, norms[:len(layers)])
            + _rows(run_id, epoch, iteration, WEIGHT_NORM, layers, norms[len(layers):]))
