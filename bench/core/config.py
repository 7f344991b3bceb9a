"""What one training run is: a frozen dataclass, its named presets, and the grid that expands into runs.

Every field of `RunConfig` is saved with the run's results, and the `run_id` is a hash of what defines the
experiment, so the same command finds the same runs again, also after new options are added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass

import torch

from bench.core import provenance
from bench.core.errors import BenchError, check_choice, check_positive, first_line
from bench.core.modes import OPTIMIZERS, PRECISIONS, check_mode, check_net, mode_of, torch_default
from resnet import ARCHS, family_of

# Each name is defined once; the network's own names (ARCHS, SHORTCUTS) live with the networks, the
# precisions and modes in bench.core.modes.
DEVICES = ("auto", "cpu", "cuda")
FORMATS = ("png", "svg", "pdf")  # what bench report draws figures as
# How a run executes, not what it computes: left out of the run_id.
EXECUTION_FIELDS = ("device", "channels_last", "compile", "cuda_graph")
# The fields hashed into every run_id since the first release. A field added after them enters the hash
# only when it differs from its default, so adding an option never renames (and retrains) finished runs.
RUN_ID_FIELDS_V1 = ("arch", "depth", "seed", "width", "shortcut", "stem", "dataset", "train_subset",
                    "test_subset", "preset", "epochs", "iterations", "batch_size", "lr", "momentum",
                    "weight_decay", "lr_decay_at", "lr_decay", "warmup_lr", "warmup_until_error", "precision",
                    "sync_bn")


@dataclass(frozen=True)
class RunConfig:
    """One training run: one network (arch x depth), one seed, one dataset, one schedule."""

    # The network (None = the family's paper choice, see resnet.build_model).
    arch: str = "residual"
    depth: int = 20
    seed: int = 0
    width: int | None = None
    shortcut: str | None = None
    stem: str | None = None
    # The network's input height and width; None: the images as stored (32 for CIFAR and the synthetic set).
    # The stored images are resized on the device, batch by batch (bench.data.loader.resize).
    input_size: int | None = None
    # The data. A subset keeps a short preset short on any dataset; None means the whole split.
    dataset: str = "auto"
    train_subset: int | None = None
    test_subset: int | None = None
    # The paper's crop and flip (section 4.2); off, a run fits the stored images as they are (--no-augment).
    augment: bool = True
    # The schedule (SGD with momentum, by iteration, as the paper's section 4.2). Adam and AdamW take torch's
    # defaults where the command does not say (with_optimizer) and have no momentum.
    preset: str = "paper"
    epochs: int | None = None
    iterations: int | None = 64_000
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_decay_at: tuple[float, ...] = (0.5, 0.75)  # fractions of the run: 32k and 48k of 64k
    lr_decay: float = 0.1
    # Paper, 110 layers: 0.01 until training error is below 80%, then back to lr.
    warmup_lr: float | None = None
    warmup_until_error: float = 0.8
    # How it runs.
    device: str = "auto"
    precision: str = "fp32"
    # None: `bench run` decides (bench.run.planner.plan): a run keeps the format it started in, a new run gets the
    # one measured fastest on this CPU (bench.core.modes.default_channels_last). Anything else takes None as False.
    channels_last: bool | None = None
    compile: bool = False  # torch.compile the net (bench.run.step: the same call bench time makes)
    cuda_graph: bool = False  # replay forward and backward as CUDA graphs (bench.run.step); CUDA only
    # BatchNorm statistics over the global batch when a run spans several processes (torchrun).
    sync_bn: bool = False

    @property
    def mode(self) -> str:
        """eager, compile or cuda-graph (bench.core.modes.mode_of): how the step runs."""
        return mode_of(self.compile, self.cuda_graph)

    def run_id(self) -> str:
        """A readable, stable identifier: the same experiment always gives the same id, whichever device,
        memory format or compiler runs it, so a run started on one machine resumes on another."""
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.arch}-{self.depth}-s{self.seed}-{digest}"

    def identity(self) -> dict[str, object]:
        """The fields that define the experiment: all of RUN_ID_FIELDS_V1, and any later field (other than
        EXECUTION_FIELDS) whose value is not its default."""
        defaults = _DEFAULTS.to_dict()
        return {k: v for k, v in self.to_dict().items()
                if k in RUN_ID_FIELDS_V1 or (k not in EXECUTION_FIELDS and v != defaults[k])}

    def stem_at(self, size: int) -> str | None:
        """The stem the net is built with on inputs of `size` pixels: the one asked for, else the CIFAR stem
        for ImageNet-layout nets below 128 pixels (their ImageNet stem would leave a 1x1 map by the last
        stage at 32), else the family's (None)."""
        if self.stem is None and family_of(self.depth) == "imagenet" and size < 128:
            return "cifar"
        return self.stem

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RunConfig:
        """The inverse of `to_dict` (lists become tuples again)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
        return cls(**values)


_DEFAULTS = RunConfig()


def parse_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' as a torch.device ('auto' is resolve_device's); anything else a BenchError."""
    if name not in DEVICES[1:] and not re.fullmatch(r"cuda:\d+", name):
        raise BenchError(f"unknown device {name!r}: choose cpu, cuda or cuda:N (bench run also takes auto)")
    return torch.device(name)


