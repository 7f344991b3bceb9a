"""Probe one candidate design of the `quick` preset (issue #12): train plain/residual 18 and 34 with the preset's
settings changed as given, and print each net's final training error and the wall time.

    python scripts/quick_probe.py cifar10 '{"train_subset": 2000, "epochs": 16, "lr": 0.03, "augment": false}'
    python scripts/quick_probe.py synthetic '{"lr": 0.03}' --seed 1 --archs residual

A probe is for choosing a design on seeds 0-2 only; the verdict on a chosen design is the real command,
`bench run --depths 18 34 --seeds S --dataset D`, timed, on seeds 3-5 as well. Runs go to a temporary folder
(`--out`), never to results/. Every line is appended to `--log` (JSON), so a series of probes leaves its table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console

from bench.core.config import QUICK, GridConfig
from bench.core.errors import BenchError
from bench.data.data import default_data_dir
from bench.run.grid import run_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("changes", nargs="?", default="{}", help="RunConfig fields to change, as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depths", type=int, nargs="+", default=[18, 34])
    parser.add_argument("--archs", nargs="+", default=["plain", "residual"])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "quick-probe")
    parser.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "quick-probe.jsonl")
    args = parser.parse_args()
    asked = json.loads(args.changes)
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in asked.items()}
    base = dataclasses.replace(QUICK, dataset=args.dataset, seed=args.seed, **changes)
    grid = GridConfig(base=base, depths=tuple(args.depths), archs=tuple(args.archs), seeds=(args.seed,),
                      data_dir=str(default_data_dir()), results=str(args.out))

    started = time.perf_counter()  # the grid `bench run` trains, so the time is the command's
    summary = run_grid(grid, console=Console(quiet=True), progress=False)
    final = {f"{s.arch}-{s.depth}": round(100 * s.rows[-1]["train_error"], 2) for s in summary}
    seconds = {f"{s.arch}-{s.depth}": round(s.seconds, 1) for s in summary}
    curves = {f"{s.arch}-{s.depth}": [round(100 * r["train_error"], 1) for r in s.rows] for s in summary}
    line = {"dataset": args.dataset, "seed": args.seed, "changes": asked, "final_train": final,
            "seconds": seconds, "total_s": round(time.perf_counter() - started, 1), "curves": curves}
    print(json.dumps({k: v for k, v in line.items() if k != "curves"}))
    with args.log.open("a") as log:
        log.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        raise SystemExit(f"error: {error}") from None
