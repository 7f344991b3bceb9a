"""One training step, the one `bench run` trains with and `bench time` times, and the ways to make it fast.

    TrainStep        forward under the run's precision, cross-entropy, backward, SGD step
    predict          the eval-mode forward: `bench run`'s test error and `bench time`'s forward phase
    network_inputs   uint8 images -> the network's input (the paper's per-pixel mean subtraction)
    prepare_inputs   the same, as a run's config asks (its memory format and input size)

A net runs in one of three modes, chosen the same way by both commands (`--compile`, `--cuda-graph`):

    eager        plain PyTorch
    compile      torch.compile(dynamic=False): one static-shape compile per input shape
    cuda-graph   forward and backward captured as CUDA graphs (torch.cuda.make_graphed_callables) and
                 replayed; the SGD step stays eager, so the learning-rate schedule applies as written.
                 On these small nets a step is mostly kernel launches, which a replay removes. CUDA only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.config import RunConfig
from bench.core.modes import OPTIMIZER_CLASSES, PRECISION_DTYPES
from bench.core.provenance import numerics
from bench.data.loader import normalize, resize

GRAPH_WARMUP = 3  # eager iterations before a capture, on a side stream, as the CUDA-graph docs ask
COMPILE_BACKEND = "inductor"  # torch.compile's default, named so a test can count compiles with its own


@contextmanager
def device_settings(device: torch.device) -> Iterator[None]:
    """What both `bench run` and `bench time` run under, put back afterwards, so the timed kernels are the
    trained ones:

    - `device` is the current CUDA device: CUDA graphs are captured on the current device's streams, and
      torch.cuda calls without a device act on it, so a run on cuda:1 must make cuda:1 current.
    - fp32 is IEEE fp32, as in the paper: torch's defaults let cuDNN run fp32 convolutions in TF32
      (torch.backends.cudnn.allow_tf32 is True), which would label TF32 numbers fp32. bf16 is autocast's.
    - cuDNN's autotuner is on: every step has the same shapes, so it pays for itself in the first steps.

    The flags are global and inert on the CPU; `numerics()` reads them back for the records.
    """
    previous = numerics()
    old_device = None
    if device.type == "cuda" and device.index is not None:
        old_device = torch.cuda.current_device()
        torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous["cudnn_benchmark"]
        torch.backends.cuda.matmul.allow_tf32 = previous["allow_tf32_matmul"]
        torch.backends.cudnn.allow_tf32 = previous["allow_tf32_cudnn"]
        if old_device is not None:
            torch.cuda.set_device(old_device)


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The autocast context of `precision` on `device` (disabled for fp32).

    The weight-cast cache is off: make_graphed_callables requires it, and every mode shares this context.
    """
    dtype = PRECISION_DTYPES[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.bfloat16, enabled=dtype is not None,
                          cache_enabled=False)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32, or kept in float64: where a bf16 sum would lose digits (the loss, norms), and where
    fp64 must stay fp64 (tests/test_pinned_numbers.py trains in it to be exact on any CPU)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def network_inputs(images: torch.Tensor, mean: torch.Tensor, channels_last: bool = False,
                   size: int | None = None) -> torch.Tensor:
    """uint8 images -> mean-subtracted floats (bench.data.loader.normalize), resized to `size` (bench.data.loader.resize;
    None: as stored), in the run's memory format. The mean is subtracted at the stored size, where it was
    measured: the resize is linear, so this equals resizing first and subtracting the resized mean."""
    x = normalize(images, mean)
    if size is not None:
        x = resize(x, size)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def prepare_inputs(images: torch.Tensor, mean: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """uint8 images -> the network's input for this run (network_inputs), at its input size."""
    return network_inputs(images, mean, config.channels_last, config.input_size)


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, precision: str) -> torch.Tensor:
    """Logits of `model` on `x` without autograd, under the precision's autocast (the caller sets eval mode)."""
    with autocast(x.device, precision):
        return model(x)


def sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4) -> torch.optim.SGD:
    """The paper's optimizer (section 3.4: momentum 0.9, weight decay 1e-4)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_optimizer(model: nn.Module, optimizer: str, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """The run's optimizer: `sgd` (with momentum), or `adam` / `adamw` with torch's betas and eps. Adam has no
    momentum argument: bench.core.config.validate refuses one, so `momentum` is ignored for it here."""
    if optimizer == "sgd":
        return sgd(model, lr, momentum, weight_decay)
    return OPTIMIZER_CLASSES[optimizer](model.parameters(), lr=lr, weight_decay=weight_decay)


def accelerate(model: nn.Module, mode: str, example: torch.Tensor, precision: str) -> Callable:
    """What runs `model`'s forward in `mode`; `example` is an input of the shape it will be called with.

    `model` itself stays the module to read and save (state_dict, diagnostics): the compiled and graphed
    callables share its parameters and buffers. The callers have checked `mode` against the device
    (bench.core.config.validate, bench.timing.timing).
    """
    if mode == "eager":
        return model
    if mode == "compile":
        # Every net shares one `forward` code object and Dynamo keeps torch._dynamo.config.recompile_limit
        # (8) compiled entries per code object, then runs it eager: from a grid's ninth distinct net on,
        # "compiled" would be a lie. One run or timing is compiled at a time, so start from an empty cache.
        torch.compiler.reset()
        return torch.compile(model, dynamic=False, backend=COMPILE_BACKEND)
    return graphed(model, example, precision)


def graphed(model: nn.Module, example: torch.Tensor, precision: str) -> nn.Module:
    """`model` with its train-mode forward and backward captured as CUDA graphs (make_graphed_callables).

    The graphed module replays the graphs in train mode and runs the eager forward in eval mode, so
    evaluation keeps any batch size. Capture runs a few forward passes, which would move BatchNorm's
    running statistics: they are put back afterwards, so a run's numbers do not depend on the capture.
    Inputs of another shape than `example` cannot be replayed: callers keep the batch shape fixed.
    """
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train()
    with autocast(example.device, precision):
        model = torch.cuda.make_graphed_callables(model, (example,), num_warmup_iters=GRAPH_WARMUP)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])  # in place: the graphs hold these tensors' addresses
    model.train(was_training)
    return model


def graphed_predict(model: nn.Module, example: torch.Tensor, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """`predict(model, x)` for inputs shaped like `example`, as one CUDA graph replayed per call (the
    whole-network capture of the CUDA-graph docs: warm-up on a side stream, capture, copy in, replay).

    The logits returned are the graph's output tensor, overwritten by the next call. `bench time`'s
    forward phase in cuda-graph mode; the caller sets eval mode.
    """
    static_input = example.clone()
    side = torch.cuda.Stream(example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP):
            predict(model, static_input, precision)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # On the side stream, of example's device: without `stream`, torch.cuda.graph captures on one stream per
    # process, made on whichever device was current at the first capture (torch/cuda/graphs.py), so a sweep
    # over cuda:0 and cuda:1 would capture cuda:1's graph on cuda:0's stream.
    with torch.cuda.graph(graph, stream=side):
        static_logits = predict(model, static_input, precision)

    def replay(x: torch.Tensor) -> torch.Tensor:
        static_input.copy_(x)
        graph.replay()
        return static_logits

    return replay


class TrainStep:
    """Forward, cross-entropy, backward and the optimizer step on one batch.

    `forward` is what runs the net (the module itself, or what `accelerate` or DDP made of it); the
    step is split in two so that gradients can be read between backward and the update (bench.run.layers).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, precision: str = "fp32",
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.model, self.optimizer, self.precision = model, optimizer, precision
        self.forward = model if forward is None else forward  # not `or`: a compiled module has no truth value

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of the batch, with the gradients of the loss in every parameter's .grad."""
        with autocast(x.device, self.precision):
            logits = self.forward(x)
        loss = F.cross_entropy(at_least_fp32(logits), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, logits

    def update(self) -> None:
        """The optimizer step on the gradients of the last `forward_backward`."""
        self.optimizer.step()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = self.forward_backward(x, y)
        self.update()
        return loss, logits
