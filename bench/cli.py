"""The `bench` command line: parses arguments and calls the plain functions that do the work."""

from __future__ import annotations

import enum
import errno
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, NoReturn, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from bench.core.config import FORMATS, PRESETS
from bench.core.errors import BenchError, first_line, is_out_of_memory
from bench.core.interrupts import exit_code, hung_up, stop_like_ctrl_c
from bench.core.modes import OPTIMIZERS, PRECISIONS
from resnet import FAMILIES, SHORTCUTS, STEMS, STRIDE_ON, ModelConfigError, arch_names, paper_archs, remedies

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Re-run, time and draw the degradation experiment of He et al. (2015).")
console = Console()
errors = Console(stderr=True)

# Options that take several values: `--depths 18 34` is rewritten to `--depths 18 --depths 34`,
# because click options take one value per occurrence.
LIST_OPTIONS = {"--depths", "--arch", "--seeds", "--device", "--batch-size", "--precision", "--results",
                "--format", "--lr-milestones"}
# Of those, the ones that stay single-valued for some commands.
SINGLE_VALUED = {"run": {"--device", "--batch-size", "--precision", "--results"}, "time": {"--results"}}

F = TypeVar("F", bound=Callable[..., object])


def choices(name: str, values: Sequence[str]) -> type[enum.Enum]:
    """A str Enum of names defined elsewhere, for Typer: --help lists them and Click refuses any other."""
    return enum.Enum(name, [(value, value) for value in values], type=str)


Preset = choices("Preset", tuple(PRESETS))
Precision = choices("Precision", PRECISIONS)
Optimizer = choices("Optimizer", OPTIMIZERS)
Shortcut = choices("Shortcut", SHORTCUTS)
Family = choices("Family", FAMILIES)
Stem = choices("Stem", STEMS)
StrideOn = choices("StrideOn", STRIDE_ON)
Format = choices("Format", FORMATS)


def registered_archs(names: Optional[list[str]]) -> Optional[list[str]]:
    """--arch's check, against the registry (resnet.archs) as it is when the command runs, so that an arch
    registered after this module was imported is taken too; the message is Click's for a bad choice."""
    valid = arch_names()
    for name in names or ():
        if name not in valid:
            raise typer.BadParameter(f"{name!r} is not one of {', '.join(map(repr, valid))}.", param_hint="'--arch'")
    return names


# --arch's help, from the archs registered when the command line is built.
ARCH_HELP = f"{' and/or '.join(paper_archs())} (default: both), or a remedy: {', '.join(remedies())}."


def values(options: Sequence[enum.Enum] | None) -> tuple[str, ...] | None:
    """The strings behind enum options (None stays None: the default applies)."""
    return None if options is None else tuple(option.value for option in options)


# Click's usage errors (bad choice, missing or unknown option): the base class of typer.BadParameter, which
# is click's UsageError, or the copy of it in the click that Typer 0.2x vendors.
UsageError: type[Exception] = typer.BadParameter.__mro__[1]


