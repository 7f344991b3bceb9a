"""Parameter and multiply-add counts, as the paper's Table 1 counts "FLOPs"."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.func import functional_call


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass of one ``input_size`` x ``input_size`` image.

    Counts convolutions and fully-connected layers only, as He et al. (2015) do; BN, ReLU,
    pooling and the shortcut additions are left out. The pass runs on the meta device with
    the model's parameters swapped for meta tensors, so it is fast and leaves the model untouched.
    Pass the eager model, not the wrapper torch.compile returns.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    meta_state = {name: torch.empty_like(t, device="meta") for name, t in tensors}
    x = torch.empty(1, in_channels, input_size, input_size, device="meta")
    # Eval mode: train-mode BN rejects a batch of one at 1x1 resolution. Each module's own mode
    # is restored, in case some (a frozen BN) were in eval mode to begin with.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            functional_call(model, meta_state, (x,))
    finally:
        for m, training in modes.items():
            m.training = training
        for h in handles:
            h.remove()
    return total
