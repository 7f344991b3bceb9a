"""Parameter and multiply-add counts, as the paper's Table 1 counts "FLOPs"."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass of one ``input_size`` x ``input_size`` image.

    Counts convolutions and fully-connected layers only, as He et al. (2015) do; BN, ReLU,
    pooling and the shortcut additions are left out. That is what torch's FlopCounterMode counts
    of these nets (it has formulas for the matrix products and convolutions only), in FLOPs of two
    per multiply-add, so half of its total. The pass runs on the meta device with the model's
    parameters swapped for meta tensors, so it is fast and leaves the model untouched.
    Pass the eager model, not the wrapper torch.compile returns.
    """
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    meta_state = {name: torch.empty_like(t, device="meta") for name, t in tensors}
    x = torch.empty(1, in_channels, input_size, input_size, device="meta")
    # Eval mode: train-mode BN rejects a batch of one at 1x1 resolution. Each module's own mode
    # is restored, in case some (a frozen BN) were in eval mode to begin with.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            functional_call(model, meta_state, (x,))
    finally:
        for m, training in modes.items():
            m.training = training
    return counter.get_total_flops() // 2