class OneLineErrors(typer.core.TyperCommand):
    """Click's usage errors (a value not among the choices, a missing option) as one line, like every other
    error of this tool, instead of a usage panel."""

    def make_context(self, info_name: str | None, args: list[str], parent: typer.Context | None = None,
                     **extra: object) -> typer.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as error:
            errors.print(f"[bold red]error:[/] {escape(error.format_message())}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


def expand_lists(args: Sequence[str]) -> list[str]:
    """Rewrite `--opt a b c` into `--opt a --opt b --opt c` for the options in LIST_OPTIONS."""
    command = next((a for a in args if not a.startswith("-")), "")
    multi = LIST_OPTIONS - SINGLE_VALUED.get(command, set())
    out: list[str] = []
    option = None
    for arg in args:
        if arg.startswith("-"):
            option = arg if arg in multi else None
            out.append(arg)
        elif option is not None and out[-1] != option:
            out.extend([option, arg])
        else:
            out.append(arg)
    return out


def _out_of_host_memory(error: BaseException) -> NoReturn:
    """One line for a memory limit (ulimit -v) met outside a run's own care, and exit 2. Plain text: rich
    imports modules as it renders, and an import needs the memory that ran out."""
    sys.stderr.write(f"error: out of host memory ({first_line(error, 200)}); a memory limit (ulimit -v) may be "
                     "set: raise it, or use a smaller --batch-size or subset; finished work is saved, and the same "
                     "command resumes\n")
    raise typer.Exit(2) from None


def handles_errors(function: F) -> F:
    """BenchError -> one red line and exit 2; Ctrl-C -> one line and exit 130. Never a traceback."""

    @functools.wraps(function)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return function(*args, **kwargs)
        except (BenchError, ModelConfigError) as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as error:  # an output folder that is a file, read-only or full, met outside bench.results.store
            if error.errno == errno.ENOMEM:  # a memory limit met by a lazy import, or by the OS for a file
                _out_of_host_memory(error)
            from bench.core.files import DISK_FULL, LIMITS, UNWRITABLE, limit_message

            if hung_up():  # the closed terminal, written to on the way out: the work was saved before
                raise typer.Exit(exit_code()) from None
            if error.errno in LIMITS:  # ulimit -f, a name too long: met outside bench.core.files' writes too
                errors.print(f"[bold red]error:[/] {escape(limit_message(error))}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            if error.errno not in (*UNWRITABLE, *DISK_FULL):
                raise
            errors.print(f"[bold red]error:[/] cannot access {escape(str(error.filename or 'a file'))} "
                         f"({error.strerror}): choose a writable folder (--out, --results) or free some space",
                         highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except (MemoryError, RuntimeError) as error:  # a memory limit (ulimit -v) met outside a run's own care
            if isinstance(error, RuntimeError) and not is_out_of_memory(error):
                raise
            _out_of_host_memory(error)
        except KeyboardInterrupt:
            try:  # after SIGHUP the terminal may be gone: the exit code still says what happened
                errors.print("[yellow]interrupted: finished work is saved; run the same command again to resume")
            except OSError:
                pass
            raise typer.Exit(exit_code()) from None

    return wrapper  # type: ignore[return-value]


def _shard(value: str) -> tuple[int, int]:
    """`--shard 2/4` -> (2, 4); whether I lies in 1..N is bench.run.planner.validate_grid's to say."""
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        raise BenchError(f"--shard {value!r}: write it as I/N, e.g. 2/4") from None
    return index, count


def _input_size(given: int | None, stem: enum.Enum | None) -> int | None:
    """--input-size as given; without it, the ImageNet stem's own size (224, as `bench time` times it) and
    otherwise None, the images as stored."""
    if given is None and stem is not None and stem.value == "imagenet":
        from bench.timing.timing import DEFAULT_INPUT_SIZE

        return DEFAULT_INPUT_SIZE["imagenet"]
    return given


def _milestones(given: list[str] | None) -> tuple[float, ...] | None:
    """`--lr-milestones 0.5 0.75` -> (0.5, 0.75); 'none' -> () (a constant lr); None leaves the preset's.
    Whether each lies inside the run is bench.core.config.validate's to say."""
    if given is None:
        return None
    if [value.lower() for value in given] == ["none"]:
        return ()
    try:
        return tuple(float(value) for value in given)
    except ValueError:
        raise BenchError(f"--lr-milestones {' '.join(given)}: give fractions of the run, e.g. 0.5 0.75, or none"
                         ) from None


@app.command(cls=OneLineErrors)
@handles_errors
def run(
    depths: Annotated[list[int], typer.Option(help="Depths to train, e.g. --depths 18 34 (or 20 32 44 56).")],
    arch: Annotated[Optional[list[str]], typer.Option(help=ARCH_HELP, callback=registered_archs, metavar="ARCH")] = None,
    seeds: Annotated[Optional[list[int]], typer.Option(help="Seeds, e.g. --seeds 0 1 2.")] = None,
    dataset: Annotated[str, typer.Option(help="auto | cifar10 | cifar100 | imagefolder | synthetic.")] = "auto",
    data_dir: Annotated[Optional[Path], typer.Option(help="Where datasets live (default: $BENCH_DATA or data/).")] = None,
    preset: Annotated[Preset, typer.Option(help="quick (minutes on a CPU), paper (section 4.2) or imagenet (section "
                                           "3.4: 90 epochs, batch 256, lr 0.1 x batch/256).")] = Preset.quick,
    epochs: Annotated[Optional[int], typer.Option(help="Train for N epochs (overrides the preset).")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Train for N iterations (overrides the preset).")] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    optimizer: Annotated[Optimizer, typer.Option(help="sgd: the preset's recipe (momentum 0.9, weight decay 1e-4); "
                                                 "adam, adamw: torch's defaults (lr 1e-3; weight decay 0 for adam, "
                                                 "0.01 for adamw), no momentum.")] = Optimizer.sgd,
    lr: Annotated[Optional[float], typer.Option(help="Initial learning rate (default: the preset's for sgd, "
                                                "torch's for adam and adamw).")] = None,
    momentum: Annotated[Optional[float], typer.Option(help="SGD's momentum (default: the preset's, 0.9).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="L2 weight decay (default: the preset's for sgd, "
                                                          "torch's for adam and adamw).")] = None,
    lr_milestones: Annotated[Optional[list[str]], typer.Option(
        help="Where the lr is divided by 10, as fractions of the run (default: 0.5 0.75); 'none' keeps it "
             "constant.")] = None,
    width: Annotated[Optional[int], typer.Option(help="First-stage channels (imagenet 64, cifar 16).")] = None,
    shortcut: Annotated[Optional[Shortcut], typer.Option(help="Paper section 3.3 (default: the family's).")] = None,
    input_size: Annotated[Optional[int], typer.Option(help="Input height and width: the stored images are resized "
                                                      "on the device, batch by batch (default: 224 with --stem "
                                                      "imagenet, else as stored, 32 for CIFAR).")] = None,
    stem: Annotated[Optional[Stem], typer.Option(help="imagenet: 7x7 stride 2 and a max-pool; cifar: one 3x3 "
                                                 "(default: the family's; ImageNet-layout nets take the CIFAR "
                                                 "stem below 128 pixels).")] = None,
    train_subset: Annotated[Optional[int], typer.Option(help="Train on a fixed subset of N images (0: all).")] = None,
    test_subset: Annotated[Optional[int], typer.Option(help="Test on a fixed subset of N images (0: all).")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="The paper's crop and flip "
                                                    "(default: the preset's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[Precision, typer.Option(help="bf16: autocast.")] = Precision.fp32,
    channels_last: Annotated[Optional[bool], typer.Option(
        "--channels-last/--no-channels-last", help="Memory format. Default: a new run trains channels-last where that "
        "was measured faster on this CPU (docs/benchmarks.md); a resumed run keeps the one it started in.",
        show_default=False)] = None,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the net.")] = False,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="Replay forward and backward as CUDA graphs "
                                             "(CUDA only; see docs/benchmarks.md).")] = False,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="Under torchrun: BatchNorm over the global batch.")] = False,
    devices: Annotated[Optional[str], typer.Option(help="GPUs to spread runs over, e.g. 0,1,2,3 (default: all visible).")] = None,
    results: Annotated[Path, typer.Option(help="Results folder.")] = Path("results"),
    shard: Annotated[str, typer.Option(help="Run the I-th of N disjoint slices of the grid, as I/N.")] = "1/1",
    time_limit: Annotated[Optional[float], typer.Option(help="Minutes: stop cleanly after the first epoch "
                                                        "past it; the same command continues.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the grid, one run per line, and exit.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per process (default: $OMP_NUM_THREADS, "
                                                   "else the CPUs this process may use; 1 per --devices worker)."
                                                   )] = None,
    stream: Annotated[Optional[bool], typer.Option(
        "--stream/--in-memory", help="An ImageFolder read from disk a batch at a time (views at --input-size, "
        "default 224), or decoded once into memory. Default: streamed when its decoded copy would fill half the "
        "memory.", show_default=False)] = None,
    loader_workers: Annotated[Optional[int], typer.Option(help="Processes decoding a streamed set's batches "
                                                          "(default: one per CPU, up to 8; 0: none).")] = None,
) -> None:
    """Train plain and residual nets of the given depths; log train/test error per epoch to parquet."""
    from bench.core.config import GridConfig, default_threads, run_config
    from bench.data.data import default_data_dir
    from bench.run.distributed import from_environment
    from bench.run.grid import run_grid
    from bench.run.planner import configuration, dry_run_lines, gpus, plan

    base = run_config(preset.value, optimizer.value, dataset=dataset, device=device, precision=precision.value,
                      channels_last=channels_last, compile=compile, cuda_graph=cuda_graph, sync_bn=sync_bn,
                      epochs=epochs, iterations=iterations, batch_size=batch_size, lr=lr, width=width,
                      momentum=momentum, weight_decay=weight_decay, lr_decay_at=_milestones(lr_milestones),
                      shortcut=shortcut and shortcut.value, augment=augment, stem=stem and stem.value,
                      input_size=_input_size(input_size, stem), train_subset=train_subset, test_subset=test_subset)
    spread = gpus(devices, device)
    grid = GridConfig(base=base, depths=tuple(depths), archs=tuple(arch or ()) or paper_archs(), seeds=tuple(seeds or (0,)),
                      data_dir=str(data_dir or default_data_dir()), results=str(results), shard=_shard(shard),
                      devices=spread, time_limit=time_limit,
                      threads=threads if threads is not None else default_threads(len(spread)), stream=stream,
                      loader_workers=loader_workers)
    planned = plan(grid)  # validates every run before anything is printed or trained
    if dry_run:
        if planned.notice:  # on stderr: stdout is one line per run, for scripts
            errors.print(planned.notice, style="yellow", markup=False, highlight=False, soft_wrap=True)
        for line in dry_run_lines(planned):
            console.print(line, highlight=False, soft_wrap=True)
        return
    if from_environment().is_main:  # under torchrun, one copy of the configuration is enough
        console.print("[bold]configuration[/] " + json.dumps(configuration(grid, planned)), highlight=False,
                      soft_wrap=True)
    # torchrun and batch schedulers stop jobs with SIGTERM, a closed terminal with SIGHUP: treat them like Ctrl-C
    # (save, say how to resume).
    stop_like_ctrl_c()
    run_grid(grid, console=console, progress=progress, resolved=planned)