def parse_gpus(value: str) -> tuple[str, ...]:
    """GPU indices as `--devices` takes them, '0,1' -> ('cuda:0', 'cuda:1'); anything but integers a BenchError.
    Whether this machine has them is bench.run.planner.validate_grid's to say."""
    try:
        return tuple(f"cuda:{int(part)}" for part in value.split(","))
    except ValueError:
        raise BenchError(f"--devices {value!r}: give GPU indices, e.g. 0,1,2,3") from None


def unavailable(device: torch.device) -> str | None:
    """Why `device` cannot be used on this machine, or None when it can."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch on this machine"
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s), so cuda:0 to cuda:{torch.cuda.device_count() - 1}"
    return None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a Slurm allocation), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """CPU threads per process: $OMP_NUM_THREADS when set (a batch scheduler's or a test's word), else the
    CPUs this process may use; one each when several worker processes share them."""
    if workers > 1:
        return 1
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return usable_cpus()


def threads_notice(threads: int | None) -> str | None:
    """A warning when `threads` CPU threads are more than this process has CPUs for, else None."""
    cpus = usable_cpus()
    if threads is None or threads <= cpus:
        return None
    return (f"--threads {threads} (or $OMP_NUM_THREADS) is more than the {cpus} CPUs this process may use: threads "
            f"that share a core spin against each other (999 threads on 2 cores ran 225x slower); use --threads "
            f"{cpus} or fewer")


def precision_notice(precision: str, device: torch.device) -> str | None:
    """A warning when `precision` is bf16 on a CPU with no bf16 instructions (`avx512_bf16`, `amx_bf16`):
    torch then emulates bf16, which trains several times slower than fp32, not faster. Else None."""
    flags = provenance.cpu_flags()
    if precision != "bf16" or device.type != "cpu" or flags is None or flags & {"avx512_bf16", "amx_bf16"}:
        return None
    # Measured with bench time on a 2-core AMD EPYC (Zen 3, family 25 model 1), ResNet-20's training step at
    # batch 128: 234 images/s in fp32, 21 in bf16 (docs/benchmarks.md).
    return ("--precision bf16 on a CPU without avx512_bf16 or amx_bf16: torch emulates bf16, and it trained 11x "
            "slower than fp32 on one such CPU; use --precision fp32 (or a CPU with bf16 instructions)")


def resolve_device(name: str) -> torch.device:
    """'auto' picks the GPU when there is one; a device that is not there is a BenchError naming the fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    problem = unavailable(device)
    if problem:
        raise BenchError(f"--device {name}: {problem}: use --device cpu (or auto)")
    return device

# Section 4.2 to the letter: batch 128, lr 0.1, /10 at 32k and 48k, stop at 64k iterations.
PAPER = RunConfig(preset="paper")

# A fitting test (issue #26), sized so that `bench run --depths 18 34` (4 runs) ends within 5 minutes on a
# 2-core CPU: width-8 nets fit a fixed 768-image subset as it is stored (no crop or flip) in 32 passes (192
# iterations, lr /10 at passes 16 and 24). The degradation problem is an optimisation failure, and fitting a
# small set is that optimisation alone; training error is what the paper plots. The test subset is small
# because every pass evaluates it. Measured (CIFAR-10 copy, AMD EPYC, plain nets on seed 3): the passes decide
# both halves at once. At 48 passes both residual nets fit by pass 21-26, but plain-34 catches up (2.1% against
# plain-18's 0.0%); at 40 it ends at 6.4%; at 32 at 15.1% against plain-18's 5.0%, while residual-34 still
# fits at pass 21 on seed 2 (its slowest at 48). Seeds 0-5 on both datasets: the README's quick-start table.
QUICK = dataclasses.replace(
    PAPER,
    preset="quick",
    width=8,
    train_subset=768,
    test_subset=250,
    augment=False,
    iterations=None,
    epochs=32,
)

