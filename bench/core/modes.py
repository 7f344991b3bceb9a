"""What both `bench run` and `bench time` check and speak, below everything that uses it: the precisions a
net trains and is timed in, the modes it runs in (bench.run.step says what each mode does), and the check
that a net can be built.

Here rather than in bench.core.config or bench.run.step, so that the configuration can check a mode and the step
can read a precision without either importing the other.
"""

from __future__ import annotations

import inspect

import torch

from bench.core.errors import BenchError, model_errors
from bench.core.provenance import cpu_model
from resnet import build_model

# A precision is the autocast dtype it trains and times in (None: plain fp32).
PRECISION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
PRECISIONS = tuple(PRECISION_DTYPES)
# The optimizers `bench run` trains with (`--optimizer`), built in one place (bench.run.step.make_optimizer).
OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
OPTIMIZERS = tuple(OPTIMIZER_CLASSES)
# What each precision computes in, as `bench run` says it before training.
PRECISION_TEXT = {
    "fp32": "fp32 (everything in float32)",
    "bf16": ("bf16 (autocast: convolutions and the fc layer in bfloat16, so activations are bf16; weights, "
             "BatchNorm statistics, the loss and SGD stay in float32)"),
}


# Where channels-last was measured to train faster than torch's default (contiguous) memory format, beyond
# the noise of a measurement (docs/benchmarks.md, "The memory format bench run picks"), so that `bench run`
# trains in it there unless told otherwise: (CPU vendor, family, model) and precision -> the nets, as (depth,
# first-stage width), each measured at 32x32 inputs; a net's plain and residual twins and remedies share its
# convolutions. Anywhere else, other input sizes and GPUs included (not measured yet), runs train contiguous
# unless told: at 224 one of these CPUs' channels-last backward was seen to crash (docs/benchmarks.md).
CHANNELS_LAST_WINS: dict[tuple[tuple[str, str, str], str], frozenset[tuple[int, int]]] = {
    (("AuthenticAMD", "25", "1"), "fp32"): frozenset({(34, 16), (50, 16), (56, 16)}),  # Zen 3
    (("AuthenticAMD", "25", "17"), "fp32"): frozenset({(18, 16), (34, 16), (50, 16)}),  # Zen 4
    (("AuthenticAMD", "25", "17"), "bf16"): frozenset({(18, 16), (34, 16)}),  # Zen 4
}


def default_channels_last(device_type: str, precision: str, depth: int, width: int, input_size: int = 32) -> bool:
    """Whether a new run of the net of `depth` and `width` at `input_size` in `precision` on `device_type` trains
    channels-last when the command does not say: only where that was measured faster (CHANNELS_LAST_WINS)."""
    return (device_type == "cpu" and input_size == 32
            and (depth, width) in CHANNELS_LAST_WINS.get((cpu_model(), precision), ()))


def torch_default(optimizer: str, argument: str) -> float:
    """The default torch gives `argument` (lr, weight_decay) of `optimizer`, read from its signature, so that
    "torch's defaults" stays true whichever torch is installed."""
    return float(inspect.signature(OPTIMIZER_CLASSES[optimizer]).parameters[argument].default)


def check_net(depth: int, arch: str = "residual", input_shape: tuple[int, ...] | None = None,
              **options: object) -> None:
    """The networks' own checks of depth, arch, family, shortcut, stem and width, as a BenchError: the net is
    built on the meta device, which takes no time and allocates nothing. With `input_shape`, a training-mode
    forward of an input of that shape runs there too; what torch refuses in it raises as torch raises it."""
    with model_errors(), torch.device("meta"):
        model = build_model(depth, arch, **options)  # type: ignore[arg-type]
        if input_shape is not None:
            model(torch.empty(input_shape))


def mode_of(compile: bool, cuda_graph: bool) -> str:
    """The mode named by the two flags both commands take; both at once is a BenchError."""
    if compile and cuda_graph:
        raise BenchError("--compile and --cuda-graph are two ways of doing the same thing: choose one")
    return "compile" if compile else "cuda-graph" if cuda_graph else "eager"


def check_mode(mode: str, device: torch.device) -> None:
    """A mode the device cannot run is a BenchError that names the fix."""
    if mode == "cuda-graph" and device.type != "cuda":
        raise BenchError(f"--cuda-graph needs a CUDA device, not {device.type}: drop it (or use --compile)")