@app.command(cls=OneLineErrors)
@handles_errors
def models(
    input_size: Annotated[int, typer.Option(help="Input height and width for multiply-adds (CIFAR nets: 32).")] = 224,
    stride_on: Annotated[StrideOn, typer.Option(help="Bottleneck stride on the 3x3 conv (torchvision) or the "
                                                "first 1x1 (the paper, whose Table 1 counts that layout).")] = StrideOn("3x3"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every architecture with its parameter count and multiply-adds (compare with Table 1)."""
    from bench.report.catalog import architecture_rich_table, architecture_table

    rows = architecture_table(input_size=input_size, stride_on=stride_on.value)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        console.print(architecture_rich_table(rows))


@app.command(cls=OneLineErrors)
@handles_errors
def time(
    depths: Annotated[list[int], typer.Option(help="Depths to time, e.g. --depths 18 34 50.")],
    arch: Annotated[Optional[list[str]], typer.Option(help=ARCH_HELP, callback=registered_archs, metavar="ARCH")] = None,
    family: Annotated[Optional[Family], typer.Option(help="(default: from the depth)")] = None,
    device: Annotated[Optional[list[str]], typer.Option(help="cpu and/or cuda (default: cpu).")] = None,
    batch_size: Annotated[Optional[list[int]], typer.Option(help="Batch sizes, e.g. 1 32 128 (default: 32).")] = None,
    input_size: Annotated[Optional[int], typer.Option(help="(default: 224 imagenet, 32 cifar)")] = None,
    precision: Annotated[Optional[list[Precision]], typer.Option(help="fp32 and/or bf16 (default: fp32).")] = None,
    width: Annotated[Optional[int], typer.Option(help="First-stage channels (default: the family's).")] = None,
    stem: Annotated[Optional[Stem], typer.Option(help="cifar: the 3x3 stem bench run gives ImageNet-layout nets "
                                                "on 32x32 images (default: the family's).")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last/--no-channels-last")] = False,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="Time torch.compile'd nets, as "
                                          "bench run --compile trains them.")] = False,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="Time CUDA-graph replays, as bench run "
                                             "--cuda-graph trains (CUDA only).")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: torch's).")] = None,
    reference: Annotated[bool, typer.Option("--reference", help="Also time torchvision's resnets.")] = False,
    results: Annotated[Path, typer.Option(help="Results folder (timing goes to results/timing/).")] = Path("results"),
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Time forward, forward+backward and the training step of each network on CPU and GPU."""
    from bench.run.progress import print_whole
    from bench.timing.timing import TimeConfig, sweep
    from bench.timing.timing_rows import timing_rich_table

    stop_like_ctrl_c()  # a scheduler's stop or a closed terminal saves what was measured too

    config = TimeConfig(depths=tuple(depths), archs=tuple(arch or ()) or paper_archs(), family=family and family.value,
                        devices=tuple(device or ("cpu",)), batch_sizes=tuple(batch_size or (32,)),
                        input_size=input_size, precisions=values(precision) or ("fp32",), width=width,
                        stem=stem and stem.value, channels_last=channels_last, compile=compile,
                        cuda_graph=cuda_graph, threads=threads, reference=reference, results=str(results))
    result = sweep(config, progress=progress, strict=True, notify=lambda message: errors.print(
        message, style="yellow", markup=False, highlight=False, soft_wrap=True))
    if len(result.rows):
        print_whole(console, timing_rich_table(result.rows))
    if result.error:  # the measurements were kept elsewhere; the error says where
        raise BenchError(result.error)
    if result.path:
        console.print(f"wrote {result.path}", highlight=False, soft_wrap=True)
    if result.interrupted:  # nothing resumes a sweep: say what is kept, and that it starts over
        kept = (f"the {len(result.rows)} measurements made are saved in {result.path}" if result.path
                else "nothing was measured yet, so nothing was saved")
        errors.print(f"interrupted: {kept}; the same command times everything again", style="yellow",
                     markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(exit_code())


@app.command(cls=OneLineErrors)
@handles_errors
def report(
    results: Annotated[Optional[list[Path]], typer.Option(help="Results folders to merge (default: results).")] = None,
    out: Annotated[Path, typer.Option(help="Where the figures, tables and README.md go.")] = Path("reports"),
    dataset: Annotated[Optional[str], typer.Option(help="Only this dataset's runs.")] = None,
    format: Annotated[Optional[list[Format]], typer.Option(help="(default: png)")] = None,
    finished_only: Annotated[bool, typer.Option("--finished-only", help="Leave out runs still in progress.")] = False,
) -> None:
    """Draw the paper's figures and tables from the logged results into reports/."""
    from bench.report.report import make_report

    make_report(results or [Path("results")], out, dataset=dataset, formats=values(format) or ("png",),
                finished_only=finished_only,
                notify=lambda message: console.print(message, soft_wrap=True, markup=False, highlight=False))


@app.command(cls=OneLineErrors)
@handles_errors
def analyze(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (results/<dataset>/<run_id>) or results folders.")],
    data_dir: Annotated[Optional[Path], typer.Option(help="Where datasets live (default: $BENCH_DATA or data/).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Recompute Figure 7's response statistics from each run's checkpoint over the whole test split."""
    from bench.report.analyze import analyze_runs

    analyze_runs(runs, data_dir, device=device,
                 notify=lambda message: console.print(message, markup=False, highlight=False),
                 skipped=lambda message: errors.print(message, markup=False, highlight=False))


def main() -> None:
    """Console-script entry point (also `python -m bench`)."""
    sys.argv[1:] = expand_lists(sys.argv[1:])
    app()