# Section 3.4 (ImageNet) as torchvision's reference recipe reproduces it: SGD, momentum 0.9, weight decay 1e-4,
# batch 256 at lr 0.1, lr /10 after epochs 30 and 60, 90 epochs, at 224x224 (so ImageNet-layout nets get the
# ImageNet stem). The paper divides the lr by 10 "when the error plateaus" and trains "for up to 60 x 10^4
# iterations" (about 120 epochs at batch 256) without saying where the plateaus fell; a plateau rule would need a
# held-out signal and would put each net's drops elsewhere. Fixed epochs give every net of a grid the same lr at
# the same iteration, as the CIFAR presets do, and are the schedule torchvision's published ResNet weights were
# trained with (docs/imagenet.md). The milestones are fractions of the run: 30 and 60 of 90 epochs.
IMAGENET = dataclasses.replace(
    PAPER,
    preset="imagenet",
    iterations=None,
    epochs=90,
    batch_size=256,
    lr=0.1,
    lr_decay_at=(1 / 3, 2 / 3),
    input_size=224,
)

PRESETS: dict[str, RunConfig] = {"quick": QUICK, "paper": PAPER, "imagenet": IMAGENET}

# Presets whose lr follows the batch linearly (the rule torchvision's reference states, from Goyal et al. 2017):
# lr = the preset's lr x batch / this batch. The CIFAR presets keep section 4.2's lr at any batch, as before.
LINEAR_LR_BATCH = {"imagenet": 256}


def at_batch(config: RunConfig, batch_size: int | None) -> RunConfig:
    """`config` (a preset) at `batch_size` (None: the preset's): a preset in LINEAR_LR_BATCH scales its lr with
    the batch (imagenet: 0.1 at 256, 0.2 at 512); every other keeps its lr. A --lr given applies on top."""
    if batch_size is None:
        return config
    reference = LINEAR_LR_BATCH.get(config.preset)
    lr = config.lr * batch_size / reference if reference and batch_size > 0 else config.lr
    return dataclasses.replace(config, batch_size=batch_size, lr=lr)


@dataclass(frozen=True)
class GridConfig:
    """A `bench run` job: every (depth, arch, seed) of `base`, results under `results`."""

    base: RunConfig
    depths: tuple[int, ...]
    archs: tuple[str, ...] = ARCHS
    seeds: tuple[int, ...] = (0,)
    data_dir: str = "data"
    results: str = "results"
    shard: tuple[int, int] = (1, 1)  # (I, N): run the I-th of N disjoint slices of the grid
    devices: tuple[str, ...] = ()  # several GPUs of one machine: one run per device at a time
    time_limit: float | None = None  # minutes; stop cleanly after the first epoch past it, resume later
    threads: int | None = None  # torch CPU threads per process; None leaves torch's setting as it is
    # An ImageFolder streamed from disk (True), held in memory (False), or as its size decides (None:
    # bench.data.streaming.FolderListing.streams); every other dataset is held in memory.
    stream: bool | None = None
    loader_workers: int | None = None  # processes decoding a streamed set's batches; None: one per CPU, up to 8

    def runs(self) -> list[RunConfig]:
        """Every run of the grid in a fixed order (depth, then arch, then seed); this shard's only."""
        every = [
            paper_rules(dataclasses.replace(self.base, depth=d, arch=a, seed=s))
            for d in self.depths
            for a in self.archs
            for s in self.seeds
        ]
        index, count = self.shard
        return every[index - 1 :: count]


def with_optimizer(config: RunConfig, optimizer: str) -> RunConfig:
    """`config` (a preset) trained by `optimizer`: SGD keeps the preset's recipe; Adam and AdamW take torch's
    defaults for the learning rate and weight decay, and no momentum (theirs are the betas, torch's too). The
    schedule (length, lr milestones) stays the preset's. The command's own --lr, --weight-decay and
    --lr-milestones apply on top."""
    if optimizer == "sgd":
        return config
    check_choice("optimizer", optimizer, OPTIMIZERS)
    return dataclasses.replace(config, optimizer=optimizer, lr=torch_default(optimizer, "lr"), momentum=0.0,
                               weight_decay=torch_default(optimizer, "weight_decay"))


