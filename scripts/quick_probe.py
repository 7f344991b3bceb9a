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

import pandas as pd
import torch

from bench.config import QUICK, paper_rules, validate
from bench.data import default_data_dir, load_dataset, take_subset
from bench.errors import BenchError
from bench.train import train_run


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
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.changes).items()}
    base = validate(dataclasses.replace(QUICK, dataset=args.dataset, seed=args.seed, **changes))

    started = time.perf_counter()
    data = load_dataset(args.dataset, default_data_dir(), progress=False)
    data = take_subset(data, base.train_subset, base.test_subset)
    final, seconds, curves = {}, {}, {}
    for depth in args.depths:
        for arch in args.archs:
            config = paper_rules(dataclasses.replace(base, depth=depth, arch=arch))
            directory = args.out / args.dataset / config.run_id()
            clock = time.perf_counter()
            train_run(config, data, directory, torch.device("cpu"), notify=lambda _: None)
            errors = pd.read_parquet(directory / "epochs.parquet")["train_error"] * 100
            name = f"{arch}-{depth}"
            final[name], seconds[name] = round(errors.iloc[-1], 2), round(time.perf_counter() - clock, 1)
            curves[name] = [round(e, 1) for e in errors]
    line = {"dataset": args.dataset, "seed": args.seed, "changes": json.loads(args.changes), "final_train": final,
            "seconds": seconds, "total_s": round(time.perf_counter() - started, 1), "curves": curves}
    print(json.dumps({k: v for k, v in line.items() if k != "curves"}))
    with args.log.open("a") as log:
        log.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        raise SystemExit(f"error: {error}") from None
