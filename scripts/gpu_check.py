"""The tables of scripts/gpu_check.sh's summary, and its one judgement: do the modes train alike?

    python scripts/gpu_check.py timing DIR...                      every bench time row under DIR/timing
    python scripts/gpu_check.py runs DIR...                        every run: state, device, epochs, errors
    python scripts/gpu_check.py compare [--epochs N] NAME=DIR...   the first N epochs of each mode beside the
                                                                   first one's; exit 1 beyond TOLERANCE

Each prints Markdown on stdout. The runs compared must be one and the same configuration (same run_id),
trained in different modes (eager, --compile, --cuda-graph) or with a different number of processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's bench, not an installed one

from bench.results import reading, store  # noqa: E402

# How far the first epochs of one configuration may lie apart between modes. They compute the same maths,
# but not bitwise alike: torch.compile fuses BatchNorm and ReLU into other kernels (other rounding),
# cuDNN's autotuner may pick other convolution algorithms in another process, and SGD carries every
# difference forward. Within these an epoch's numbers are the same training; a wrong step (a graph that
# replays nothing, a stale input, an eager fallback with other maths) is off by far more.
TOLERANCE = {"train_loss": ("relative", 0.03), "train_error": ("absolute", 0.03), "test_error": ("absolute", 0.05)}


def _markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"
    cells = frame.astype(object).where(frame.notna(), "")
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def timing(folders: list[Path]) -> int:
    """Every bench time row, one per line, in units people read."""
    paths = sorted(p for folder in folders for p in (folder / "timing").glob("*.parquet"))
    if not paths:
        print("(no timing rows)")
        return 1
    rows = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    mode = rows["compiled"].map({True: "compile"}).fillna(rows["cuda_graph"].map({True: "cuda-graph"})).fillna("eager")
    flags = [c for c in ("cudnn_benchmark", "allow_tf32_matmul", "allow_tf32_cudnn") if c in rows]
    table = pd.DataFrame({
        "model": rows["model"], "mode": mode, "precision": rows["precision"], "device": rows["device"],
        "batch": rows["batch_size"], "input": rows["input_size"], "phase": rows["phase"], "status": rows["status"],
        "median ms": rows["median_ms"].round(3), "IQR ms": rows["iqr_ms"].round(3),
        "images/s": rows["images_per_second"].round(0), "TFLOP/s": rows["tflops"].round(2),
        "peak MiB": (rows["peak_memory_bytes"] / 2**20).round(0), **{f: rows[f] for f in flags},
    })
    print(f"{len(rows)} rows; {rows['device_name'].iloc[0]}; torch {rows['torch_version'].iloc[0]}\n")
    print(_markdown(table))
    return 0


def runs(folders: list[Path]) -> int:
    """Every run found under the folders: where it ran and how it ended."""
    epochs, found = reading.read_results(folders, notify=lambda message: print(f"- {message}"))
    if found.empty:
        print("(no runs)")
        return 1
    rows = []
    for run in found.itertuples():
        environment = store.read_json(Path(run.path) / store.CONFIG).get("environment") or {}
        last = epochs[epochs["run_id"] == run.run_id].sort_values("epoch").tail(1)
        rows.append({"run_id": run.run_id, "state": run.state, "device": environment.get("device"),
                     "current CUDA device": environment.get("cuda_device"), "gpu": run.device_name,
                     "epochs": run.epochs_done,
                     "train loss": last["train_loss"].round(4).tolist()[0] if len(last) else None,
                     "test error": last["test_error"].round(4).tolist()[0] if len(last) else None,
                     "images/s": last["images_per_second"].round(0).tolist()[0] if len(last) else None})
    print(_markdown(pd.DataFrame(rows)))
    return 0 if set(found["state"]) == {store.FINISHED} else 1


def compare(named: list[str], epochs: int) -> int:
    """The first `epochs` epochs of each named results folder beside the first one's, within TOLERANCE."""
    frames = {}
    for item in named:
        name, _, folder = item.partition("=")
        frame, _ = reading.read_results([Path(folder)])
        frames[name] = frame.sort_values("epoch").reset_index(drop=True)
    (base_name, base), others = next(iter(frames.items())), list(frames.items())[1:]
    rows, bad = [], []
    for name, frame in frames.items():
        if set(frame["run_id"]) != set(base["run_id"]) or len(frame) < epochs or len(base) < epochs:
            bad.append(f"{name}: not the same run as {base_name} over {epochs} epochs "
                       f"({sorted(set(frame['run_id']))}, {len(frame)} epochs)")
            continue
        for e in range(epochs):
            row = {"mode": name, "epoch": e + 1}
            for column, (kind, limit) in TOLERANCE.items():
                value, reference = float(frame[column].iloc[e]), float(base[column].iloc[e])
                gap = abs(value - reference) / abs(reference) if kind == "relative" else abs(value - reference)
                row[column] = round(value, 4)
                row[f"Δ {column}"] = round(gap, 4)
                if gap > limit:
                    bad.append(f"{name} epoch {e + 1}: {column} {value:.4f} vs {base_name}'s {reference:.4f}: "
                               f"{kind} gap {gap:.4f} > {limit}")
            row["images/s"] = round(float(frame["images_per_second"].iloc[e]))
            rows.append(row)
    print("Tolerance (against " + base_name + "): " + ", ".join(
        f"{c} {kind} {limit}" for c, (kind, limit) in TOLERANCE.items()) + "\n")
    print(_markdown(pd.DataFrame(rows)))
    for line in bad:
        print(f"- **disagrees**: {line}")
    if not others:
        print("- only one mode: nothing compared")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("timing").add_argument("folders", nargs="+", type=Path)
    sub.add_parser("runs").add_argument("folders", nargs="+", type=Path)
    comparing = sub.add_parser("compare")
    comparing.add_argument("named", nargs="+", help="NAME=RESULTS_FOLDER, the reference first")
    comparing.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if args.command == "timing":
        return timing(args.folders)
    if args.command == "runs":
        return runs(args.folders)
    return compare(args.named, args.epochs)


if __name__ == "__main__":
    sys.exit(main())