def run_config(preset: str, optimizer: str = "sgd", *, epochs: int | None = None, iterations: int | None = None,
               train_subset: int | None = None, test_subset: int | None = None, **values: object) -> RunConfig:
    """A run's config as `bench run` is told it: `preset` at the batch given (at_batch: a preset whose lr follows
    the batch scales it), under `optimizer` (with_optimizer: its defaults), then every value given on top (None
    leaves the preset's). A length given replaces the preset's, epochs and iterations both (both given:
    validate refuses); a subset of 0 is all the images."""
    overrides = {name: value for name, value in values.items() if value is not None}
    if epochs is not None or iterations is not None:
        overrides.update(epochs=epochs, iterations=iterations)
    for name, value in (("train_subset", train_subset), ("test_subset", test_subset)):
        if value is not None:
            overrides[name] = value or None
    return dataclasses.replace(with_optimizer(at_batch(PRESETS[preset], overrides.get("batch_size")), optimizer),
                               **overrides)


def paper_rules(config: RunConfig) -> RunConfig:
    """Section 4.2's one exception: CIFAR nets of 110 layers and more warm up at lr 0.01 until training
    error is below 80%, because 0.1 is too large to start converging."""
    if config.preset == "paper" and config.depth >= 110 and config.warmup_lr is None and family_of(config.depth) == "cifar":
        return dataclasses.replace(config, warmup_lr=config.lr / 10)
    return config


def validate(config: RunConfig) -> RunConfig:
    """Check everything that can be checked before any data is loaded; return the config unchanged."""
    # The net's own checks first (arch, depth, shortcut, stem), where the arch was checked before.
    check_net(config.depth, config.arch, shortcut=config.shortcut, stem=config.stem, width=4)
    check_input_size(config)
    check_choice("precision", config.precision, PRECISIONS)
    # 'auto' as what it resolves to on this machine; a named device that is not here is refused only when the
    # grid trains, so that --dry-run plans a GPU job anywhere.
    check_mode(config.mode, resolve_device("auto") if config.device == "auto" else parse_device(config.device))
    if (config.epochs is None) == (config.iterations is None):
        both = config.epochs is not None
        raise BenchError("give exactly one of --epochs or --iterations" + (", not both" if both else ""))
    for name in ("epochs", "iterations", "batch_size", "width", "train_subset", "test_subset"):
        check_positive(f"--{name.replace('_', '-')}", getattr(config, name), integer=True)
    if not 0 <= config.seed < 2**32:
        raise BenchError(f"--seeds {config.seed}: seeds run from 0 to 2**32 - 1")
    check_positive("--lr", config.lr)
    check_positive("warmup_lr", config.warmup_lr)
    for name in ("momentum", "weight_decay", "lr_decay"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise BenchError(f"--{name.replace('_', '-')} must be a finite number of zero or more, got {value}")
    check_recipe(config)
    return config


def check_input_size(config: RunConfig) -> None:
    """--input-size: a positive number of pixels the net can take in training, found out by a forward pass at
    the run's batch on the meta device (exact, and free: nothing is computed or allocated)."""
    if config.input_size is None:
        return
    check_positive("--input-size", config.input_size, integer=True, detail=" of pixels")
    stem = config.stem_at(config.input_size)
    try:
        check_net(config.depth, config.arch, shortcut=config.shortcut, stem=stem, width=4,
                  input_shape=(max(config.batch_size, 1), 3, config.input_size, config.input_size))
    except (RuntimeError, ValueError) as error:
        raise BenchError(f"--input-size {config.input_size} is too small for {config.arch}-{config.depth} with the "
                         f"{stem or 'default'} stem ({first_line(error, 120)}): use a larger --input-size") from None


def check_recipe(config: RunConfig) -> None:
    """The optimizer and its lr milestones: a known optimizer, no momentum for Adam (its betas are torch's),
    milestones inside the run (fractions of it, 0 < f < 1)."""
    check_choice("optimizer", config.optimizer, OPTIMIZERS)
    if config.optimizer != "sgd" and config.momentum:
        raise BenchError(f"--optimizer {config.optimizer} has no momentum (its betas are torch's, 0.9 and 0.999): "
                         "drop --momentum, or use --optimizer sgd")
    outside = [f for f in config.lr_decay_at if not (isinstance(f, (int, float)) and 0 < f < 1)]
    if outside:
        raise BenchError(f"--lr-milestones {outside[0]} is outside the run: give fractions of the run between 0 and "
                         "1, e.g. 0.5 0.75 (or none)")
